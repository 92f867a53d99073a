"""The one place where exceptions become HTTP responses: JSON ``{message, detail, id}``."""

from __future__ import annotations

import logging
import math
import uuid
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.types import ExceptionHandlersMap

from rerankd.errors import BadRequest, PayloadTooLarge, RerankdError, Unauthorized

__all__ = ["ErrorBody", "error_response", "error_responses", "exception_handlers"]

log = logging.getLogger(__name__)


class ErrorBody(msgspec.Struct):
    message: str
    detail: str
    id: str


def request_id_of(request: Request[Any, Any, Any]) -> str:
    return str(request.scope.get("state", {}).get("request_id", "-"))


def error_response(request: Request[Any, Any, Any], exc: RerankdError) -> Response[ErrorBody]:
    headers = {}
    state = request.scope.setdefault("state", {})
    if "request_id" not in state:
        # Router errors (404, 405) happen before any middleware runs: give them an id here.
        state["request_id"] = uuid.uuid4().hex
        headers["X-Request-ID"] = state["request_id"]
    if exc.retry_after is not None:
        # Rounded up: a client that retries a little early only meets the same refusal again.
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="rerankd"'
    body = ErrorBody(message=exc.message, detail=exc.detail, id=request_id_of(request))
    return Response(body, status_code=exc.status_code, headers=headers)


def _validation_detail(exc: ValidationException) -> str:
    """Litestar's validation errors, as one line naming the field path."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    parts = []
    for item in extra:
        if isinstance(item, dict):
            key = item.get("key")
            parts.append(f"{key}: {item.get('message')}" if key else str(item.get("message")))
    if parts:
        return "; ".join(parts)
    return str(exc.detail)


def _from_litestar(exc: HTTPException) -> RerankdError:
    if isinstance(exc, ValidationException) or exc.status_code == 400:
        detail = _validation_detail(exc) if isinstance(exc, ValidationException) else str(exc.detail)
        if ":" not in detail and "Expected" not in detail:  # a decode error, not a field's
            detail = f"malformed JSON body: {detail}"
        return BadRequest(detail)
    if exc.status_code == 413:
        return PayloadTooLarge()
    mapped = RerankdError(str(exc.detail))
    mapped.status_code = exc.status_code
    return mapped


def _handle_rerankd(request: Request[Any, Any, Any], exc: RerankdError) -> Response[ErrorBody]:
    if exc.status_code >= 500:
        log.warning("request %s: %s (%s)", request_id_of(request), exc.status_code, exc.detail)
    return error_response(request, exc)


def _handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    return error_response(request, _from_litestar(exc))


def _handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    # Never show internals to clients: the traceback goes to the log with the request id.
    log.error("request %s: unhandled error", request_id_of(request), exc_info=exc)
    return error_response(request, RerankdError("internal error; see the server log for this request id"))


_ERROR_DESCRIPTIONS = {
    400: "Invalid request",
    401: "Missing, malformed, unknown, revoked or expired API key",
    404: "Unknown model",
    413: "Request body too large",
    429: "The key is over its rate limit; see Retry-After",
    500: "Internal error",
    503: "Overloaded, not ready, or a backend is unavailable; see Retry-After",
}


def error_responses(*codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the error statuses a route can answer, all with the one error body."""
    return {c: ResponseSpec(ErrorBody, description=_ERROR_DESCRIPTIONS[c]) for c in codes}


exception_handlers: ExceptionHandlersMap = {
    RerankdError: _handle_rerankd,
    HTTPException: _handle_http,
    Exception: _handle_unexpected,
}
