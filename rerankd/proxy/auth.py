"""API keys on the HTTP side: ``Authorization: Bearer KEY`` on every route but the open ones.

The middleware authenticates and applies the key's limits before the route runs, keeps the key's
name in ``scope["state"]["api_key"]`` for logs, and charges the tokens a route reports through
:func:`note_usage` before the response starts, so the next request of the key already sees them.
Keys are never logged; names are.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from litestar import Request
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from rerankd.auth.gate import Gate
from rerankd.errors import RerankdError, Unauthorized
from rerankd.proxy.errors import error_response, request_id_of
from rerankd.service import RerankOutcome

__all__ = ["OPEN_PATHS", "AuthMiddleware", "bearer_token", "note_usage", "open_paths"]

log = logging.getLogger(__name__)

#: Routes that never need a key: probes and the API description. Path templates, or prefixes ending "/".
OPEN_PATHS: frozenset[str] = frozenset({"/health", "/ready", "/docs", "/docs/"})
METRICS_PATH = "/metrics"

_STATE_KEY = "api_key"
_STATE_USAGE = "usage"
# RFC 6750 b64token, bounded: longer values are not keys and are not worth hashing.
_BEARER = re.compile(r"^Bearer +([A-Za-z0-9\-._~+/]{1,256}=*) *$", re.IGNORECASE)


def open_paths(*, metrics_auth: bool) -> frozenset[str]:
    return OPEN_PATHS if metrics_auth else OPEN_PATHS | {METRICS_PATH}


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The key in the one ``Authorization: Bearer`` header, or :class:`Unauthorized`."""
    values = [v for k, v in headers if k == b"authorization"]
    if not values:
        raise Unauthorized("missing API key: send the header 'Authorization: Bearer KEY'")
    match = _BEARER.match(values[0].decode("latin-1")) if len(values) == 1 else None
    if match is None:
        raise Unauthorized("malformed Authorization header: expected 'Bearer KEY'")
    return match.group(1)


def note_usage(request: Request[Any, Any, Any], outcome: RerankOutcome) -> None:
    """Called by scoring routes: what the request scored, for the key's token limit and usage."""
    request.scope.setdefault("state", {})[_STATE_USAGE] = (outcome.input_tokens, outcome.search_units)


class AuthMiddleware:
    def __init__(self, app: ASGIApp, gate: Gate, open_paths: frozenset[str] = OPEN_PATHS) -> None:
        self.app = app
        self.gate = gate
        self.open_paths = open_paths

    def _is_open(self, scope: Scope) -> bool:
        # The route's template, not the raw path: "/health/" or "/docs/../v1/rerank" cannot sneak past.
        template = str(scope.get("path_template", scope["path"]))
        return template in self.open_paths or any(
            template.startswith(p) for p in self.open_paths if p.endswith("/")
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or not self.gate.enforced or self._is_open(scope):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        try:
            record = self.gate.identify(bearer_token(scope["headers"]))
            state[_STATE_KEY] = record.name
            await self.gate.admit(record)
        except RerankdError as exc:
            request: Request[Any, Any, Any] = Request(scope, receive)
            log.info(
                "request %s: %s %s refused with %d: %s (key %s)",
                request_id_of(request),
                scope["method"],
                scope["path"],
                exc.status_code,
                exc.detail,
                state.get(_STATE_KEY, "-"),
            )
            await error_response(request, exc).to_asgi_response(None, request)(scope, receive, send)
            return
        log.debug("request %s: key %s", state.get("request_id", "-"), record.name)

        async def send_charged(message: Message) -> None:
            if message["type"] == "http.response.start" and _STATE_USAGE in state:
                tokens, units = state.pop(_STATE_USAGE)
                await self.gate.charge(record, tokens=tokens, search_units=units)
            await send(message)

        await self.app(scope, receive, send_charged)
