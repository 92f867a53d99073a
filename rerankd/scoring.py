"""Scoring through the per-pair cache: look every pair up, score only the misses (once, even
across concurrent requests), merge in request order, write the new scores back behind the response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from rerankd.adapters.base import Engine, LocalEngine, ScoreResult
from rerankd.adapters.formats import EncodeOptions
from rerankd.cache import (
    CacheStore,
    Coalescer,
    PairScore,
    WriteBehind,
    decode_all,
    decode_values,
    encode_value,
    pair_keys,
)
from rerankd.cache.keys import Context
from rerankd.doc_cache import DocEmbeddingCache
from rerankd.errors import Timeout

__all__ = ["READ_WRITE", "CachePolicy", "PairScorer", "Scored"]

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def _until(deadline: float | None) -> AsyncIterator[None]:
    """``deadline`` (``time.monotonic()``) over the work that can wait: the engine and pairs that
    another request is scoring; :class:`Timeout` when it passes. A fully cached request sets no
    timer (the store has its own)."""
    if deadline is None:
        yield
        return
    timer = asyncio.timeout(deadline - time.monotonic())
    try:
        async with timer:
            yield
    except TimeoutError:
        if timer.expired():
            raise Timeout() from None
        raise  # an engine's own, not the deadline


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """What one request lets the cache do (``Cache-Control: no-cache`` / ``no-store``)."""

    read: bool = True
    write: bool = True


#: The default: read and write.
READ_WRITE = CachePolicy()


@dataclass(frozen=True, slots=True)
class Scored:
    scores: list[float]
    #: Input tokens of all pairs: scored now, or as stored with a cached score.
    n_tokens: int
    n_chunks: int
    #: Pairs read from the cache, and their tokens.
    hits: int = 0
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class _Fresh:
    pairs: dict[bytes, PairScore]
    #: Tokens that belong to no document (a bi-encoder's query row).
    extra_tokens: int


class PairScorer:
    """Scores documents against a query with an engine; with a store, through the cache."""

    def __init__(
        self, store: CacheStore | None, *, ttl_s: int, write_queue: int, key_prefix: str = "rerankd:"
    ) -> None:
        self.store = store
        self.ttl_s = ttl_s
        #: The deployment's Redis prefix: deployments sharing a Redis never share pairs.
        self.key_prefix = key_prefix.encode()
        self._coalescer: Coalescer[PairScore] = Coalescer()
        self._writer = (
            WriteBehind(store, ttl_s=ttl_s, max_pending=write_queue, on_written=self._coalescer.release)
            if store is not None
            else None
        )
        self._counts = dict.fromkeys(("hits", "misses", "corrupt", "coalesced", "scored"), 0)
        #: Bi-encoders' document embeddings, in the same store: pairs missed with a new query
        #: over known documents cost one embedding, the query's.
        self.embeddings = (
            DocEmbeddingCache(store, ttl_s=ttl_s, write_queue=write_queue) if store is not None else None
        )

    async def open(self) -> None:
        if self.store is None or self._writer is None:
            log.info("result cache is off")
            return
        await self.store.open()
        self._writer.start()
        if self.embeddings is not None:
            self.embeddings.start()

    async def close(self) -> None:
        if self.store is not None and self._writer is not None:
            await self._writer.close()
            if self.embeddings is not None:
                await self.embeddings.close()
            log.info("result cache: %s", ", ".join(f"{k} {v}" for k, v in self.stats().items()))
            await self.store.close()

    def stats(self) -> dict[str, int]:
        out = dict(self._counts)
        if self._writer is not None:
            out["write_pending"] = self._writer.pending
            out["write_dropped"] = self._writer.dropped
        if self.embeddings is not None:
            out.update({f"doc_embedding_{k}": v for k, v in self.embeddings.counts.items()})
        if self.store is not None:
            out.update({f"store_{k}": v for k, v in self.store.stats().items()})
        return out

    async def score(
        self,
        engine: Engine,
        query: str,
        documents: Sequence[str],
        opts: EncodeOptions,
        *,
        context: Context,
        policy: CachePolicy = READ_WRITE,
        deadline: float | None = None,
    ) -> Scored:
        if self.store is None:
            async with _until(deadline):
                r = await engine.score(query, documents, opts, deadline=deadline)
            return Scored(r.scores, r.n_tokens, r.n_chunks)
        keys = pair_keys(context, query, documents, prefix=self.key_prefix)
        found: list[PairScore | None]
        if policy.read:
            raws = await self.store.get_many(keys)
            full = decode_all(raws)
            if full is not None:  # every pair cached: no per-pair merge
                scores, tokens, chunks = full
                self._counts["hits"] += len(keys)
                return Scored(scores, tokens, chunks, len(keys), tokens)
            found = self._decode(raws)
        else:
            found = [None] * len(keys)
        # Each distinct missing pair once, by the index of its first occurrence.
        missing: dict[bytes, int] = {}
        for i, pair in enumerate(found):
            if pair is None and keys[i] not in missing:
                missing[keys[i]] = i
        fresh = _Fresh({}, 0)
        if missing:
            async with _until(deadline):
                fresh = await self._score_missing(engine, query, documents, opts, missing, policy, deadline)
        return _merge(keys, found, fresh)

    def _decode(self, raws: list[bytes | None]) -> list[PairScore | None]:
        """One cached pair or ``None`` per key, in order; undecodable values count as misses."""
        found, corrupt = decode_values(raws)
        if corrupt:
            self._corrupt(corrupt)
        hits = len(found) - found.count(None)
        self._counts["hits"] += hits
        self._counts["misses"] += len(raws) - hits
        return found

    def _corrupt(self, n: int) -> None:
        if self._counts["corrupt"] == 0:
            log.warning("%d cached values are not scores; treated as misses (later ones are only counted)", n)
        self._counts["corrupt"] += n

    async def _score_missing(
        self,
        engine: Engine,
        query: str,
        documents: Sequence[str],
        opts: EncodeOptions,
        missing: dict[bytes, int],
        policy: CachePolicy,
        deadline: float | None,
    ) -> _Fresh:
        owned, shared = self._coalescer.claim(missing)
        fresh = _Fresh({}, 0)
        if owned:
            try:
                fresh = await self._run(
                    engine, query, documents, opts, [(k, missing[k]) for k in owned], policy, deadline
                )
            except BaseException:
                self._coalescer.fail(owned)  # waiters score these themselves
                raise
            self._coalescer.resolve(fresh.pairs)
            await self._write(fresh.pairs, policy)
        if not shared:
            return fresh
        # asyncio.wait, not gather: a cancelled waiter must not cancel the owner's futures.
        await asyncio.wait(shared.values())
        retry: list[tuple[bytes, int]] = []
        for key, fut in shared.items():
            if fut.cancelled() or fut.exception() is not None:
                retry.append((key, missing[key]))
            else:
                fresh.pairs[key] = fut.result()
        self._counts["coalesced"] += len(shared) - len(retry)
        if not retry:
            return fresh
        again = await self._run(engine, query, documents, opts, retry, policy, deadline)
        await self._write(again.pairs, policy)
        fresh.pairs.update(again.pairs)
        return _Fresh(fresh.pairs, fresh.extra_tokens + again.extra_tokens)

    async def _run(
        self,
        engine: Engine,
        query: str,
        documents: Sequence[str],
        opts: EncodeOptions,
        todo: list[tuple[bytes, int]],
        policy: CachePolicy,
        deadline: float | None,
    ) -> _Fresh:
        docs = [documents[i] for _, i in todo]
        if self.embeddings is not None and self.embeddings.applies(engine):
            assert isinstance(engine, LocalEngine)
            result = await self.embeddings.score(
                engine, query, docs, opts, read=policy.read, write=policy.write, deadline=deadline
            )
        else:
            result = await engine.score(query, docs, opts, deadline=deadline)
        pairs = _per_document(result)
        self._counts["scored"] += len(pairs)
        extra = result.n_tokens - sum(p.tokens for p in pairs)
        return _Fresh(dict(zip((k for k, _ in todo), pairs, strict=True)), extra)

    async def _write(self, pairs: dict[bytes, PairScore], policy: CachePolicy) -> None:
        assert self.store is not None
        assert self._writer is not None
        if not policy.write:
            self._coalescer.release(pairs)
            return
        items = [(key, encode_value(pair)) for key, pair in pairs.items()]
        if self.store.inline_writes:
            await self.store.set_many(items, self.ttl_s)
            self._coalescer.release(pairs)
        else:
            self._writer.submit(items)


def _per_document(result: ScoreResult) -> list[PairScore]:
    n = len(result.scores)
    if len(result.doc_tokens) == n and len(result.doc_chunks) == n:
        return [
            PairScore(s, t, c)
            for s, t, c in zip(result.scores, result.doc_tokens, result.doc_chunks, strict=True)
        ]
    # An engine that cannot attribute tokens: share them out evenly.
    tokens, chunks = result.n_tokens // max(n, 1), max(1, result.n_chunks // max(n, 1))
    return [PairScore(s, tokens, chunks) for s in result.scores]


def _merge(keys: list[bytes], found: list[PairScore | None], fresh: _Fresh) -> Scored:
    scores: list[float] = []
    n_tokens = fresh.extra_tokens
    n_chunks = hits = cached_tokens = 0
    for key, pair in zip(keys, found, strict=True):
        if pair is not None:
            hits += 1
            cached_tokens += pair.tokens
        else:
            pair = fresh.pairs[key]
        scores.append(pair.score)
        n_tokens += pair.tokens
        n_chunks += pair.chunks
    return Scored(scores, n_tokens, n_chunks, hits, cached_tokens)
