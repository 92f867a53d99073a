"""Prometheus metrics on ``/metrics``.

Request families are updated by :mod:`rerankd.proxy.observe` as requests finish. Everything the
service, its engines and the cache already count is read when Prometheus scrapes (a collector
callback), so the scoring and cache paths carry no metrics code. Labels stay bounded: route
templates, never raw paths; model names only from the served set.

Each app has its own registry, so several apps in one process (tests) never clash.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from litestar import Response, get
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from rerankd.adapters.base import EngineStats
from rerankd.adapters.base import Histogram as StatsHistogram
from rerankd.errors import RateLimited, RerankdError, Unauthorized
from rerankd.proxy.paths import METRICS
from rerankd.service import RerankService
from rerankd.stages import StageTimes

__all__ = ["Metrics", "ServiceCollector", "metrics_endpoint"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: Stages of a cached request take well under a millisecond: finer low buckets than the latency's.
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, *_LATENCY_BUCKETS)
#: The per-request stage histograms, in the order :meth:`Metrics.observe_stages` fills them.
_STAGES: Sequence[tuple[str, str]] = (
    ("rerankd_request_tokenization_seconds", "Per scoring request: time its documents spent being tokenized"),
    ("rerankd_request_queue_seconds", "Per scoring request: from entering the engine to its first batch"),
    ("rerankd_request_inference_seconds", "Per scoring request: from its first batch to its last row scored"),
    (
        "rerankd_request_compute_seconds",
        "Per scoring request: the scoring step (cache, tokenize, queue, infer)",
    ),
)
#: Litestar appends ``; charset=utf-8`` to every text/* media type, and prometheus_client's type
#: names it already: give Litestar the type without it, so the header names it once.
_MEDIA_TYPE = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")


class Metrics:
    """The request-side families, plus a collector that reads the service at scrape time."""

    def __init__(self, service: RerankService) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        labels = ("route", "model", "status")
        self.requests = Counter("rerankd_requests", "HTTP requests answered", labels, registry=r)
        self.latency = Histogram(
            "rerankd_request_duration_seconds",
            "Time from receiving a request to its last response byte",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("rerankd_requests_in_flight", "Requests being answered now", registry=r)
        self.documents = Counter(
            "rerankd_documents", "Documents ranked by successful requests", ("model",), registry=r
        )
        self.tokens = Counter(
            "rerankd_input_tokens",
            "Input tokens of successful requests (scored now or read from the cache)",
            ("model",),
            registry=r,
        )
        self.auth_failures = Counter(
            "rerankd_auth_failures",
            "Requests refused by the key check (invalid_key: 401; key_store_unavailable: 503)",
            ("reason",),
            registry=r,
        )
        for reason in ("invalid_key", "key_store_unavailable"):
            self.auth_failures.labels(reason)  # present at 0 from the start, so rate() works
        self.rate_limited = Counter(
            "rerankd_rate_limited",
            "Requests refused with 429 because their key is over its limit",
            registry=r,
        )
        r.register(ServiceCollector(service))
        #: Per model: one histogram per stage of :data:`_STAGES`, filled on the event loop.
        self.stage_histograms: dict[str, tuple[StatsHistogram, ...]] = {}
        r.register(StageCollector(self.stage_histograms))
        # The standard process_* and python_* families, as every Prometheus client exports them.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._model_children: dict[str, tuple[Any, Any]] = {}

    def request_children(self, labels: tuple[str, str, str]) -> tuple[Any, Any]:
        """The request counter's and latency histogram's series for ``(route, model, status)``.
        Kept: ``labels()`` validates and locks on every call, and every request needs them.
        Bounded, as the labels are (route templates, served models, statuses)."""
        children = self._children.get(labels)
        if children is None:
            children = self._children[labels] = (
                self.requests.labels(*labels),
                self.latency.labels(*labels),
            )
        return children

    def model_children(self, model: str) -> tuple[Any, Any]:
        """The documents and input-token counters' series for a served model."""
        children = self._model_children.get(model)
        if children is None:
            children = self._model_children[model] = (
                self.documents.labels(model),
                self.tokens.labels(model),
            )
        return children

    def refused(self, exc: RerankdError) -> None:
        """Called by the auth middleware when it refuses a request."""
        if isinstance(exc, RateLimited):
            self.rate_limited.inc()
        elif isinstance(exc, Unauthorized):
            self.auth_failures.labels("invalid_key").inc()
        else:
            self.auth_failures.labels("key_store_unavailable").inc()

    def observe_stages(self, model: str, stages: StageTimes) -> None:
        """One scoring request's stage times; one call, a few C calls per stage, so that a cached
        request stays cheap (prometheus_client's ``observe`` takes a lock and several calls)."""
        histograms = self.stage_histograms.get(model)
        if histograms is None:
            histograms = self.stage_histograms[model] = tuple(StatsHistogram(_STAGE_BUCKETS) for _ in _STAGES)
        values = (stages.tokenization, stages.queue, stages.inference, stages.compute)
        for h, v in zip(histograms, values, strict=True):
            h.counts[bisect.bisect_left(h.bounds, v)] += 1
            h.total += v

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class StageCollector(Collector):
    """The per-request stage histograms (:mod:`rerankd.stages`), labelled by served model."""

    def __init__(self, histograms: dict[str, tuple[StatsHistogram, ...]]) -> None:
        self.histograms = histograms

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        families = [HistogramMetricFamily(name, doc, labels=["model"]) for name, doc in _STAGES]
        for model, histograms in list(self.histograms.items()):
            for family, h in zip(families, histograms, strict=True):
                family.add_metric([model], *_buckets(h))
        return families


class ServiceCollector(Collector):
    """Engine, scheduler and cache counters, read from the service when scraped."""

    def __init__(self, service: RerankService) -> None:
        self.service = service

    def describe(self) -> Iterable[Metric]:
        return []  # families depend on the engines loaded; describe nothing so none is fixed early

    def collect(self) -> Iterable[Metric]:
        yield from self._lifecycle()
        # One snapshot per engine and scrape: the engines' and devices' families read the same one.
        snapshots = {name: engine.snapshot() for name, engine in list(self.service.engines.items())}
        yield from self._engines(snapshots)
        yield from self._devices(snapshots)
        yield from self._cache()

    def _lifecycle(self) -> Iterator[Metric]:
        svc = self.service
        yield GaugeMetricFamily("rerankd_ready", "1 when every model is loaded and warm", value=svc.ready)
        healthy = GaugeMetricFamily(
            "rerankd_engine_healthy", "1 while the model's engine runs", labels=["model"]
        )
        # Which engine and precision serve each model (the cache tag: "torch:bfloat16", "vllm:...").
        info = GaugeMetricFamily(
            "rerankd_engine_info", "1 for the engine that serves the model", labels=["model", "engine"]
        )
        for name, engine in list(svc.engines.items()):
            healthy.add_metric([name], float(engine.healthy))
            info.add_metric([name, engine.cache_tag], 1.0)
        yield healthy
        yield info

    def _engines(self, snapshots: Mapping[str, EngineStats]) -> Iterator[Metric]:
        families = {
            key: CounterMetricFamily(name, doc, labels=["model"])
            for key, (name, doc) in _ENGINE_COUNTERS.items()
        }
        tokens = CounterMetricFamily(
            "rerankd_engine_tokens",
            "Tokens run through the model: real, or padded to the batch",
            labels=["model", "kind"],
        )
        depth = GaugeMetricFamily("rerankd_queue_depth", "Sequences waiting to be batched", labels=["model"])
        running = GaugeMetricFamily(
            "rerankd_engine_running_sequences",
            "Sequences in the forward passes running now",
            labels=["model"],
        )
        sizes = HistogramMetricFamily("rerankd_batch_size", "Sequences per forward pass", labels=["model"])
        batch_tokens = HistogramMetricFamily(
            "rerankd_batch_tokens", "Real tokens per forward pass", labels=["model"]
        )
        # Figures only vLLM's engine has: its KV cache and prefix cache (0 for the others).
        vllm_only: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "kv_cache_usage": GaugeMetricFamily(
                "rerankd_kv_cache_usage", "Share of the KV cache in use (0 to 1)", labels=["model"]
            ),
            "prefix_cache_queries": CounterMetricFamily(
                "rerankd_prefix_cache_queries",
                "Prompt tokens looked up in the prefix cache",
                labels=["model"],
            ),
            "prefix_cache_hits": CounterMetricFamily(
                "rerankd_prefix_cache_hits", "Prompt tokens found in the prefix cache", labels=["model"]
            ),
        }
        waits = HistogramMetricFamily(
            "rerankd_queue_wait_seconds",
            "Time a sequence waits before its batch is launched",
            labels=["model"],
        )
        for name, stats in snapshots.items():
            for key, family in families.items():
                if (value := _stat(stats, key)) is not None:
                    family.add_metric([name], value)
            for kind, count in (("real", stats.real_tokens), ("padded", stats.padded_tokens)):
                if count is not None:
                    tokens.add_metric([name, kind], count)
            if stats.queue_depth is not None:
                depth.add_metric([name], stats.queue_depth)
            if stats.running is not None:
                running.add_metric([name], stats.running)
            for key, only in vllm_only.items():
                # 0 for engines with neither cache, so that every engine serves the same names.
                only.add_metric([name], _stat(stats, key) or 0.0)
            for h, histogram in (
                (stats.batch_size, sizes),
                (stats.batch_tokens, batch_tokens),
                (stats.queue_wait, waits),
            ):
                if h is not None:
                    histogram.add_metric([name], *_buckets(h))
        yield from families.values()
        yield from (tokens, depth, running, sizes, batch_tokens, waits)
        yield from vllm_only.values()

    def _devices(self, snapshots: Mapping[str, EngineStats]) -> Iterator[Metric]:
        """Per device replica of each model (the torch engine; several with ``devices``)."""
        labels = ["model", "device"]
        up = GaugeMetricFamily("rerankd_device_up", "1 while the device's replica serves", labels=labels)
        batches = CounterMetricFamily(
            "rerankd_device_batches", "Forward passes run on the device", labels=labels
        )
        tokens = CounterMetricFamily("rerankd_device_tokens", "Real tokens run on the device", labels=labels)
        busy = CounterMetricFamily(
            "rerankd_device_busy_seconds",
            "Wall time with a forward pass in flight on the device; its rate is the busy share",
            labels=labels,
        )
        memory = GaugeMetricFamily(
            "rerankd_device_memory_bytes",
            "Device memory the replica's tensors hold (CUDA only)",
            labels=labels,
        )
        for name, stats in snapshots.items():
            for d in stats.devices:
                key = [name, d.device]
                up.add_metric(key, float(d.up))
                batches.add_metric(key, d.batches)
                tokens.add_metric(key, d.real_tokens)
                busy.add_metric(key, d.busy_seconds)
                if d.memory_bytes is not None:
                    memory.add_metric(key, d.memory_bytes)
        yield from (up, batches, tokens, busy, memory)

    def _cache(self) -> Iterator[Metric]:
        scorer = self.service.scorer
        if scorer.store is None:
            return
        stats = scorer.stats()
        for key, (name, doc) in _CACHE_COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=stats.get(key, 0))
        errors = CounterMetricFamily(
            "rerankd_cache_errors",
            "Cache faults: store errors and timeouts, skipped (circuit open), corrupt values, dropped writes",
            labels=["kind"],
        )
        for kind, key in _CACHE_ERRORS.items():
            errors.add_metric([kind], stats.get(key, 0))
        yield errors
        yield GaugeMetricFamily(
            "rerankd_cache_write_pending",
            "Scored pairs waiting to be written",
            value=stats.get("write_pending", 0),
        )
        if "store_entries" in stats:
            yield GaugeMetricFamily(
                "rerankd_cache_entries", "Pairs in the in-process cache", value=stats["store_entries"]
            )
            yield GaugeMetricFamily(
                "rerankd_cache_bytes", "Bytes held by the in-process cache", value=stats["store_bytes"]
            )


_ENGINE_COUNTERS: Mapping[str, tuple[str, str]] = {
    "batches": ("rerankd_engine_batches", "Forward passes run"),
    "mixed_batches": ("rerankd_engine_mixed_batches", "Forward passes that carried several requests"),
    "sequences": ("rerankd_engine_sequences", "Sequences scored by the model"),
    "busy_seconds": ("rerankd_engine_busy_seconds", "Wall time with a forward pass in flight"),
    "refused": ("rerankd_engine_refused", "Requests refused as they arrived: they could not finish in time"),
    "prefix_batches": ("rerankd_engine_prefix_batches", "Forward passes that computed shared prefixes once"),
    "prefix_saved_tokens": (
        "rerankd_engine_prefix_saved_tokens",
        "Tokens not computed: prefixes shared by several rows of a batch were computed once",
    ),
}

_CACHE_COUNTERS: Mapping[str, tuple[str, str]] = {
    "hits": ("rerankd_cache_hits", "Pairs read from the cache"),
    "misses": ("rerankd_cache_misses", "Pairs looked up and not found"),
    "coalesced": ("rerankd_cache_coalesced", "Missing pairs taken from a concurrent request's scoring"),
}

_CACHE_ERRORS: Mapping[str, str] = {
    "store": "store_faults",
    "skipped": "store_skipped",
    "corrupt": "corrupt",
    "write_dropped": "write_dropped",
}


def _stat(stats: EngineStats, key: str) -> float | None:
    """One of the engine's counters by its field name (the keys of the tables above)."""
    value: float | None = getattr(stats, key)
    return value


def _buckets(h: StatsHistogram) -> tuple[Sequence[tuple[str, float]], float]:
    counts = list(h.counts)  # one snapshot: the worker thread may add to it meanwhile
    cumulative, out = 0, []
    for bound, n in zip([*map(str, h.bounds), "+Inf"], counts, strict=True):
        cumulative += n
        out.append((bound, float(cumulative)))
    return out, h.total


@get(METRICS, summary="Prometheus metrics", include_in_schema=False, sync_to_thread=False)
def metrics_endpoint(metrics: Metrics) -> Response[bytes]:
    return Response(metrics.exposition(), media_type=_MEDIA_TYPE)
