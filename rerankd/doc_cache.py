"""Document embeddings of bi-encoders, cached in the result cache's store.

A bi-encoder's score is the cosine of two embeddings computed apart, and a document's embedding
does not depend on the query. In retrieval pipelines queries change while candidate documents
repeat, so the per-pair cache misses where this one hits: a new query over documents seen before
costs one embedding, the query's. Pairs the pair cache already holds never get here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from rerankd.adapters.base import Engine, LocalEngine, ScoreResult
from rerankd.adapters.formats import BiEncoderFormat, Encoded, EncodeOptions
from rerankd.cache import CacheStore, WriteBehind
from rerankd.cache.embeddings import DocEmbedding, decode_embeddings, embedding_keys, encode_embedding
from rerankd.cache.keys import Context

__all__ = ["DocEmbeddingCache"]

log = logging.getLogger(__name__)


class DocEmbeddingCache:
    def __init__(self, store: CacheStore, *, ttl_s: int, write_queue: int) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._writer = (
            None if store.inline_writes else WriteBehind(store, ttl_s=ttl_s, max_pending=write_queue)
        )
        self.counts = dict.fromkeys(("hits", "misses", "corrupt"), 0)

    def start(self) -> None:
        if self._writer is not None:
            self._writer.start()

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()

    @staticmethod
    def applies(engine: Engine) -> bool:
        """Engines that tokenize here and return embedding rows for a bi-encoder."""
        return isinstance(engine, LocalEngine) and isinstance(
            getattr(engine, "format", None), BiEncoderFormat
        )

    @staticmethod
    def context(engine: LocalEngine, opts: EncodeOptions) -> Context:
        """What besides the text decides a document's embedding (not the query, nor raw scores)."""
        return (
            engine.source.fingerprint,
            engine.cache_tag,
            opts.max_tokens_per_doc,
            opts.max_chunks,
            opts.truncation_side,
        )

    async def score(
        self,
        engine: LocalEngine,
        query: str,
        documents: Sequence[str],
        opts: EncodeOptions,
        *,
        read: bool = True,
        write: bool = True,
        deadline: float | None = None,
    ) -> ScoreResult:
        """Score as ``engine.score`` does, embedding only the query and the documents not cached.
        Tokens are reported as if every document had been embedded now, as for cached pairs."""
        fmt = engine.format
        assert isinstance(fmt, BiEncoderFormat)
        keys = embedding_keys(self.context(engine, opts), documents)
        found: list[DocEmbedding | None] = [None] * len(keys)
        if read:
            found, bad = decode_embeddings(await self.store.get_many(keys))
            self.counts["corrupt"] += bad
        missing: dict[bytes, int] = {}
        for i, emb in enumerate(found):
            if emb is None and keys[i] not in missing:
                missing[keys[i]] = i
        self.counts["hits"] += len(keys) - found.count(None)
        self.counts["misses"] += len(missing)
        if missing:
            encoded = await engine.encode(query, [documents[i] for i in missing.values()], opts)
        else:
            encoded = fmt.encode_query(query)
        query_row, fresh = _split(encoded, await engine.infer(encoded, deadline=deadline), list(missing))
        if write and fresh:
            await self._write(fresh)
        scores: list[float] = []
        doc_tokens: list[int] = []
        doc_chunks: list[int] = []
        for key, emb in zip(keys, found, strict=True):
            emb = emb or fresh[key]
            # The best window wins, before the activation (it is monotonic), as in ModelFormat.combine.
            cosine = max(float((query_row * row).sum()) for row in emb.vectors)
            scores.append(cosine if opts.raw else fmt.activate(cosine))
            doc_tokens.append(emb.tokens)
            doc_chunks.append(len(emb.vectors))
        query_tokens = len(encoded.ids[encoded.owner.index(-1)])
        return ScoreResult(scores, query_tokens + sum(doc_tokens), sum(doc_chunks), doc_tokens, doc_chunks)

    async def _write(self, fresh: dict[bytes, DocEmbedding]) -> None:
        items = [(key, encode_embedding(emb)) for key, emb in fresh.items()]
        if self._writer is None:
            await self.store.set_many(items, self.ttl_s)
        else:
            self._writer.submit(items)


def _split(
    encoded: Encoded, outputs: Sequence[object], keys: list[bytes]
) -> tuple[np.ndarray, dict[bytes, DocEmbedding]]:
    """The query's row, and each embedded document's rows (its windows) with their tokens."""
    query: np.ndarray | None = None
    rows: list[list[np.ndarray]] = [[] for _ in keys]
    tokens = [0] * len(keys)
    for owner, ids, out in zip(encoded.owner, encoded.ids, outputs, strict=True):
        row = np.asarray(out, dtype=np.float32)
        if owner < 0:
            query = row
        else:
            rows[owner].append(row)
            tokens[owner] += len(ids)
    assert query is not None, "a bi-encoder's encoding always holds the query's row"
    return query, {key: DocEmbedding(np.stack(rows[j]), tokens[j]) for j, key in enumerate(keys)}
