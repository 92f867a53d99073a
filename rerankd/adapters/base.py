"""The narrow engine interface: score documents against a query, report health, close."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rerankd.adapters.formats import Encoded, EncodeOptions, ModelFormat
from rerankd.adapters.loader import ModelSource
from rerankd.adapters.scheduler import DeviceStats, Finish, Histogram, Replica, Scheduler
from rerankd.requester import requested_by
from rerankd.threads import in_daemon_thread

__all__ = [
    "TOKENIZE_CHUNK",
    "BatchedEngine",
    "DeviceStats",
    "Engine",
    "EngineStats",
    "Histogram",
    "LocalEngine",
    "ScoreResult",
    "scheduler_stats",
]

#: Documents per tokenization task.
TOKENIZE_CHUNK = 64


@dataclass(frozen=True, slots=True)
class ScoreResult:
    scores: list[float]
    #: Tokens actually fed to the model (after truncation and chunking).
    n_tokens: int
    #: Scored sequences that belong to documents (chunks count separately).
    n_chunks: int
    #: Per document: tokens and sequences it cost (the cache stores them with its score).
    #: Empty when an engine cannot tell; the query's own sequences are in ``n_tokens`` only.
    doc_tokens: Sequence[int] = ()
    doc_chunks: Sequence[int] = ()


@dataclass(frozen=True, slots=True)
class EngineStats:
    """What an engine has counted, as a metrics scrape reads it (docs/observability.md). None:
    the engine does not measure it, and its series is left out for that model. The KV- and
    prefix-cache figures only vLLM has are 0 elsewhere, so that every engine serves those names."""

    batches: float | None = None
    #: Forward passes that carried rows of more than one request.
    mixed_batches: float | None = None
    sequences: float | None = None
    busy_seconds: float | None = None
    #: Requests refused as they arrived: they could not finish in time.
    refused: float | None = None
    #: The torch engine's shared-prefix passes and the tokens they did not compute.
    prefix_batches: float | None = None
    prefix_saved_tokens: float | None = None
    real_tokens: float | None = None
    padded_tokens: float | None = None
    #: Sequences waiting to be batched, and in the forward passes running now.
    queue_depth: float | None = None
    running: float | None = None
    kv_cache_usage: float = 0.0
    prefix_cache_queries: float = 0.0
    prefix_cache_hits: float = 0.0
    #: Sequences and real tokens per forward pass; per sequence, its wait before its batch.
    batch_size: Histogram | None = None
    batch_tokens: Histogram | None = None
    queue_wait: Histogram | None = None
    #: Per device replica; empty where the engine has none.
    devices: Sequence[DeviceStats] = ()

    def counters(self) -> dict[str, float]:
        """The plain figures by name (what :meth:`Engine.stats` returns): no histograms, no
        devices, nothing the engine does not measure."""
        return {
            f.name: value
            for f in dataclasses.fields(self)
            if isinstance(value := getattr(self, f.name), float | int)
        }


def scheduler_stats(scheduler: Scheduler, devices: Sequence[DeviceStats] = ()) -> EngineStats:
    """The stats of an engine that batches through the scheduler."""
    s = scheduler.stats
    return EngineStats(
        batches=s.batches,
        mixed_batches=s.mixed_batches,
        sequences=s.sequences,
        busy_seconds=s.busy_s,
        refused=s.refused,
        # Every batching engine serves the shared-prefix counters: 0 where prefixes are not shared.
        prefix_batches=0.0,
        prefix_saved_tokens=0.0,
        real_tokens=s.real_tokens,
        padded_tokens=s.padded_tokens,
        queue_depth=scheduler.queue_depth,
        running=s.running,
        batch_size=s.batch_sizes,
        batch_tokens=s.batch_tokens,
        queue_wait=s.queue_wait,
        devices=devices,
    )


class Engine(ABC):
    """One loaded model. ``start`` loads and warms it; ``score`` may be called concurrently."""

    def __init__(self, source: ModelSource) -> None:
        self.source = source

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def score(
        self, query: str, documents: Sequence[str], opts: EncodeOptions, *, deadline: float | None = None
    ) -> ScoreResult: ...

    @property
    @abstractmethod
    def healthy(self) -> bool: ...

    @abstractmethod
    async def close(self) -> None: ...

    def stats(self) -> dict[str, float]:
        """The engine's counters by name, for tests and benchmarks; metrics read :meth:`snapshot`."""
        return self.snapshot().counters()

    def snapshot(self) -> EngineStats:
        """What the engine has counted, read at scrape time."""
        return EngineStats(devices=self.devices())

    def devices(self) -> Sequence[DeviceStats]:
        """Per device replica: counters and whether it serves; empty where the engine has none."""
        return ()

    @property
    def cache_tag(self) -> str:
        """Whatever besides the model changes this engine's scores (e.g. its precision); part of
        every cache key, so replicas that would score a pair differently never share it."""
        return type(self).__name__


class LocalEngine(Engine):
    """An engine that tokenizes here and runs token ids: the format does the model-specific work."""

    format: ModelFormat

    def __init__(self, source: ModelSource, *, tokenizer_threads: int = 2) -> None:
        super().__init__(source)
        # Fast tokenizers release the GIL in batch encoding: a small pool keeps it off the loop.
        self._tokenize_pool = ThreadPoolExecutor(tokenizer_threads, thread_name_prefix="rerankd-tokenize")

    @abstractmethod
    async def infer(self, encoded: Encoded, *, deadline: float | None) -> Sequence[Any]: ...

    async def encode(self, query: str, documents: Sequence[str], opts: EncodeOptions) -> Encoded:
        """Tokenize in chunks of documents, each one task of the pool: a request cancelled (client
        gone, deadline passed) stops after the chunk in hand, and other requests' chunks get the
        pool's threads in between, so one large request cannot hold tokenization for the rest."""
        loop = asyncio.get_running_loop()
        parts = []
        for start in range(0, len(documents), TOKENIZE_CHUNK):
            chunk = documents[start : start + TOKENIZE_CHUNK]
            parts.append(await loop.run_in_executor(self._tokenize_pool, self._encode, query, chunk, opts))
        return parts[0] if len(parts) == 1 else Encoded.concat(parts)

    def _encode(self, query: str, documents: Sequence[str], opts: EncodeOptions) -> Encoded:
        return self.format.encode(query, self.format.bound_texts(documents, opts), opts)

    async def score(
        self, query: str, documents: Sequence[str], opts: EncodeOptions, *, deadline: float | None = None
    ) -> ScoreResult:
        started = time.perf_counter()
        encoded = await self.encode(query, documents, opts)
        stages = requested_by.get().stages
        if stages is not None:
            stages.tokenization += time.perf_counter() - started
        outputs = await self.infer(encoded, deadline=deadline)
        tokens = [0] * encoded.n_documents
        chunks = [0] * encoded.n_documents
        for owner, ids in zip(encoded.owner, encoded.ids, strict=True):
            if owner >= 0:
                tokens[owner] += len(ids)
                chunks[owner] += 1
        scores = self.format.combine(encoded, outputs, raw=opts.raw)
        return ScoreResult(scores, encoded.n_tokens, encoded.n_chunks, tokens, chunks)

    async def close(self) -> None:
        self._tokenize_pool.shutdown(wait=False, cancel_futures=True)


class BatchedEngine(LocalEngine):
    """A local engine whose forward pass blocks: the scheduler's one worker thread batches the
    sequences of every request and runs them. A backend loads its model (``load``) and turns one
    batch of token ids into raw outputs (``run_batch``: logits, or embedding rows); the format
    turns those into scores, the same way for every backend."""

    def __init__(
        self,
        source: ModelSource,
        *,
        max_batch_tokens: int,
        max_batch_size: int,
        max_queue: int,
        overlap: bool,
        replicas: Sequence[Replica] = (),
    ) -> None:
        """``replicas``: the model's copies, one per device, each with its own worker thread;
        none: one, running :meth:`run_batch`."""
        super().__init__(source)
        self.scheduler = Scheduler(
            list(replicas) or self.run_batch,
            max_batch_tokens=max_batch_tokens,
            max_batch_size=max_batch_size,
            max_queue=max_queue,
            name=source.name,
            overlap=overlap,
        )

    @abstractmethod
    def load(self) -> None:
        """Load tokenizer, format and model; runs once, on a thread of its own."""

    @abstractmethod
    def run_batch(self, ids: list[list[int]], type_ids: list[list[int]] | None) -> Finish:
        """Launch one batch; the returned function waits for its raw outputs, one per row."""

    async def start(self) -> None:
        await in_daemon_thread(self.load)  # a stop signal while loading need not wait for it
        self.scheduler.start()
        # Warm-up: the first forward pass allocates (and on CUDA picks kernels); pay it now.
        await self.score("warm-up", ["warm-up document"], EncodeOptions())

    async def infer(self, encoded: Encoded, *, deadline: float | None) -> Sequence[Any]:
        return await self.scheduler.submit(encoded.ids, encoded.type_ids, deadline=deadline)

    def forward(self, ids: list[list[int]], type_ids: list[list[int]] | None = None) -> list[Any]:
        """One forward pass on the calling thread, bypassing the scheduler: the baseline servers
        in ``bench/`` score each request this way so they run exactly rerankd's model code."""
        return list(self.run_batch(ids, type_ids)())

    @property
    def healthy(self) -> bool:
        return self.scheduler.alive

    def stats(self) -> dict[str, float]:
        # The measured rate too: admission and ranking use it, and benchmarks report it.
        return {**super().stats(), "tokens_per_second": self.scheduler.stats.tokens_per_s}

    def snapshot(self) -> EngineStats:
        return scheduler_stats(self.scheduler, self.devices())

    def devices(self) -> Sequence[DeviceStats]:
        return self.scheduler.devices()

    async def close(self) -> None:
        await self.scheduler.close()
        await super().close()
