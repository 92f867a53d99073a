"""Bi-encoders' document embeddings cached in the result cache's store (memory and a real Redis):
a new query over documents seen before embeds only the query, and scores as an uncached run does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from rerankd.adapters.base import BatchedEngine
from rerankd.adapters.formats import EncodeOptions
from rerankd.adapters.loader import embedded_model, resolve_model
from rerankd.adapters.torch_engine import TorchEngine
from rerankd.cache import CacheStore, MemoryStore
from rerankd.cache.embeddings import DocEmbedding, decode_embeddings, encode_embedding
from rerankd.cache.redis import RedisStore
from rerankd.scoring import CachePolicy, PairScorer
from tests.servers import RedisServer

DOCS = [
    "Paris is the capital and largest city of France.",
    "Berlin is the capital of Germany.",
    "I like bananas.",
    "The Seine flows through Paris. " * 80,  # longer than the context: cut, or split in windows
    "Madrid is the capital of Spain.",
    "Quarterly earnings rose by four percent.",
]
QUERIES = ["What is the capital of France?", "Which river runs through Paris?", "fruit I like"]
CONTEXT = ("ctx",)  # the pair cache's context; every query below is new to it


@pytest.fixture(scope="module")
async def engine() -> AsyncIterator[BatchedEngine]:
    eng = TorchEngine(resolve_model(embedded_model()), device="cpu", dtype="float32")
    await eng.start()
    yield eng
    await eng.close()


@pytest.fixture(params=["memory", "redis"])
async def scorer(request: pytest.FixtureRequest) -> AsyncIterator[PairScorer]:
    store: CacheStore
    if request.param == "memory":
        store = MemoryStore(max_entries=10_000, max_bytes=64 * 1024 * 1024)
    else:
        server: RedisServer = request.getfixturevalue("redis")
        store = RedisStore(server.url, timeout_s=2)
    s = PairScorer(store, ttl_s=600, write_queue=10_000)
    await s.open()
    yield s
    await settle(s)  # no write in flight when the store closes
    await s.close()


async def settle(scorer: PairScorer) -> None:
    """Redis writes go behind the response: wait until they are done."""
    for _ in range(200):
        if scorer.stats().get("write_pending", 0) == 0:
            writer = scorer.embeddings._writer if scorer.embeddings else None
            if writer is None or writer.pending == 0:
                return
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("max_chunks", [1, 3])
async def test_a_new_query_over_known_documents_embeds_only_the_query(
    engine: BatchedEngine, scorer: PairScorer, max_chunks: int
) -> None:
    opts = EncodeOptions(max_chunks=max_chunks)
    uncached = [await engine.score(q, DOCS, opts) for q in QUERIES]
    first = await scorer.score(engine, QUERIES[0], DOCS, opts, context=(*CONTEXT, max_chunks))
    await settle(scorer)
    assert first.scores == pytest.approx(uncached[0].scores, abs=1e-6)
    for query, want in zip(QUERIES[1:], uncached[1:], strict=True):
        before = engine.stats()["sequences"]
        got = await scorer.score(engine, query, DOCS, opts, context=(*CONTEXT, max_chunks))
        assert engine.stats()["sequences"] - before == 1  # the query's row alone
        assert got.hits == 0  # a new query: the pair cache could not help
        assert got.scores == pytest.approx(want.scores, abs=1e-6)
        # Usage as if every document had been embedded now.
        assert (got.n_tokens, got.n_chunks) == (want.n_tokens, want.n_chunks)
    stats = scorer.stats()
    assert stats["doc_embedding_hits"] == len(DOCS) * (len(QUERIES) - 1)
    assert stats["doc_embedding_misses"] == len(DOCS)


async def test_no_cache_reads_embed_every_document(engine: BatchedEngine, scorer: PairScorer) -> None:
    await scorer.score(engine, QUERIES[0], DOCS, EncodeOptions(), context=CONTEXT)
    await settle(scorer)
    before = engine.stats()["sequences"]
    await scorer.score(
        engine, QUERIES[1], DOCS, EncodeOptions(), context=CONTEXT, policy=CachePolicy(read=False)
    )
    assert engine.stats()["sequences"] - before == 1 + len(DOCS)


async def test_raw_and_activated_scores_share_the_embeddings(
    engine: BatchedEngine, scorer: PairScorer
) -> None:
    await scorer.score(engine, QUERIES[0], DOCS, EncodeOptions(), context=CONTEXT)
    await settle(scorer)
    before = engine.stats()["sequences"]
    raw = await scorer.score(engine, QUERIES[1], DOCS, EncodeOptions(raw=True), context=(*CONTEXT, "raw"))
    assert engine.stats()["sequences"] - before == 1
    want = (await engine.score(QUERIES[1], DOCS, EncodeOptions(raw=True))).scores
    assert raw.scores == pytest.approx(want, abs=1e-6)
    assert min(raw.scores) < 0.5  # cosines, not (cos + 1) / 2


def test_values_round_trip_and_foreign_values_are_misses() -> None:
    import numpy as np

    rows = np.arange(6, dtype=np.float32).reshape(2, 3) / 10
    raw = encode_embedding(DocEmbedding(rows, 17))
    (back,), bad = decode_embeddings([raw])
    assert bad == 0
    assert back is not None
    assert back.tokens == 17
    assert back.vectors.tobytes() == rows.tobytes()
    found, bad = decode_embeddings([None, raw[:-1], b"\x02" + raw[1:], b"x", raw])
    assert [f is not None for f in found] == [False, False, False, False, True]
    assert bad == 3
