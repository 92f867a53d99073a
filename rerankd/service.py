"""The rerank pipeline, independent of any HTTP dialect: model lookup → (cache) → engine → ranking."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from rerankd.adapters.base import Engine
from rerankd.adapters.factory import build_engine, check_engine, resolve_source
from rerankd.adapters.formats import EncodeOptions
from rerankd.adapters.loader import ModelSource, embedded_model, hub_id
from rerankd.cache import build_store
from rerankd.cache.keys import Context
from rerankd.config import ModelConfig, Settings
from rerankd.errors import (
    BadRequest,
    ConfigError,
    EngineFailure,
    EngineUnavailable,
    ModelNotFound,
    NotReady,
    RerankdError,
    ShuttingDown,
    Timeout,
)
from rerankd.redisconn import SharedRedis
from rerankd.requester import Requester, requested_by
from rerankd.scoring import READ_WRITE, CachePolicy, PairScorer, Scored
from rerankd.stages import StageTimes
from rerankd.threads import in_daemon_thread

__all__ = [
    "READ_WRITE",
    "CachePolicy",
    "Capacity",
    "Ranked",
    "RerankOutcome",
    "RerankQuery",
    "RerankService",
    "search_units",
]

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
    #: Cohere's ``priority``: 0 (the default) is served first, 999 last; see rerankd.adapters.scheduler.
    priority: int = 0


class Ranked(msgspec.Struct, frozen=True, gc=False):
    # A struct, not a frozen dataclass: one per document, and a cached request is otherwise cheap
    # (100 frozen dataclasses cost about 40 µs; these, 5). gc=False: two numbers hold no cycles.
    index: int
    score: float


@dataclass(frozen=True, slots=True)
class Capacity:
    """Replicas serving now, over the models that run several (``devices``)."""

    live: int
    total: int
    #: Per model, the devices whose replica is taken out.
    down: dict[str, list[str]]


@dataclass(frozen=True, slots=True)
class RerankOutcome:
    model: str
    results: list[Ranked]
    input_tokens: int
    search_units: int
    #: Pairs served from the cache, and the input tokens they account for.
    cache_hits: int = 0
    cached_tokens: int = 0


def search_units(n_scored: int) -> int:
    """Cohere's rule: one unit per query of up to 100 documents (chunks of long ones count)."""
    return max(1, math.ceil(n_scored / 100))


class RerankService:
    #: Seconds between "still loading" log lines while a model loads and warms up.
    LOAD_PROGRESS_S = 15.0

    def __init__(
        self,
        settings: Settings,
        *,
        engine_factory: EngineFactory = build_engine,
        redis: SharedRedis | None = None,
    ) -> None:
        self.settings = settings
        #: The one Redis client of the process (cache, keys, limits), when Redis is configured;
        #: the service owns it and closes it last.
        self.redis = redis if redis is not None else open_redis(settings)
        configs = settings.models or (embedded_model(),)
        self.configs: dict[str, ModelConfig] = {c.name: c for c in configs}
        check_engine(settings)
        # Resolving a folder is quick (no weights read) and fails fast on a bad path or unknown
        # format. Hub models are resolved in start(), after the port is bound: a download may take
        # minutes, and meanwhile probes get answers (503 on /ready) instead of a closed port.
        self._pending = {c.name for c in configs if settings.engine != "remote" and hub_id(c) is not None}
        self.sources: dict[str, ModelSource] = {
            c.name: resolve_source(c, settings) for c in configs if c.name not in self._pending
        }
        self.default_model = configs[0].name
        self._factory = engine_factory
        self.engines: dict[str, Engine] = {}
        self._ready = asyncio.Event()
        self._draining = False
        #: Requests being scored, so that shutdown can end them with an answer (abort_in_flight).
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._aborting = False
        self.scorer = _build_scorer(settings, self.redis)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load and warm every model; ``ready`` turns true only when all are warm."""
        await self.scorer.open()  # never fails: an unreachable Redis only means no cache for now
        started_all = time.perf_counter()
        for i, (name, cfg) in enumerate(self.configs.items(), 1):
            started = time.perf_counter()
            if name in self._pending:
                n = len(self.configs)
                log.info("fetching model %s (%d of %d) from the hub: %s", name, i, n, cfg.path)
                async with self._progress(name, started):
                    self.sources[name] = await in_daemon_thread(resolve_source, cfg, self.settings)
                self._pending.discard(name)
            source = self.sources[name]
            log.info("loading model %s (%d of %d) from %s", name, i, len(self.configs), source.path)
            async with self._progress(name, started):
                # Building an engine imports its framework (torch: seconds): off the event loop,
                # on a daemon thread so that a stop signal during the import need not wait for it.
                engine = await in_daemon_thread(self._factory, source, self.settings)
                self.engines[name] = engine
                await engine.start()
            log.info("model %s ready in %.1f s", name, time.perf_counter() - started)
        # What is loaded by now (frameworks, model code) lives as long as the process: take it
        # out of the collector's reach, or every full collection walks it (~1 s with vLLM
        # loaded) while the event loop stands still.
        gc.collect()
        gc.freeze()
        self._ready.set()
        log.info(
            "ready: %d model(s) loaded and warm in %.1f s",
            len(self.engines),
            time.perf_counter() - started_all,
        )

    @contextlib.asynccontextmanager
    async def _progress(self, name: str, started: float) -> AsyncIterator[None]:
        """Log now and then while a long load runs, so a slow start is not mistaken for a hang."""

        async def report() -> None:
            while True:
                await asyncio.sleep(self.LOAD_PROGRESS_S)
                log.info("still loading model %s: %.0f s so far", name, time.perf_counter() - started)

        task = asyncio.create_task(report(), name=f"rerankd-load-progress-{name}")
        try:
            yield
        finally:
            task.cancel()

    def drain(self) -> None:
        """Shutdown has begun: ``ready`` turns false so no new traffic is routed here, while
        requests in flight still finish."""
        self._draining = True

    def abort_in_flight(self) -> int:
        """End every request still being scored with :class:`ShuttingDown` (503, Retry-After), so
        its client gets an answer it can retry elsewhere instead of a cut connection. Returns how
        many there were."""
        self._aborting = True
        for task in self._in_flight:
            task.cancel()
        return len(self._in_flight)

    async def close(self) -> None:
        self._draining = True
        for engine in self.engines.values():
            await engine.close()
        await self.scorer.close()
        if self.redis is not None:
            await self.redis.close()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and not self._draining and all(e.healthy for e in self.engines.values())

    def capacity(self) -> Capacity | None:
        """Live and total replicas of the models served on several devices; None when there is
        none (one replica per model: healthy or not is all there is to say)."""
        live = total = 0
        down: dict[str, list[str]] = {}
        for name, engine in list(self.engines.items()):
            devices = engine.devices()
            if len(devices) < 2:
                continue
            total += len(devices)
            live += sum(d.up for d in devices)
            if lost := [d.device for d in devices if not d.up]:
                down[name] = lost
        return Capacity(live, total, down) if total else None

    # -- requests ----------------------------------------------------------------------------

    def resolve(self, name: str | None) -> str:
        """A served model name from what the client sent (``None``: the default model)."""
        if name is None or name == "":
            return self.default_model
        name = self.settings.aliases.get(name, name)
        if name not in self.configs:
            served = ", ".join(sorted([*self.configs, *self.settings.aliases]))
            raise ModelNotFound(f"model {name!r} is not served here; served models: {served}")
        return name

    def source(self, name: str) -> ModelSource:
        """A served model's files and format; :class:`NotReady` while it is still being fetched."""
        source = self.sources.get(name)
        if source is None:
            raise NotReady(f"model {name!r} is still being downloaded")
        return source

    def _check(self, q: RerankQuery) -> None:
        if not q.query.strip():
            raise BadRequest("query must not be empty")
        if len(q.query) > self.settings.max_query_chars:
            raise BadRequest(
                f"query too long: {len(q.query)} characters; at most {self.settings.max_query_chars}"
            )
        if not q.documents:
            raise BadRequest("list of documents must not be empty")
        if len(q.documents) > self.settings.max_documents:
            raise BadRequest(
                f"too many documents: {len(q.documents)}; at most {self.settings.max_documents} per request"
            )

    def cache_context(self, name: str, q: RerankQuery) -> Context:
        """Everything besides the texts that changes a pair's score: part of its cache key."""
        source, opts = self.sources[name], q.options
        instruction = opts.instruction or source.config.instruction or None
        return (
            source.fingerprint,
            self.engines[name].cache_tag,
            instruction,
            opts.max_tokens_per_doc,
            opts.max_chunks,
            # Raw and activated scores of a pair differ, as do its two truncations.
            "raw" if opts.raw else "activated",
            opts.truncation_side,
        )

    async def rerank(
        self,
        q: RerankQuery,
        *,
        request_id: str = "-",
        cache: CachePolicy = READ_WRITE,
        tenant: str = "",
        stages: StageTimes | None = None,
    ) -> RerankOutcome:
        """Rank ``q``'s documents. ``tenant`` (API key name, or client address) is who the work is
        for: the scheduler shares the engine fairly between tenants. ``stages``, when given, gets
        the time of each scoring stage added to it (:mod:`rerankd.stages`).

        One deadline (``request_timeout_s``) bounds the whole request, tokenizing, queueing and
        scoring: when it passes, the work stops and :class:`Timeout` answers."""
        name = self.resolve(q.model)
        self._check(q)
        if not self._ready.is_set():
            raise NotReady()
        engine = self.engines[name]
        if not engine.healthy:
            raise EngineUnavailable()
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        token = requested_by.set(Requester(tenant, q.priority, stages))
        timeout = self.settings.request_timeout_s
        try:
            # The scorer holds the deadline over what can wait (the engine, coalesced pairs): a
            # fully cached request pays for no timer.
            started = time.perf_counter()
            result = await self._score(name, engine, q, request_id, cache, time.monotonic() + timeout)
            if stages is not None:
                stages.compute += time.perf_counter() - started
        except Timeout:
            raise Timeout(f"the request did not finish within {timeout:g} s (request_timeout_s)") from None
        except asyncio.CancelledError:
            if not self._aborting:
                raise
            task.uncancel()
            raise ShuttingDown() from None
        finally:
            requested_by.reset(token)
            self._in_flight.discard(task)
        scores = result.scores
        # Best first; a stable sort keeps equal scores in request order, also when reversed.
        order = sorted(range(len(scores)), key=scores.__getitem__, reverse=True)
        top_n = len(order) if not q.top_n else min(q.top_n, len(order))
        return RerankOutcome(
            model=name,
            results=[Ranked(i, scores[i]) for i in order[:top_n]],
            input_tokens=result.n_tokens,
            search_units=search_units(result.n_chunks),
            cache_hits=result.hits,
            cached_tokens=result.cached_tokens,
        )

    async def _score(
        self, name: str, engine: Engine, q: RerankQuery, request_id: str, cache: CachePolicy, deadline: float
    ) -> Scored:
        default_instruction = self.sources[name].config.instruction
        if default_instruction and not q.options.instruction:
            # The model's configured instruction stands in for the card's when a request sends none.
            q = dataclasses.replace(
                q, options=dataclasses.replace(q.options, instruction=default_instruction)
            )
        try:
            return await self.scorer.score(
                engine,
                q.query,
                q.documents,
                q.options,
                context=self.cache_context(name, q),
                policy=cache,
                deadline=deadline,
            )
        except RerankdError:
            raise
        except Exception as exc:
            log.exception("request %s: engine %s failed", request_id, name)
            raise EngineFailure() from exc


def open_redis(settings: Settings) -> SharedRedis | None:
    """The process's Redis client when ``redis_url`` is set (no connection is made yet)."""
    if settings.redis_url is None:
        return None
    try:
        return SharedRedis(settings.redis_url, prefix=settings.redis_prefix)
    except ValueError as exc:  # the URL or one of its options is not one redis-py takes
        raise ConfigError(f"invalid redis_url: {exc}") from exc


def _build_scorer(settings: Settings, redis: SharedRedis | None) -> PairScorer:
    if not settings.cache:
        return PairScorer(None, ttl_s=settings.cache_ttl_s, write_queue=settings.cache_write_queue)
    store = build_store(
        redis,
        timeout_s=settings.cache_timeout_ms / 1000,
        max_entries=settings.cache_max_entries,
        max_bytes=settings.cache_max_bytes,
    )
    return PairScorer(
        store,
        ttl_s=settings.cache_ttl_s,
        write_queue=settings.cache_write_queue,
        key_prefix=settings.redis_prefix,
    )
