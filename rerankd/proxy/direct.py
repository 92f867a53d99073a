"""The scoring routes answered straight from ASGI, without Litestar's per-request handler work.

A fully cached request is cheap enough that Litestar's machinery around the handler (the request
object, the signature model, dependency resolution, the response object and its conversion) was
about a quarter of its CPU time (docs/benchmarks.md). The request middleware hands a routed
``POST`` to a dialect's path here: the body is read, decoded into the dialect's request struct as
Litestar would decode it (``strict=False``), answered by the same :func:`~rerankd.proxy.routes.answer`
and encoded the way Litestar encodes it. Anything unusual (a body over the limit, one that does not
decode, a disconnect while reading) goes on to Litestar's route with the body replayed, so its
validation errors stay the one source of their wording. Errors raised while answering become
responses through the one exception mapping (:func:`~rerankd.proxy.errors.handle_exception`).
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

from rerankd.proxy.context import header
from rerankd.proxy.dialects import DIALECTS, Dialect
from rerankd.proxy.dialects.base import unknown_fields
from rerankd.proxy.errors import RerankdRequest, handle_exception
from rerankd.proxy.routes import answer
from rerankd.service import RerankService

__all__ = ["DirectRoutes"]

_JSON = (b"content-type", b"application/json")


class DirectRoutes:
    """The dialects' POST routes by path template, each with its body decoder."""

    def __init__(self, service: RerankService, *, max_body: int) -> None:
        self.service = service
        self.max_body = max_body
        self._routes: dict[str, _Route] = {
            path: _Route(dialect) for dialect in DIALECTS for path in dialect.paths
        }
        self._encoder = msgspec.json.Encoder()

    def serves(self, scope: Scope, template: str) -> bool:
        return template in self._routes and scope.get("method") == "POST"

    async def __call__(self, scope: Scope, receive: Receive, send: Send, template: str, app: ASGIApp) -> None:
        """Answer the request, or pass it to ``app`` (Litestar's route) with its body replayed."""
        route = self._routes[template]
        length = header(scope["headers"], b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await app(scope, receive, send)  # Litestar answers 400 or 413 before reading
            return
        read: list[ReceiveMessage] = []
        body = await self._read(receive, read)
        decoded = None if body is None else route.decode(body)
        if decoded is None:
            await app(scope, _replay(read, receive), send)
            return
        data, unknown = decoded
        try:
            reply, headers = await answer(route.dialect, data, unknown, self.service, scope, receive)
            payload = self._encoder.encode(reply)
        except Exception as exc:  # mapped to a response in the one place that does it
            request = RerankdRequest(scope, receive)
            response = handle_exception(request, exc).to_asgi_response(None, request)
            await response(scope, receive, send)
            return
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        raw += (_JSON, (b"content-length", b"%d" % len(payload)))
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    async def _read(self, receive: Receive, read: list[ReceiveMessage]) -> bytes | None:
        """The whole body; ``None`` when it is over the limit or the client left (``read`` keeps
        every message taken, for the replay)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            read.append(message)
            if message["type"] != "http.request":
                return None
            chunk: bytes = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_body:
                return None
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Route:
    """One dialect's decoders. Most bodies name no field the dialect lacks: a decoder that refuses
    unknown fields settles that in the one decode, and only a body it refuses is decoded again
    leniently and scanned for the names to warn of."""

    def __init__(self, dialect: Dialect[Any]) -> None:
        self.dialect = dialect
        kind = dialect.request_type
        closed = msgspec.defstruct(
            kind.__name__, [], bases=(kind,), module=kind.__module__, forbid_unknown_fields=True
        )
        self._closed = msgspec.json.Decoder(closed, strict=False)
        self._open = msgspec.json.Decoder(kind, strict=False)

    def decode(self, body: bytes) -> tuple[Any, list[str]] | None:
        """The request and its unknown top-level fields; ``None`` when the body does not decode.
        ``ValidationError`` is a ``DecodeError``; Litestar words the 400 for a body refused here."""
        with contextlib.suppress(msgspec.DecodeError, RecursionError):
            return self._closed.decode(body), []
        try:
            data = self._open.decode(body)
        except (msgspec.DecodeError, RecursionError):
            return None
        return data, unknown_fields(body, self.dialect.request_type)


def _replay(messages: list[ReceiveMessage], receive: Receive) -> Receive:
    """``receive`` with ``messages`` given back first."""
    pending = list(messages)

    async def again() -> ReceiveMessage:
        if pending:
            return pending.pop(0)
        return await receive()

    return again
