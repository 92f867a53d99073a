"""One log line and the request metrics for every HTTP request.

Routes note what they served (:func:`note_query`, :func:`note_outcome`) in the request's scope;
:class:`ObserveMiddleware` reads it when the request ends. The line carries counts and names only:
queries, documents and API keys are never logged.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from litestar import Request
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from rerankd.errors import ModelNotFound
from rerankd.proxy.metrics import Metrics
from rerankd.service import RerankOutcome, RerankQuery, RerankService

__all__ = ["ObserveMiddleware", "note_outcome", "note_query", "observe_unmatched"]

log = logging.getLogger("rerankd.request")

_MODEL = "model"
_DOCUMENTS = "documents"
_OUTCOME = "outcome"
_OBSERVED = "observed"
#: Probes and scrapes arrive every few seconds from every pod: their lines are debug, not info.
_QUIET_ROUTES = frozenset({"/health", "/ready", "/metrics"})
UNMATCHED = "unmatched"


def _state(request: Request[Any, Any, Any]) -> dict[str, Any]:
    state: dict[str, Any] = request.scope.setdefault("state", {})
    return state


def note_query(request: Request[Any, Any, Any], service: RerankService, query: RerankQuery) -> None:
    """Before scoring: the model (a served name, so labels stay bounded) and the document count."""
    state = _state(request)
    state[_DOCUMENTS] = len(query.documents)
    # An unknown name is answered with 404 by the service; it gets no label (nobody serves it).
    with contextlib.suppress(ModelNotFound):
        state[_MODEL] = service.resolve(query.model)


def note_outcome(request: Request[Any, Any, Any], outcome: RerankOutcome) -> None:
    _state(request)[_OUTCOME] = outcome


class ObserveMiddleware:
    """Outermost after the request id: times the whole request, including the key check."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if nothing is sent, the request failed without a response

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        state = scope.setdefault("state", {})
        state[_OBSERVED] = True
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_observed)
        finally:
            self.metrics.in_flight.dec()
            route = str(scope.get("path_template") or UNMATCHED)
            _finish(self.metrics, scope, route, status, time.perf_counter() - started)


def _finish(metrics: Metrics, scope: Scope, route: str, status: int, elapsed: float | None) -> None:
    state: dict[str, Any] = scope.get("state", {})
    outcome: RerankOutcome | None = state.get(_OUTCOME)
    model = outcome.model if outcome is not None else str(state.get(_MODEL, ""))
    labels = (route, model, str(status))
    metrics.requests.labels(*labels).inc()
    if elapsed is not None:
        metrics.latency.labels(*labels).observe(elapsed)
    if outcome is not None:
        metrics.documents.labels(model).inc(state.get(_DOCUMENTS, 0))
        metrics.tokens.labels(model).inc(outcome.input_tokens)
    level = logging.DEBUG if route in _QUIET_ROUTES and status < 400 else logging.INFO
    if not log.isEnabledFor(level):
        return
    fields = {
        "request_id": state.get("request_id", "-"),
        "method": scope.get("method"),
        "route": route,
        "model": model or None,
        "key": state.get("api_key"),  # the key's name; the key itself is never kept in state
        "documents": state.get(_DOCUMENTS),
        "tokens": outcome.input_tokens if outcome is not None else None,
        "cache_hits": outcome.cache_hits if outcome is not None else None,
        "status": status,
        "latency_ms": round(elapsed * 1000, 2) if elapsed is not None else None,
    }
    log.log(level, "%s %s %d", fields["method"], route, status, extra={"fields": fields})


def observe_unmatched(metrics: Metrics) -> Callable[[Message, Scope], Awaitable[None]]:
    """A ``before_send`` hook: requests the router refused (404, 405) never reach the middleware;
    count and log them here, without a latency (their start time is unknown)."""

    async def hook(message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start" or scope["type"] != ScopeType.HTTP:
            return
        if not scope.get("state", {}).get(_OBSERVED):
            _finish(metrics, scope, UNMATCHED, int(message["status"]), None)

    return hook
