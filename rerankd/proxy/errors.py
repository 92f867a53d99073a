"""The one place where exceptions become HTTP responses: JSON ``{message, detail, id}``."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, cast

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.types import ExceptionHandlersMap

from rerankd.errors import (
    BadRequest,
    ClientError,
    InternalError,
    PayloadTooLarge,
    RerankdError,
    Unauthorized,
)
from rerankd.proxy.context import CONTEXT_KEY, RequestContext, context_of, request_id_from

__all__ = [
    "ErrorBody",
    "RerankdRequest",
    "error_response",
    "error_responses",
    "exception_handlers",
    "handle_exception",
    "request_id_of",
]

log = logging.getLogger(__name__)


class ErrorBody(msgspec.Struct):
    message: str
    detail: str
    id: str


def request_id_of(request: Request[Any, Any, Any]) -> str:
    ctx = context_of(request.scope)
    return ctx.request_id if ctx is not None else "-"


def error_response(
    request: Request[Any, Any, Any], exc: RerankdError, extra_headers: Mapping[str, str] | None = None
) -> Response[ErrorBody]:
    headers = dict(extra_headers or {})
    ctx = context_of(request.scope)
    if ctx is None:
        # Router errors (404, 405) happen before the request middleware runs: the id is set here.
        ctx = RequestContext(request_id_from(request.scope["headers"]), routed=False)
        request.scope[CONTEXT_KEY] = ctx  # type: ignore[literal-required]
        headers["X-Request-ID"] = ctx.request_id
    if exc.retry_after is not None:
        # Rounded up: a client that retries a little early only meets the same refusal again.
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="rerankd"'
    body = ErrorBody(message=exc.message, detail=exc.detail, id=ctx.request_id)
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
    if isinstance(exc, ValidationException):
        return BadRequest(_validation_detail(exc))
    # Litestar turns a body it cannot decode into a 400 raised from a SerializationException.
    if isinstance(exc.__cause__, SerializationException):
        return BadRequest(f"malformed JSON body: {exc.detail}")
    if exc.status_code == 400:
        return BadRequest(str(exc.detail))
    if exc.status_code == 413:
        return PayloadTooLarge()
    mapped: RerankdError = (ClientError if exc.status_code < 500 else InternalError)(str(exc.detail))
    mapped.status_code = exc.status_code
    return mapped


class RerankdRequest(Request[Any, Any, Any]):
    """Litestar's request, with a body nested too deeply to decode counted as malformed (400)
    instead of a ``RecursionError`` (500)."""

    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError as exc:
            raise SerializationException("nested too deeply") from exc


def _handle_rerankd(request: Request[Any, Any, Any], exc: RerankdError) -> Response[ErrorBody]:
    ctx = context_of(request.scope)
    if ctx is not None and ctx.routed:
        # The request's own log line carries the status and this reason: one line per refusal
        # (a 503 while models load is routine, and probes and clients retry it often).
        ctx.error = exc.detail
    elif exc.status_code >= 500:
        log.warning("request %s: %s (%s)", request_id_of(request), exc.status_code, exc.detail)
    return error_response(request, exc)


def _handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    # Litestar's own headers stay: 405 says which methods the route allows (``Allow``).
    return error_response(request, _from_litestar(exc), exc.headers)


def _handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    # Never show internals to clients: the traceback goes to the log with the request id.
    log.error("request %s: unhandled error", request_id_of(request), exc_info=exc)
    return error_response(request, InternalError("internal error; see the server log for this request id"))


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


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    """The response ``exception_handlers`` gives ``exc``, for code that answers outside Litestar's
    handler machinery (the direct scoring routes): the handler of the nearest class in its MRO, as
    Litestar picks it, so the map above stays the one list."""
    kind = next(k for k in type(exc).__mro__ if k in exception_handlers)
    return cast(Response[ErrorBody], exception_handlers[kind](request, exc))
