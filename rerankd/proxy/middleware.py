"""The one request-scope middleware: request id, API key, metrics and the request log line.

For every HTTP request that reached a route it

- takes ``X-Request-ID`` (or makes one) and sends it back on the answer;
- on guarded routes authenticates ``Authorization: Bearer KEY`` and applies the key's request
  limit, answering refusals itself (401, 429, 503 with the JSON error body);
- settles the key's tokens and usage before the response starts, so the key's next request
  already sees them;
- times the request and, when it ends, counts it and writes its log line (:mod:`.observe`);
- hands well-formed scoring requests to the direct routes (:mod:`.direct`), everything else to
  Litestar's route.

One layer instead of three: each ASGI layer costs a call frame and a ``send`` wrapper per
message, and a fully cached request is cheap enough for that to show.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from litestar import Request
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from rerankd.auth.gate import Gate
from rerankd.errors import RerankdError
from rerankd.proxy.auth import OPEN_PATHS, bearer_token
from rerankd.proxy.context import CONTEXT_KEY, RequestContext, request_id_from
from rerankd.proxy.direct import DirectRoutes
from rerankd.proxy.errors import error_response
from rerankd.proxy.metrics import Metrics
from rerankd.proxy.observe import UNMATCHED, finish
from rerankd.service import RerankService

__all__ = ["RequestMiddleware"]

log = logging.getLogger("rerankd.proxy.auth")


class RequestMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        gate: Gate,
        metrics: Metrics,
        service: RerankService | None = None,
        open_paths: frozenset[str] = OPEN_PATHS,
        direct: DirectRoutes | None = None,
    ) -> None:
        self.app = app
        self.direct = direct
        self.gate = gate
        self.metrics = metrics
        self.service = service
        self.open_paths = open_paths
        self._open_prefixes = tuple(p for p in open_paths if p.endswith("/"))

    def _is_open(self, template: str) -> bool:
        # The route's template, not the raw path: "/health/" or "/docs/../v1/rerank" cannot sneak past.
        return template in self.open_paths or template.startswith(self._open_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        ctx = RequestContext(request_id_from(scope["headers"]))
        scope[CONTEXT_KEY] = ctx  # type: ignore[literal-required]  # one key of our own
        id_header = (b"x-request-id", ctx.request_id.encode())
        status = 500  # if nothing is sent, the request failed without a response

        async def send_wrapped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                stages = ctx.stages
                if stages is None:
                    message["headers"] = [*message.get("headers", ()), id_header]
                else:
                    # TEI's timing headers, in its unit (whole milliseconds): rerankd.stages says
                    # what each stage covers.
                    total = time.perf_counter() - started
                    message["headers"] = [
                        *message.get("headers", ()),
                        id_header,
                        (b"x-total-time", b"%d" % (total * 1000)),
                        (b"x-compute-time", b"%d" % (stages.compute * 1000)),
                        (b"x-tokenization-time", b"%d" % (stages.tokenization * 1000)),
                        (b"x-queue-time", b"%d" % (stages.queue * 1000)),
                        (b"x-inference-time", b"%d" % (stages.inference * 1000)),
                    ]
                if ctx.key is not None and not ctx.settled:
                    await self._settle(ctx)
            await send(message)

        in_flight = self.metrics.in_flight
        in_flight.inc()
        try:
            template = str(scope.get("path_template") or scope["path"])
            if self.gate.enforced and not self._is_open(template):
                refusal = await self._admit(scope, ctx)
                if refusal is not None:
                    request: Request[Any, Any, Any] = Request(scope, receive)
                    response = error_response(request, refusal).to_asgi_response(None, request)
                    await response(scope, receive, send_wrapped)
                    return
            if self.direct is not None and self.direct.serves(scope, template):
                await self.direct(scope, receive, send_wrapped, template, self.app)
            else:
                await self.app(scope, receive, send_wrapped)
        finally:
            in_flight.dec()
            if ctx.key is not None and not ctx.settled:  # failed before any response started
                await self._settle(ctx)
            if ctx.refusal is not None:
                self._refused(scope, ctx, ctx.refusal)
            route = str(scope.get("path_template") or UNMATCHED)
            finish(self.metrics, self.service, scope, ctx, route, status, time.perf_counter() - started)

    async def _admit(self, scope: Scope, ctx: RequestContext) -> RerankdError | None:
        """The key and its request limit; a refusal to answer, or ``None`` to go on."""
        try:
            record = self.gate.identify(bearer_token(scope["headers"]))
            ctx.key = record
            await self.gate.admit(record)
        except RerankdError as exc:
            ctx.settled = True  # nothing to settle for a refused request
            self._refused(scope, ctx, exc)
            return exc
        ctx.gate = self.gate
        log.debug("request %s: key %s", ctx.request_id, record.name)
        return None

    def _refused(self, scope: Scope, ctx: RequestContext, exc: RerankdError) -> None:
        self.metrics.refused(exc)
        log.info(
            "request %s: %s %s refused with %d: %s (key %s)",
            ctx.request_id,
            scope.get("method"),
            scope["path"],
            exc.status_code,
            exc.detail,
            ctx.key.name if ctx.key is not None else "-",
        )

    async def _settle(self, ctx: RequestContext) -> None:
        """Charge what the request scored, in place of what was reserved for it (all of which goes
        back when it failed before scoring)."""
        ctx.settled = True
        assert ctx.key is not None
        outcome = ctx.outcome
        if outcome is None and not ctx.reserved_tokens:
            return
        await self.gate.settle(
            ctx.key,
            reserved=ctx.reserved_tokens,
            tokens=outcome.input_tokens if outcome is not None else 0,
            search_units=outcome.search_units if outcome is not None else 0,
            model=outcome.model if outcome is not None else "",
        )
