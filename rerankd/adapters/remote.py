"""The remote engine: scoring forwarded to upstream rerank servers (``--engine remote``).

Upstreams speak vLLM's ``/rerank`` or ``/score``, or the Cohere ``/v2/rerank`` API (vLLM, another
rerankd, a hosted service), so rerankd's API, cache and keys can front any of them. One pooled
HTTP client serves all upstreams. A request tries the upstreams in turn, starting one further
each time so load spreads: connection errors, timeouts, 408, 429 and 5xx move on to the next;
other 4xx answers are a configuration problem (model name, key) and fail the request.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec

from rerankd.adapters.base import Engine, ScoreResult
from rerankd.adapters.formats import EncodeOptions
from rerankd.adapters.loader import ModelSource
from rerankd.breaker import Breaker
from rerankd.config import Settings
from rerankd.errors import EngineFailure, EngineUnavailable, Timeout

__all__ = ["UPSTREAM_APIS", "RemoteEngine", "UpstreamApi", "build"]

log = logging.getLogger(__name__)

#: An upstream that could not be reached is tried last (and /ready is false when all are) this long.
COOLDOWN_S = 5.0
_RETRY_STATUSES = {408, 429}


class _Ranked(msgspec.Struct):
    index: int
    relevance_score: float


class _Scored(msgspec.Struct):
    index: int
    score: float


class _Usage(msgspec.Struct):
    total_tokens: int | None = None
    prompt_tokens: int | None = None


class _Tokens(msgspec.Struct):
    input_tokens: int | None = None


class _Meta(msgspec.Struct):
    tokens: _Tokens | None = None


class _RerankReply(msgspec.Struct):
    results: list[_Ranked]
    usage: _Usage | None = None
    meta: _Meta | None = None


class _ScoreReply(msgspec.Struct):
    data: list[_Scored]
    usage: _Usage | None = None


@dataclass(frozen=True, slots=True)
class UpstreamApi:
    name: str
    path: str

    def body(self, model: str, query: str, documents: Sequence[str], opts: EncodeOptions) -> dict[str, Any]:
        docs = list(documents)
        if self.name == "vllm-score":
            body: dict[str, Any] = {"model": model, "text_1": query, "text_2": docs}
        else:
            body = {"model": model, "query": query, "documents": docs}
            if self.name == "cohere":
                body["top_n"] = len(docs)  # Cohere's default may be fewer than all
        # Sent only when set: hosted APIs may not know them, vLLM and rerankd do.
        if opts.max_tokens_per_doc is not None:
            body["max_tokens_per_doc"] = opts.max_tokens_per_doc
        if opts.instruction is not None:
            body["instruction"] = opts.instruction
        return body

    def scores(self, content: bytes, n: int) -> tuple[list[float], int]:
        """Scores in document order and the input tokens the upstream reports (0 if none)."""
        pairs: list[tuple[int, float]]
        if self.name == "vllm-score":
            scored = msgspec.json.decode(content, type=_ScoreReply)
            pairs = [(d.index, d.score) for d in scored.data]
            usage = scored.usage
            tokens = (usage.prompt_tokens or usage.total_tokens or 0) if usage else 0
        else:
            ranked = msgspec.json.decode(content, type=_RerankReply)
            pairs = [(r.index, r.relevance_score) for r in ranked.results]
            if ranked.usage is not None:
                tokens = ranked.usage.total_tokens or ranked.usage.prompt_tokens or 0
            else:
                tokens = (ranked.meta.tokens.input_tokens or 0) if ranked.meta and ranked.meta.tokens else 0
        out = [math.nan] * n
        for index, score in pairs:
            if 0 <= index < n:
                out[index] = score
        if len(pairs) != n or any(math.isnan(s) for s in out):
            raise ValueError(f"the upstream scored {len(pairs)} of {n} documents")
        return out, tokens


UPSTREAM_APIS = {
    "cohere": UpstreamApi("cohere", "/v2/rerank"),
    "vllm-rerank": UpstreamApi("vllm-rerank", "/rerank"),
    "vllm-score": UpstreamApi("vllm-score", "/score"),
}


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


class _Retry(Exception):
    """This upstream failed in a way another one may not."""


class RemoteEngine(Engine):
    def __init__(self, source: ModelSource, settings: Settings) -> None:
        super().__init__(source)
        self.api = UPSTREAM_APIS[settings.upstream_kind]
        self.upstreams = [u.rstrip("/") for u in settings.upstreams]
        #: The name the upstream serves the model under.
        self.model = source.config.path
        self._api_key = settings.upstream_api_key
        self._timeout = settings.upstream_timeout_s
        self._max_connections = settings.upstream_max_connections
        self._client: httpx.AsyncClient | None = None
        # One breaker per upstream, opened by one unreachable attempt; an open one is still tried
        # after the others (its probe, or a last resort), which is how a restart is noticed.
        self._breakers = {
            u: Breaker(
                f"upstream {u}",
                threshold=1,
                backoff_s=COOLDOWN_S,
                max_backoff_s=COOLDOWN_S,
                meanwhile="trying the other upstreams first",
            )
            for u in self.upstreams
        }
        self._next = 0
        self._counts = {"requests": 0, "attempts": 0, "failed_attempts": 0}

    async def start(self) -> None:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        limits = httpx.Limits(
            max_connections=self._max_connections, max_keepalive_connections=self._max_connections
        )
        self._client = httpx.AsyncClient(headers=headers, limits=limits, timeout=self._timeout)
        log.info(
            "model %s: scoring on %s (%s API)", self.source.name, ", ".join(self.upstreams), self.api.name
        )

    @property
    def healthy(self) -> bool:
        return self._client is not None and any(b.available for b in self._breakers.values())

    @property
    def cache_tag(self) -> str:
        # The upstream's model and API are in the model's fingerprint; its precision is unknown.
        return "remote"

    def stats(self) -> dict[str, float]:
        return dict(self._counts)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    def _order(self) -> list[str]:
        """Rotate the starting upstream; reachable ones first, then those cooling down (they
        may be back, and trying them is how a restarted upstream is noticed)."""
        start = self._next % len(self.upstreams)
        self._next += 1
        rotated = self.upstreams[start:] + self.upstreams[:start]
        return sorted(rotated, key=lambda u: not self._breakers[u].available)

    async def score(
        self, query: str, documents: Sequence[str], opts: EncodeOptions, *, deadline: float | None = None
    ) -> ScoreResult:
        if self._client is None:
            raise EngineUnavailable()
        self._counts["requests"] += 1
        content = msgspec.json.encode(self.api.body(self.model, query, documents, opts))
        for upstream in self._order():
            try:
                scores, tokens = await self._attempt(upstream, content, len(documents), deadline)
            except _Retry as exc:
                self._counts["failed_attempts"] += 1
                log.warning("upstream %s failed (%s)", upstream, exc)
                continue
            if opts.raw:
                # Upstreams answer activated scores: their logit is the raw value (exact for a
                # sigmoid head; a bi-encoder's cosine cannot be recovered this way).
                scores = [_logit(s) for s in scores]
            return ScoreResult(scores, tokens, len(documents))
        wait = min(b.retry_in() for b in self._breakers.values())
        raise EngineUnavailable(
            f"no upstream could score the request ({len(self.upstreams)} tried)", retry_after=max(1.0, wait)
        )

    async def _attempt(
        self, upstream: str, content: bytes, n: int, deadline: float | None
    ) -> tuple[list[float], int]:
        assert self._client is not None
        timeout = self._timeout
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
            if timeout <= 0:
                raise Timeout()
        self._counts["attempts"] += 1
        breaker = self._breakers[upstream]
        breaker.allow()  # claims the probe when one is due; tried regardless (see __init__)
        try:
            resp = await self._client.post(
                upstream + self.api.path,
                content=content,
                headers={"Content-Type": "application/json"},
                timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            )
        except httpx.TransportError as exc:  # refused, reset, timed out
            breaker.failure(exc)
            raise _Retry(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            breaker.abandon()
            raise
        breaker.success()  # it answered: reachable, whatever the status
        if resp.status_code >= 500 or resp.status_code in _RETRY_STATUSES:
            raise _Retry(f"HTTP {resp.status_code}: {resp.text[:200]}")
        if resp.status_code != 200:
            log.error(
                "upstream %s refused the request: HTTP %d %s", upstream, resp.status_code, resp.text[:500]
            )
            raise EngineFailure()
        try:
            return self.api.scores(resp.content, n)
        except (msgspec.DecodeError, ValueError) as exc:
            log.error("upstream %s answered an unreadable body (%s): %s", upstream, exc, resp.text[:500])
            raise EngineFailure() from exc


def build(source: ModelSource, settings: Settings) -> RemoteEngine:
    """The engine table's entry point (``rerankd.adapters.registry``)."""
    return RemoteEngine(source, settings)
