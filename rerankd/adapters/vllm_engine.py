"""The in-process vLLM engine: ``AsyncLLM`` on the server's event loop, fed token ids.

rerankd renders each model's prompt and tokenizes here (the query head once per request), then
hands vLLM one ``TokensPrompt`` per sequence; vLLM batches the sequences of all requests itself.
With prefix caching, the prompt prefix and query head that every pair of a request shares are
computed once. LLM rerankers run on vLLM's pooling runner with a one-row head converted from
the answer tokens (W[yes] - W[no]); cross-encoders and embedding models run as they are.

vLLM is imported only in worker threads: its import and engine start take seconds to minutes,
and the event loop must keep answering ``/health`` meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rerankd.adapters.base import EngineStats, LocalEngine
from rerankd.adapters.formats import (
    Encoded,
    EncodeOptions,
    LLMYesNoFormat,
    ModelFormat,
    PairPromptFormat,
    make_format,
)
from rerankd.adapters.loader import ModelSource
from rerankd.adapters.scheduler import BATCH_SIZE_BOUNDS, BATCH_TOKENS_BOUNDS, QUEUE_WAIT_BOUNDS, Histogram
from rerankd.config import MAX_QUEUE_SEQUENCES, Settings, VLLMOptions
from rerankd.errors import ConfigError, EngineStartError, EngineUnavailable, Overloaded, Timeout
from rerankd.requester import requested_by

__all__ = [
    "SCORING_KV_TOKENS",
    "PoolingPlan",
    "VLLMEngine",
    "VLLMOptions",
    "build",
    "cpu_kv_cache_bytes",
    "prepare",
    "scoring_kv_cache_bytes",
    "start_failure",
    "vllm_cache_tag",
]

log = logging.getLogger(__name__)

#: Sequences handed to vLLM per event-loop iteration (see ``VLLMEngine.infer``).
_SUBMIT_SLICE = 16


class PoolingPlan:
    """How one model runs on vLLM's pooling runner, and how its outputs become rerankd's scores.

    Classification heads are asked for raw logits, whatever activation the model's own config
    names, and reduced as the torch engine's heads do (one label: the logit; two: l1 - l0); the
    format applies the activation, so both engines give the same score for the same model.
    """

    def __init__(self, source: ModelSource, fmt: ModelFormat, options: VLLMOptions) -> None:
        from vllm import PoolingParams  # in a worker thread: see the module docstring

        self._params = PoolingParams
        self.prompt = _token_prompt()
        self.task = "embed" if fmt.kind == "bi-encoder" else "classify"
        kwargs: dict[str, Any] = {
            "model": str(source.path),
            "tokenizer": str(source.path),
            "runner": "pooling",
            "dtype": options.dtype,
            # rerankd truncates every sequence to the format's length: vLLM needs no more room.
            "max_model_len": fmt.max_length,
            "trust_remote_code": source.config.trust_remote_code,
            "tensor_parallel_size": options.tensor_parallel_size,
            "data_parallel_size": options.data_parallel_size,
            "enforce_eager": options.enforce_eager,
            # vLLM's own log lines and its global Prometheus registry stay off; rerankd's stat
            # logger (VLLMStats) still gets every step's figures.
            "disable_log_stats": True,
        }
        for name in ("gpu_memory_utilization", "max_num_seqs", "max_num_batched_tokens", "quantization"):
            if (value := getattr(options, name)) is not None:
                kwargs[name] = value
        # An explicit share, or vLLM's own VLLM_CPU_KVCACHE_SPACE, wins over rerankd's default.
        explicit = options.gpu_memory_utilization is not None or os.environ.get("VLLM_CPU_KVCACHE_SPACE")
        if not explicit and _cpu_build():
            kwargs["kv_cache_memory_bytes"] = cpu_kv_cache_bytes(source, fmt.max_length, options)
        elif not explicit and isinstance(fmt, LLMYesNoFormat):
            # Scoring decodes nothing: a small KV cache (the batch in flight and the cached
            # prefixes) instead of most of the GPU, so one GPU holds several models.
            kwargs["kv_cache_memory_bytes"] = scoring_kv_cache_bytes(source, options, fmt.max_length)
        if isinstance(fmt, LLMYesNoFormat):
            kwargs.update(_answer_head(source, fmt))
            kwargs["enable_prefix_caching"] = options.enable_prefix_caching
        elif not options.enable_prefix_caching:
            # On: vLLM's default, which is on for causal models only (encoders cannot cache prefixes).
            kwargs["enable_prefix_caching"] = False
        self.engine_kwargs = kwargs

    def params(self, type_ids: list[int] | None) -> Any:
        if self.task == "embed":
            return self._params(task="embed")  # L2-normalised, as the bi-encoder format expects
        extra = None
        if type_ids is not None:
            # vLLM's BERT takes segment ids compressed to the position of the first 1.
            extra = {"compressed_token_type_ids": type_ids.index(1) if 1 in type_ids else len(type_ids)}
        return self._params(task="classify", use_activation=False, extra_kwargs=extra)

    def output(self, data: Any) -> Any:
        if self.task == "embed":
            return data.float()
        logits = data.float().tolist()
        # Raw, as the torch engine's heads: the format applies the activation.
        if len(logits) == 1:
            return logits[0]
        if len(logits) == 2:
            return logits[1] - logits[0]
        raise ConfigError(f"the model has {len(logits)} labels; a reranker needs 1 or 2")


def _cpu_build() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


#: vLLM's own default of tokens per engine step, used when max_num_batched_tokens is unset.
_DEFAULT_BATCHED_TOKENS = 8192
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: The smallest KV cache rerankd gives vLLM's CPU build.
MIN_CPU_KV_CACHE_BYTES = 64 * 1024 * 1024


def cpu_kv_cache_bytes(source: ModelSource, max_model_len: int, options: VLLMOptions) -> int:
    """The KV cache of vLLM's CPU build, sized from the model and the batch settings.

    Left alone, the CPU build reserves ``gpu_memory_utilization`` (0.92) of the host's RAM and
    refuses to start when less is free. Scoring needs little of it: a pair is one prefill, whose
    KV entries are dropped when its score is out. So the cache holds twice the tokens of one
    engine step (``max(max_num_batched_tokens, max_model_len)``; room for the next step's prefill
    and the shared query prefixes), at ``2 (K and V) x layers x KV heads x head size x dtype bytes``
    per token, and at least 64 MiB. The weights are loaded besides, as on any host."""
    # "auto" may load as float32 on CPU: count 4 bytes, the larger case.
    per_token = _kv_bytes_per_token(_text_config(source), _DTYPE_BYTES.get(options.dtype, 4))
    step_tokens = max(options.max_num_batched_tokens or _DEFAULT_BATCHED_TOKENS, max_model_len)
    return max(MIN_CPU_KV_CACHE_BYTES, 2 * step_tokens * per_token)


#: Tokens of KV cache an LLM reranker gets by default: several engine steps of vLLM's default
#: batch (16384 tokens) plus room for cached prefixes; scoring never grows a sequence.
SCORING_KV_TOKENS = 65_536
_DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}


def scoring_kv_cache_bytes(source: ModelSource, options: VLLMOptions, max_length: int) -> int:
    """KV cache bytes for ``SCORING_KV_TOKENS`` tokens (and at least a few full-length sequences):
    2 (keys, values) x layers x KV heads x head size x bytes per value, per token."""
    text = _text_config(source)
    dtype = options.dtype if options.dtype != "auto" else str(text.get("torch_dtype") or text.get("dtype"))
    per_token = _kv_bytes_per_token(text, _DTYPE_BYTES.get(dtype, 2))
    return per_token * max(SCORING_KV_TOKENS, 4 * max_length)


def _text_config(source: ModelSource) -> dict[str, Any]:
    """The language model's part of ``config.json`` (multimodal configs nest it)."""
    config: dict[str, Any] = json.loads((source.path / "config.json").read_text())
    text: dict[str, Any] = config.get("text_config") or config
    return text


def _kv_bytes_per_token(text: dict[str, Any], value_bytes: int) -> int:
    """2 (keys, values) x layers x KV heads x head size x bytes per value."""
    heads = int(text.get("num_attention_heads") or 1)
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or int(text.get("hidden_size") or 0) // heads)
    layers = int(text.get("num_hidden_layers") or 1)
    return 2 * layers * kv_heads * head_dim * value_bytes


def _token_prompt() -> Any:
    """vLLM's current form of a pre-tokenized prompt: a rendered token input (``{"type": "token",
    ...}``), which skips vLLM's deprecated raw-prompt path; the plain ``TokensPrompt`` dict on
    vLLM releases that do not have it."""
    try:
        from vllm.inputs import tokens_input
    except ImportError:
        return lambda ids: {"prompt_token_ids": ids}
    return tokens_input


def _answer_head(source: ModelSource, fmt: LLMYesNoFormat) -> dict[str, Any]:
    """vLLM's conversion of a causal LM into a one-logit classifier: W[yes] - W[no]."""
    config = json.loads((source.path / "config.json").read_text())
    archs = [str(a) for a in config.get("architectures") or []]
    if not any(a.endswith("ForCausalLM") for a in archs):
        raise ConfigError(f"model {source.name!r}: vLLM runs LLM rerankers with a *ForCausalLM architecture")
    tokens = [fmt.template.no_token, fmt.template.yes_token]
    if config.get("model_type") == "qwen3":
        # The Qwen3-Reranker recipe of vLLM's docs; softmax([no, yes])[yes] = sigmoid(yes - no).
        return {
            "hf_overrides": {
                "architectures": ["Qwen3ForSequenceClassification"],
                "classifier_from_token": tokens,
                "is_original_qwen3_reranker": True,
            }
        }
    return {
        "convert": "classify",
        "hf_overrides": {"classifier_from_token": tokens, "method": "from_2_way_softmax"},
    }


def prepare(source: ModelSource, options: VLLMOptions) -> tuple[ModelFormat, PoolingPlan]:
    """Tokenizer, format and vLLM plan of a model. Blocking: run it in a thread."""
    from transformers import AutoTokenizer

    if source.format == "remote":
        raise ConfigError(f"model {source.name!r} has no local files for vLLM")
    tokenizer = AutoTokenizer.from_pretrained(source.path, trust_remote_code=source.config.trust_remote_code)
    max_length = min(source.max_length, options.max_model_len or source.max_length)
    fmt = make_format(source.format, tokenizer, max_length)
    if isinstance(fmt, PairPromptFormat):
        raise ConfigError(
            f"model {source.name!r}: format {fmt.kind} runs on the torch engine only (--engine torch)"
        )
    return fmt, PoolingPlan(source, fmt, options)


def start_failure(source: ModelSource, exc: BaseException) -> str:
    """One line for the operator; vLLM logs the root cause of a failed start above it."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"model {source.name!r}: vLLM engine failed to start: {text}"


def vllm_cache_tag(dtype: Any) -> str:
    """Both vLLM engines score alike; the precision vLLM chose (``dtype: auto``) changes scores."""
    return f"vllm:{str(dtype).removeprefix('torch.')}"


@dataclass(eq=False)
class VLLMStats:
    """What vLLM's engine reports after every step, kept under rerankd's names (docs/observability.md).

    Filled by vLLM's output handler on the event loop (through :func:`_stat_logger`) and read there by
    scrapes and by :meth:`VLLMEngine.infer`, so it needs no lock."""

    waiting: int = 0
    running: int = 0
    #: Share of the KV cache's blocks in use, 0 to 1.
    kv_cache_usage: float = 0.0
    #: Prompt tokens looked up in the prefix cache, and those found there.
    prefix_queries: int = 0
    prefix_hits: int = 0
    #: Engine steps that ran prompt tokens, and the tokens they computed (prefix-cache hits not counted).
    batches: int = 0
    computed_tokens: int = 0
    batch_sizes: Histogram = field(default_factory=lambda: Histogram(BATCH_SIZE_BOUNDS))
    batch_tokens: Histogram = field(default_factory=lambda: Histogram(BATCH_TOKENS_BOUNDS))
    #: Per sequence: from its arrival at vLLM to its first step.
    queue_wait: Histogram = field(default_factory=lambda: Histogram(QUEUE_WAIT_BOUNDS))
    #: Per rerankd request id in flight: the shortest queue wait of its sequences so far.
    first_scheduled: dict[str, float] = field(default_factory=dict)

    def record(self, scheduler: Any, iteration: Any) -> None:
        if scheduler is not None:
            self.waiting = scheduler.num_waiting_reqs
            self.running = scheduler.num_running_reqs
            self.kv_cache_usage = scheduler.kv_cache_usage
            self.prefix_queries += scheduler.prefix_cache_stats.queries
            self.prefix_hits += scheduler.prefix_cache_stats.hits
        if iteration is None:
            return
        prompt = iteration.prompt_token_stats
        if prompt.total:
            self.batches += 1
            self.computed_tokens += prompt.computed
            self.batch_tokens.observe(prompt.total)
            if scheduler is not None:
                self.batch_sizes.observe(max(1, scheduler.num_running_reqs))
        for finished in iteration.finished_requests:
            self.queue_wait.observe(finished.queued_time)
            # Sequence ids are "<request>-<index>" (VLLMEngine.infer).
            owner = (finished.request_id or "").rpartition("-")[0]
            if owner in self.first_scheduled:
                self.first_scheduled[owner] = min(self.first_scheduled[owner], finished.queued_time)


def _stat_logger(stats: VLLMStats) -> Callable[..., Any]:
    """A factory of vLLM stat loggers (one per engine core) that feed ``stats``. In a worker
    thread: it imports vLLM."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class Logger(StatLoggerBase):  # type: ignore[misc]
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        def record(
            self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0
        ) -> None:
            stats.record(scheduler_stats, iteration_stats)

        def log_engine_initialized(self) -> None:
            pass

    return Logger


def _async_llm(kwargs: dict[str, Any], stats: VLLMStats) -> Any:
    from vllm import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs), stat_loggers=[_stat_logger(stats)])


class VLLMEngine(LocalEngine):
    """``AsyncLLM``: every sequence is one vLLM request, awaited on the event loop, never blocking it."""

    def __init__(
        self, source: ModelSource, options: VLLMOptions, *, max_in_flight: int = MAX_QUEUE_SEQUENCES
    ) -> None:
        super().__init__(source)
        self.options = options
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._sequences = 0
        self._llm: Any = None
        self._plan: PoolingPlan | None = None
        self._cache_tag = "vllm"
        self.vllm_stats = VLLMStats()

    @property
    def vllm_config(self) -> Any:
        """The configuration vLLM runs with (its ``VllmConfig``), once started."""
        return None if self._llm is None else self._llm.vllm_config

    async def start(self) -> None:
        self.format, plan = await asyncio.to_thread(prepare, self.source, self.options)
        self._plan = plan
        log.info("starting vLLM for %s (%s) from %s", self.source.name, self.source.format, self.source.path)
        try:
            self._llm = await asyncio.to_thread(_async_llm, plan.engine_kwargs, self.vllm_stats)
        except Exception as exc:
            raise EngineStartError(start_failure(self.source, exc)) from exc
        self._cache_tag = vllm_cache_tag(self._llm.model_config.dtype)
        kv_bytes = self._llm.vllm_config.cache_config.kv_cache_memory_bytes
        if kv_bytes is not None:
            log.info("vLLM KV cache of %s: %.0f MiB", self.source.name, kv_bytes / 2**20)
        # Warm-up: starts vLLM's output loop on this event loop and checks the head's shape.
        await self.score("warm-up", ["warm-up document"], EncodeOptions())

    @property
    def healthy(self) -> bool:
        return self._llm is not None and not self._llm.errored

    @property
    def cache_tag(self) -> str:
        return self._cache_tag

    def stats(self) -> dict[str, float]:
        return {**super().stats(), "in_flight": self._in_flight}

    def snapshot(self) -> EngineStats:
        v = self.vllm_stats
        return EngineStats(
            batches=v.batches,
            sequences=self._sequences,
            real_tokens=v.computed_tokens,
            queue_depth=v.waiting,
            running=v.running,
            kv_cache_usage=v.kv_cache_usage,
            prefix_cache_queries=v.prefix_queries,
            prefix_cache_hits=v.prefix_hits,
            batch_size=v.batch_sizes,
            batch_tokens=v.batch_tokens,
            queue_wait=v.queue_wait,
        )

    async def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            await asyncio.to_thread(llm.shutdown)
        await super().close()

    async def infer(self, encoded: Encoded, *, deadline: float | None) -> Sequence[Any]:
        llm, plan = self._llm, self._plan
        if llm is None or plan is None or llm.errored:
            raise EngineUnavailable()
        n = len(encoded.ids)
        if self._in_flight + n > self._max_in_flight:
            raise Overloaded(f"scoring queue is full ({self._in_flight} sequences in flight)")
        self._in_flight += n
        request_id = uuid.uuid4().hex
        types = encoded.type_ids
        tasks: list[asyncio.Future[Any]] = []
        stages = requested_by.get().stages
        first = self.vllm_stats.first_scheduled
        first[request_id] = math.inf
        submitted = time.monotonic()
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            async with asyncio.timeout(timeout):
                for start in range(0, n, _SUBMIT_SLICE):
                    if start:
                        # Adding a vLLM request costs the loop ~0.1 ms; the loop polls sockets only
                        # between iterations, so a large request yields every slice to keep
                        # other clients (and /health) answered.
                        await asyncio.sleep(0)
                    tasks += [
                        asyncio.ensure_future(
                            self._one(
                                llm, plan, f"{request_id}-{i}", encoded.ids[i], types[i] if types else None
                            )
                        )
                        for i in range(start, min(n, start + _SUBMIT_SLICE))
                    ]
                outputs = await asyncio.gather(*tasks)
            if stages is not None:
                # See rerankd.stages. vLLM reports a sequence's queue wait when it finishes: the
                # shortest one is the wait for the first step; unknown yet, the span is all inference.
                span = time.monotonic() - submitted
                queue = first[request_id]
                queue = queue if queue <= span else 0.0
                stages.queue += queue
                stages.inference += span - queue
            return outputs
        except TimeoutError:
            raise Timeout() from None
        except Exception as exc:
            if llm.errored:
                raise EngineUnavailable() from exc
            raise
        finally:
            # After a failure or timeout the others are still running: cancelling them aborts
            # their vLLM requests, so a dropped request never keeps the engine busy.
            for task in tasks:
                task.cancel()
            first.pop(request_id, None)
            self._in_flight -= n
            self._sequences += n

    @staticmethod
    async def _one(
        llm: Any, plan: PoolingPlan, request_id: str, ids: list[int], types: list[int] | None
    ) -> Any:
        final = None
        async for out in llm.encode(plan.prompt(ids), plan.params(types), request_id):
            final = out
        assert final is not None
        return plan.output(final.outputs.data)


def build(source: ModelSource, settings: Settings) -> VLLMEngine:
    """The engine table's entry point (``rerankd.adapters.registry``)."""
    return VLLMEngine(source, VLLMOptions.from_settings(settings), max_in_flight=settings.max_queue_sequences)
