"""The seed design's two servers, rebuilt on rerankd's model code for a like-for-like comparison.

``python -m bench.baselines naive|executor [--model PATH] [--port 8090]``

- ``naive``: the async handler calls the model directly, so one forward pass blocks the event
  loop and every other connection waits (the seed's "before").
- ``executor``: the same call in a global ``ThreadPoolExecutor`` (the seed's fix; 4 workers as in
  its notes), so the loop stays free and up to ``--workers`` requests score at once.

Both score one request's documents per call and nothing else differs: the request is tokenized
by rerankd's own format code (same prompt, truncation and token counts) and run through
``TorchEngine.forward`` — rerankd's head, dtype and device — in one padded batch. The measured
gap to rerankd is therefore the serving design (cross-request batching, length-sorted micro-batches,
tokenization off the loop), not model code. ``--scorer card`` swaps the LLM forward for the one in
the Qwen3-Reranker model card (left padding, full-vocabulary logits at every position, last
position's yes/no), which is what a typical hand-written server does; other formats are unchanged.

They accept the Cohere v1/v2 and Jina bodies and answer in rerankd's response shapes (they use
rerankd's schema code), so ``python -m bench`` drives all three servers the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import uuid
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import msgspec

from rerankd.adapters.formats import LLMYesNoFormat
from rerankd.adapters.loader import ModelSource, embedded_model, resolve_model
from rerankd.adapters.torch_engine import TorchEngine
from rerankd.config import ModelConfig
from rerankd.errors import BadRequest, RerankdError
from rerankd.proxy.dialects import Dialect, Reply
from rerankd.proxy.dialects.cohere import COHERE_V1, COHERE_V2
from rerankd.proxy.dialects.rerank import RERANK
from rerankd.service import Ranked, RerankOutcome, RerankQuery, search_units

__all__ = ["BaselineApp", "main", "model_source"]

log = logging.getLogger("bench.baselines")

Mode = Literal["naive", "executor"]
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Forward = Callable[[list[list[int]], list[list[int]] | None], Sequence[Any]]

_DIALECTS: dict[str, Dialect[Any]] = {"/v1/rerank": COHERE_V1, "/v2/rerank": COHERE_V2, "/rerank": RERANK}
_JSON = [(b"content-type", b"application/json")]


def model_source(path: str | None, fmt: str = "auto") -> ModelSource:
    """The model rerankd would serve for ``--model PATH`` (default: the embedded MiniLM)."""
    base = embedded_model() if path is None else None
    name = base.name if base else Path(str(path)).name or "model"
    cfg = msgspec.convert({"name": name, "path": base.path if base else path, "format": fmt}, ModelConfig)
    return resolve_model(cfg)


class BaselineApp:
    """A framework-free ASGI app: one scoring call per request, on the loop or in a thread pool."""

    def __init__(
        self,
        source: ModelSource,
        *,
        mode: Mode,
        device: str = "auto",
        dtype: str = "auto",
        threads: int | None = None,
        workers: int = 4,
        scorer: Literal["rerankd", "card"] = "rerankd",
    ) -> None:
        self.source = source
        self.mode = mode
        self.scorer = scorer
        self.engine = TorchEngine(source, device=device, dtype=dtype, threads=threads)
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="baseline") if mode == "executor" else None
        self._forward: Forward = self.engine.forward

    # -- scoring: the one function both baselines call ----------------------------------------

    def score(self, q: RerankQuery) -> RerankOutcome:
        fmt = self.engine.format
        encoded = fmt.encode(q.query, q.documents, q.options)
        scores = fmt.combine(encoded, self._forward(encoded.ids, encoded.type_ids))
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        top_n = min(q.top_n, len(order)) if q.top_n else len(order)
        return RerankOutcome(
            model=self.source.name,
            results=[Ranked(i, scores[i]) for i in order[:top_n]],
            input_tokens=encoded.n_tokens,
            search_units=search_units(encoded.n_chunks),
        )

    async def _start(self) -> None:
        await self.engine.start()
        if self.scorer == "card" and isinstance(self.engine.format, LLMYesNoFormat):
            self._forward = await asyncio.to_thread(_card_forward, self.engine)
        log.info("%s baseline ready: %s on %s", self.mode, self.source.name, self.engine.device)

    # -- ASGI ------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._start()
                except Exception as exc:
                    log.exception("cannot load the model")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.engine.close()
                if self.pool is not None:
                    self.pool.shutdown(wait=False, cancel_futures=True)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = uuid.uuid4().hex
        path, method = scope["path"], scope["method"]
        if method == "GET" and path in ("/health", "/ready"):
            await _respond(send, 200, b'{"status":"ok"}')
            return
        dialect = _DIALECTS.get(path)
        if dialect is None or method != "POST":
            await _respond(send, 404, _error("not found", f"{method} {path}", request_id))
            return
        body = await _read_body(receive)
        try:
            req = msgspec.json.decode(body, type=dialect.request_type)
            (query,) = dialect.queries(req)
            if not query.query.strip() or not query.documents:
                raise BadRequest("query and documents must not be empty")
            if self.pool is None:
                outcome = self.score(query)  # blocks the event loop for the whole forward pass
            else:
                outcome = await asyncio.get_running_loop().run_in_executor(self.pool, self.score, query)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await _respond(send, 400, _error("invalid request", str(exc), request_id))
            return
        except RerankdError as exc:
            await _respond(send, exc.status_code, _error(exc.message, exc.detail, request_id))
            return
        response = dialect.respond(req, [outcome], Reply(request_id))
        await _respond(send, 200, msgspec.json.encode(response))


def _card_forward(engine: TorchEngine) -> Forward:
    """The model card's computation: left-padded batch, full logits, the (no, yes) pair; softmax over
    the pair is the sigmoid of its difference, which the format applies."""
    import torch
    from transformers import AutoModelForCausalLM

    fmt = engine.format
    assert isinstance(fmt, LLMYesNoFormat)
    model: Any = AutoModelForCausalLM.from_pretrained(engine.source.path, dtype=engine.dtype)
    model = model.to(engine.device).eval()
    pad = fmt.tokenizer.pad_token_id or 0

    def forward(ids: list[list[int]], _types: list[list[int]] | None) -> list[float]:
        longest = max(map(len, ids))
        input_ids = torch.full((len(ids), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), longest), dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, longest - len(row) :] = torch.tensor(row)
            mask[i, longest - len(row) :] = 1
        with torch.inference_mode():
            logits = model(
                input_ids=input_ids.to(engine.device), attention_mask=mask.to(engine.device)
            ).logits
            pair = logits[:, -1, [fmt.no_id, fmt.yes_id]].float()
            return [float(x) for x in (pair[:, 1] - pair[:, 0]).cpu()]

    return forward


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _error(message: str, detail: str, request_id: str) -> bytes:
    return msgspec.json.encode({"message": message, "detail": detail, "id": request_id})


async def _respond(send: Send, status: int, body: bytes) -> None:
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.baselines", description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["naive", "executor"])
    p.add_argument("--model", default=None, help="model folder (default: the embedded MiniLM)")
    p.add_argument("--format", default="auto", choices=["auto", "llm-yes-no", "cross-encoder", "bi-encoder"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--torch-threads", type=int, default=None)
    p.add_argument("--workers", type=int, default=4, help="executor threads (default 4, as in the seed)")
    p.add_argument("--scorer", choices=["rerankd", "card"], default="rerankd")
    ns = p.parse_args(argv)
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        source = model_source(ns.model, ns.format)
    except RerankdError as exc:
        print(f"baselines: {exc.detail}", file=sys.stderr)
        return 2
    app = BaselineApp(
        source,
        mode=ns.mode,
        device=ns.device,
        dtype=ns.dtype,
        threads=ns.torch_threads,
        workers=ns.workers,
        scorer=ns.scorer,
    )
    config = uvicorn.Config(app, host=ns.host, port=ns.port, log_level="warning", lifespan="on")
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
