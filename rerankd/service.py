"""The rerank pipeline, independent of any HTTP dialect: model lookup → (cache) → engine → ranking."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rerankd.adapters.base import Engine
from rerankd.adapters.factory import build_engine, resolve_source
from rerankd.adapters.formats import EncodeOptions
from rerankd.adapters.loader import ModelSource, embedded_model
from rerankd.config import Settings
from rerankd.errors import BadRequest, EngineFailure, EngineUnavailable, ModelNotFound, NotReady, RerankdError

__all__ = ["Ranked", "RerankOutcome", "RerankQuery", "RerankService", "search_units"]

log = logging.getLogger(__name__)

EngineFactory = Callable[[ModelSource, Settings], Engine]


@dataclass(frozen=True, slots=True)
class RerankQuery:
    """A request in API-neutral form: documents are already plain text."""

    query: str
    documents: Sequence[str]
    model: str | None = None
    top_n: int | None = None
    options: EncodeOptions = field(default_factory=EncodeOptions)


@dataclass(frozen=True, slots=True)
class Ranked:
    index: int
    score: float


@dataclass(frozen=True, slots=True)
class RerankOutcome:
    model: str
    results: list[Ranked]
    input_tokens: int
    search_units: int


def search_units(n_scored: int) -> int:
    """Cohere's rule: one unit per query of up to 100 documents (chunks of long ones count)."""
    return max(1, math.ceil(n_scored / 100))


class RerankService:
    def __init__(self, settings: Settings, *, engine_factory: EngineFactory = build_engine) -> None:
        self.settings = settings
        configs = settings.models or (embedded_model(),)
        # Resolving is quick (no weights read) and fails fast on a bad path or unknown format.
        self.sources: dict[str, ModelSource] = {c.name: resolve_source(c, settings) for c in configs}
        self.default_model = configs[0].name
        self._factory = engine_factory
        self.engines: dict[str, Engine] = {}
        self._ready = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load and warm every model; ``ready`` turns true only when all are warm."""
        for name, source in self.sources.items():
            started = time.perf_counter()
            engine = self._factory(source, self.settings)
            self.engines[name] = engine
            await engine.start()
            log.info("model %s ready in %.1f s", name, time.perf_counter() - started)
        # What is loaded by now (frameworks, model code) lives as long as the process: take it
        # out of the collector's reach, or every full collection walks it (~1 s with vLLM
        # loaded) while the event loop stands still.
        gc.collect()
        gc.freeze()
        self._ready.set()

    async def close(self) -> None:
        for engine in self.engines.values():
            await engine.close()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and all(e.healthy for e in self.engines.values())

    # -- requests ----------------------------------------------------------------------------

    def resolve(self, name: str | None) -> str:
        """A served model name from what the client sent (``None``: the default model)."""
        if name is None or name == "":
            return self.default_model
        name = self.settings.aliases.get(name, name)
        if name not in self.sources:
            served = ", ".join(sorted([*self.sources, *self.settings.aliases]))
            raise ModelNotFound(f"model {name!r} is not served here; served models: {served}")
        return name

    def _check(self, q: RerankQuery) -> None:
        if not q.query.strip():
            raise BadRequest("query must not be empty")
        if not q.documents:
            raise BadRequest("list of documents must not be empty")
        if len(q.documents) > self.settings.max_documents:
            raise BadRequest(
                f"too many documents: {len(q.documents)}; at most {self.settings.max_documents} per request"
            )

    async def rerank(self, q: RerankQuery, *, request_id: str = "-") -> RerankOutcome:
        name = self.resolve(q.model)
        self._check(q)
        if not self._ready.is_set():
            raise NotReady()
        engine = self.engines[name]
        if not engine.healthy:
            raise EngineUnavailable()
        deadline = time.monotonic() + self.settings.request_timeout_s
        try:
            result = await engine.score(q.query, q.documents, q.options, deadline=deadline)
        except RerankdError:
            raise
        except Exception as exc:
            log.exception("request %s: engine %s failed", request_id, name)
            raise EngineFailure() from exc
        order = sorted(range(len(result.scores)), key=lambda i: (-result.scores[i], i))
        top_n = len(order) if not q.top_n else min(q.top_n, len(order))
        return RerankOutcome(
            model=name,
            results=[Ranked(i, result.scores[i]) for i in order[:top_n]],
            input_tokens=result.n_tokens,
            search_units=search_units(result.n_chunks),
        )
