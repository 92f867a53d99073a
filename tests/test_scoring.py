"""The cached scoring path in-process: a real rerankd app under uvicorn on loopback, the real
torch engine on the embedded MiniLM (wrapped to count what it scores), real Redis where named."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from rerankd.adapters.base import Engine
from rerankd.adapters.formats import Encoded, EncodeOptions
from rerankd.adapters.loader import ModelSource
from rerankd.adapters.torch_engine import TorchEngine
from rerankd.config import Settings
from rerankd.service import RerankService
from tests.ranking import assert_same_results
from tests.servers import RedisServer, free_port, inprocess_server, redis_server

pytestmark = pytest.mark.asyncio(loop_scope="function")

DOCS = [f"Document {i} about the capital cities of Europe, number {i}." for i in range(12)]


class CountingEngine(TorchEngine):
    """The real torch engine, counting every document it is asked to score."""

    def __init__(self, source: ModelSource) -> None:
        super().__init__(source, device="cpu")
        self.scored: Counter[str] = Counter()
        self.calls = 0

    async def encode(self, query: str, documents: Sequence[str], opts: EncodeOptions) -> Encoded:
        # Every path to the model encodes first: whole requests, and the document-embedding
        # cache's misses alike.
        if query != "warm-up":
            self.calls += 1
            self.scored.update(documents)
        return await super().encode(query, documents, opts)


@dataclass
class Running:
    url: str
    service: RerankService
    client: httpx.AsyncClient

    @property
    def engine(self) -> CountingEngine:
        engine = self.service.engines[self.service.default_model]
        assert isinstance(engine, CountingEngine)
        return engine

    async def rerank(
        self, docs: Sequence[str], query: str = "capital of France?", **headers: str
    ) -> httpx.Response:
        r = await self.client.post(
            self.url + "/v2/rerank", json={"query": query, "documents": list(docs)}, headers=headers
        )
        assert r.status_code == 200, r.text
        return r


def hits(r: httpx.Response) -> int:
    return int(r.headers["x-cache-hits"].split("/")[0])


def counting_factory(source: ModelSource, _: Settings) -> Engine:
    return CountingEngine(source)


@contextlib.asynccontextmanager
async def serving(**settings: Any) -> AsyncIterator[Running]:
    """rerankd on a thread of this process, on a free port, until the block ends."""
    with inprocess_server(Settings(**settings), engine_factory=counting_factory) as server:
        async with httpx.AsyncClient(timeout=60) as client:
            yield Running(server.url, server.service, client)


async def until_hits(app: Running, docs: Sequence[str], expected: int) -> httpx.Response:
    """Repeat a request until ``expected`` pairs come from the cache (writes land behind responses)."""
    async with asyncio.timeout(30):
        while True:
            r = await app.rerank(docs)
            if hits(r) == expected:
                return r
            await asyncio.sleep(0.05)


@pytest.fixture
def redis_url(redis: RedisServer) -> str:
    return redis.url


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_concurrent_identical_requests_score_each_pair_once(
    backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("redis_url") if backend == "redis" else None
    async with serving(redis_url=url) as app:
        n = 8
        before = app.engine.scheduler.stats.sequences  # the warm-up's
        responses = await asyncio.gather(*(app.rerank(DOCS) for _ in range(n)))
        assert all(r.json()["results"] == responses[0].json()["results"] for r in responses)
        assert app.engine.scored == Counter(DOCS)  # every pair scored once, over all requests
        # Pairs a request did not score came from the cache or from another request's scoring.
        coalesced = app.service.scorer.stats()["coalesced"]
        assert sum(hits(r) for r in responses) + coalesced == (n - 1) * len(DOCS)
        # The engine's own count: each document once, plus the query row of each scoring call.
        assert app.engine.calls == 1
        assert app.engine.scheduler.stats.sequences - before == len(DOCS) + 1


async def test_overlapping_concurrent_requests_score_each_pair_once() -> None:
    async with serving() as app:
        windows = [DOCS[i : i + 5] for i in range(0, 8)]  # neighbours share four documents
        responses = await asyncio.gather(*(app.rerank(w) for w in windows))
        assert app.engine.scored == Counter(DOCS)
        by_doc: dict[str, set[float]] = {}
        for window, r in zip(windows, responses, strict=True):
            for x in r.json()["results"]:
                by_doc.setdefault(window[x["index"]], set()).add(x["relevance_score"])
        assert all(len(scores) == 1 for scores in by_doc.values())  # one score per pair, everywhere


async def test_duplicate_documents_in_one_request_are_scored_once() -> None:
    async with serving() as app:
        r = await app.rerank([DOCS[0], DOCS[1], DOCS[0]])
        assert app.engine.scored == Counter([DOCS[0], DOCS[1]])
        scores = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
        assert scores[0] == scores[2]


async def test_partial_hit_scores_only_the_new_documents_and_keeps_indexes() -> None:
    async with serving() as app:
        first = await app.rerank(DOCS[:6])
        mixed = await app.rerank([DOCS[7], *DOCS[:6], DOCS[8]])
        assert hits(mixed) == 6
        assert app.engine.scored == Counter([*DOCS[:6], DOCS[7], DOCS[8]])
        cached = {x["index"]: x["relevance_score"] for x in first.json()["results"]}
        now = {x["index"]: x["relevance_score"] for x in mixed.json()["results"]}
        assert all(now[i + 1] == cached[i] for i in range(6))
        uncached = await app.rerank([DOCS[7], *DOCS[:6], DOCS[8]], **{"Cache-Control": "no-cache"})
        assert hits(uncached) == 0
        # Rescored in another batch shape: equal within float noise, not to the bit.
        assert_same_results(uncached.json()["results"], mixed.json()["results"])


async def test_cache_off_scores_every_time() -> None:
    async with serving(cache=False) as app:
        for _ in range(2):
            r = await app.rerank(DOCS[:3])
            assert r.headers["x-cache-hits"] == "0/3"
            assert "cached_tokens" not in r.json()["meta"]
        assert app.engine.scored == Counter(DOCS[:3] * 2)


async def test_no_store_leaves_nothing_behind_and_no_cache_still_writes() -> None:
    async with serving() as app:
        await app.rerank(DOCS[:3], **{"Cache-Control": "no-store"})
        assert hits(await app.rerank(DOCS[:3], **{"Cache-Control": "no-cache"})) == 0
        assert hits(await app.rerank(DOCS[:3])) == 3  # written by the no-cache request


async def test_usage_of_a_cached_request_matches_the_scored_one() -> None:
    async with serving() as app:
        docs = [DOCS[0], "word " * 300]  # one long document, truncated by the model
        scored = (await app.rerank(docs)).json()["meta"]
        cached = (await app.rerank(docs)).json()["meta"]
        # The bi-encoder's query row is counted when the model runs; pairs carry their own tokens.
        query_tokens = scored["tokens"]["input_tokens"] - cached["tokens"]["input_tokens"]
        assert 0 < query_tokens < 10
        assert cached["cached_tokens"] == cached["tokens"]["input_tokens"]
        assert cached["billed_units"] == scored["billed_units"]


async def test_redis_down_at_start_up_then_hits_once_it_runs() -> None:
    port = free_port()
    async with serving(redis_url=f"redis://127.0.0.1:{port}/0") as app:
        assert hits(await app.rerank(DOCS[:4])) == 0  # ready and answering without Redis
        # Redis comes up where rerankd expects it: the breaker's probe finds it, no restart needed.
        with redis_server(port=port):
            await until_hits(app, DOCS[:4], 4)
        assert app.service.scorer.stats()["store_breaker_opened"] >= 1


async def test_full_write_queue_drops_writes_and_counts_them(redis_url: str) -> None:
    async with serving(redis_url=redis_url, cache_write_queue=4) as app:
        await app.rerank(DOCS[:5])  # five pairs never fit a queue of four
        stats = app.service.scorer.stats()
        assert stats["write_dropped"] == 5
        assert hits(await app.rerank(DOCS[:5])) == 0
        assert hits(await until_hits(app, DOCS[:3], 3)) == 3  # three fit
