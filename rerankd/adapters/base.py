"""The narrow engine interface: score documents against a query, report health, close."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rerankd.adapters.formats import Encoded, EncodeOptions, ModelFormat
from rerankd.adapters.loader import ModelSource

__all__ = ["Engine", "LocalEngine", "ScoreResult"]


@dataclass(frozen=True, slots=True)
class ScoreResult:
    scores: list[float]
    #: Tokens actually fed to the model (after truncation and chunking).
    n_tokens: int
    #: Scored sequences that belong to documents (chunks count separately).
    n_chunks: int


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
        return {}


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
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tokenize_pool, self.format.encode, query, documents, opts)

    async def score(
        self, query: str, documents: Sequence[str], opts: EncodeOptions, *, deadline: float | None = None
    ) -> ScoreResult:
        encoded = await self.encode(query, documents, opts)
        outputs = await self.infer(encoded, deadline=deadline)
        return ScoreResult(self.format.combine(encoded, outputs), encoded.n_tokens, encoded.n_chunks)

    async def close(self) -> None:
        self._tokenize_pool.shutdown(wait=False, cancel_futures=True)
