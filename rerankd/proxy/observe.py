"""One log line and the request metrics for every HTTP request.

Routes note what they served in the request's :class:`~rerankd.proxy.context.RequestContext`;
:func:`finish` reads it when the request ends (called by the request middleware, and for the
router's refusals by :func:`observe_unmatched`). The line carries counts and names only: queries,
documents and API keys are never logged.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, cast

from litestar import Request, Response
from litestar.types import ExceptionHandlersMap, Scope

from rerankd.errors import ModelNotFound
from rerankd.proxy.context import RequestContext, context_of
from rerankd.proxy.metrics import Metrics
from rerankd.proxy.paths import QUIET
from rerankd.service import RerankService

__all__ = ["UNMATCHED", "finish", "observe_unmatched"]

log = logging.getLogger("rerankd.request")

#: Probes and scrapes arrive every few seconds from every pod: their lines are debug, not info.
UNMATCHED = "unmatched"


def _model(ctx: RequestContext, service: RerankService | None) -> str:
    """A served name for the labels (bounded), resolved here only when scoring did not happen."""
    if ctx.outcome is not None:
        return ctx.outcome.model
    if ctx.documents is None or service is None:
        return ""
    # An unknown name is answered with 404 by the service; it gets no label (nobody serves it).
    with contextlib.suppress(ModelNotFound):
        return service.resolve(ctx.requested_model)
    return ""


def finish(
    metrics: Metrics,
    service: RerankService | None,
    scope: Scope,
    ctx: RequestContext,
    route: str,
    status: int,
    elapsed: float | None,
) -> None:
    outcome = ctx.outcome
    model = _model(ctx, service)
    requests, latency = metrics.request_children((route, model, str(status)))
    requests.inc()
    if elapsed is not None:
        latency.observe(elapsed)
    if outcome is not None:
        documents, tokens = metrics.model_children(model)
        documents.inc(ctx.documents or 0)
        tokens.inc(outcome.input_tokens)
        if ctx.stages is not None:
            metrics.observe_stages(model, ctx.stages)
    level = logging.DEBUG if route in QUIET and status < 400 else logging.INFO
    if not log.isEnabledFor(level):
        return
    fields = {
        "request_id": ctx.request_id,
        "method": scope.get("method"),
        "route": route,
        "model": model or None,
        "key": ctx.key.name if ctx.key is not None else None,
        "documents": ctx.documents,
        "tokens": outcome.input_tokens if outcome is not None else None,
        "cache_hits": outcome.cache_hits if outcome is not None else None,
        "status": status,
        "latency_ms": round(elapsed * 1000, 2) if elapsed is not None else None,
        "error": ctx.error,
    }
    log.log(level, "%s %s %d", fields["method"], route, status, extra={"fields": fields})


def observe_unmatched(metrics: Metrics, handlers: ExceptionHandlersMap) -> ExceptionHandlersMap:
    """The exception handlers, also counting and logging the requests the router refused (404,
    405): those never reach the request middleware, and are seen only here, without a latency
    (their start time is unknown). Here and not in a ``before_send`` hook, which would wrap the
    ``send`` of every request."""

    def observed(handler: Any) -> Any:
        def handle(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
            response = handler(request, exc)
            ctx = context_of(request.scope)
            if ctx is not None and not ctx.routed:
                finish(metrics, None, request.scope, ctx, UNMATCHED, response.status_code, None)
            return cast(Response[Any], response)

        return handle

    return {kind: observed(handler) for kind, handler in handlers.items()}
