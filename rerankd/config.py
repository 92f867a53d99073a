"""Settings: one frozen msgspec object, filled from defaults < config file < ``RERANKD_*`` env < flags.

Nothing here reads the environment at import time; :func:`load_settings` does it when asked.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from rerankd.adapters.registry import AUTO, engine_names
from rerankd.errors import ConfigError

__all__ = [
    "BATCH_TOKENS_CPU",
    "BATCH_TOKENS_GPU",
    "ENV_PREFIX",
    "MAX_BATCH_SIZE",
    "MAX_QUEUE_SEQUENCES",
    "ModelConfig",
    "Settings",
    "load_settings",
    "parse_model_spec",
    "split_csv",
]

ENV_PREFIX = "RERANKD_"

Format = Literal[
    "auto", "llm-yes-no", "cross-encoder", "bi-encoder", "mxbai-rerank-v2", "bge-reranker-v2-gemma"
]
#: Batching defaults, here once for the settings and for engines built without them (tests, bench).
MAX_BATCH_SIZE = 256
MAX_QUEUE_SEQUENCES = 100_000
#: Padded tokens per forward pass when ``max_batch_tokens`` is unset. A GPU needs large batches to
#: be busy; on a CPU throughput hardly grows past a few thousand tokens while every batch is time
#: that a request arriving meanwhile waits, so batches there are kept short.
BATCH_TOKENS_GPU = 16_384
BATCH_TOKENS_CPU = 1_024

PositiveInt = Annotated[int, Meta(ge=1)]
PositiveFloat = Annotated[float, Meta(gt=0)]


class ModelConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One served model."""

    name: Annotated[str, Meta(min_length=1, pattern=r"^[^\s,=]+$")]
    #: A local folder or a hub id (``Qwen/Qwen3-Reranker-0.6B``); hub ids are downloaded once.
    path: Annotated[str, Meta(min_length=1)]
    format: Format = "auto"
    revision: str | None = None
    #: The instruction used when a request gives none (LLM rerankers only).
    instruction: str | None = None
    #: Tokens per scored sequence; longer inputs are truncated. Default: the model's own limit.
    max_length: PositiveInt | None = None
    trust_remote_code: bool = False


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Every option of ``rerankd serve``. Each is also ``RERANKD_<NAME>`` and a config-file key."""

    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8080
    #: Served models; empty means the embedded all-MiniLM-L6-v2.
    models: tuple[ModelConfig, ...] = ()
    #: Extra names clients may send, mapped to served model names.
    aliases: dict[str, str] = msgspec.field(default_factory=dict)
    #: ``auto`` or a name of the engine table (``rerankd.adapters.registry``).
    engine: str = AUTO
    device: Annotated[str, Meta(pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    #: Intra-op threads of the torch engine; default: torch's own choice.
    torch_threads: PositiveInt | None = None
    #: torch.compile the model (GPU: about 2x throughput after a slower start).
    compile: bool = False
    max_documents: PositiveInt = 10_000
    max_body_bytes: PositiveInt = 32 * 1024 * 1024
    #: Padded tokens per forward pass (batch rows x longest row); default: BATCH_TOKENS_GPU on
    #: GPU, BATCH_TOKENS_CPU on CPU.
    max_batch_tokens: PositiveInt | None = None
    max_batch_size: PositiveInt = MAX_BATCH_SIZE
    #: Sequences waiting to be scored across all requests; beyond it requests get 503. A bound on
    #: memory: before it is reached, requests that could not finish within request_timeout_s at the
    #: measured rate are refused (503 + Retry-After) as they arrive.
    max_queue_sequences: PositiveInt = MAX_QUEUE_SEQUENCES
    #: Seconds one request may take in all (tokenizing, queueing, scoring); then it answers 503.
    request_timeout_s: PositiveFloat = 30.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # -- per-pair result cache (docs/cache.md) --
    #: Cache every scored (query, document) pair; false: no cache reads, writes or coalescing.
    cache: bool = True
    #: A shared cache: redis://, rediss:// (TLS) or unix:// URL, redis+sentinel://h:p,h:p/MASTER or
    #: redis+cluster://h:p,h:p (rediss+ for TLS). Unset: an in-process LRU.
    redis_url: (
        Annotated[str, Meta(pattern=r"^(redis|rediss|unix|rediss?\+sentinel|rediss?\+cluster)://.")] | None
    ) = None
    cache_ttl_s: PositiveInt = 7 * 24 * 3600
    #: Time budget of one cache read; beyond it the request is scored uncached.
    cache_timeout_ms: PositiveFloat = 50.0
    #: Bounds of the in-process LRU (used when no redis_url is set).
    cache_max_entries: PositiveInt = 1_000_000
    cache_max_bytes: PositiveInt = 256 * 1024 * 1024
    #: Scored pairs waiting to be written to Redis; beyond it writes are dropped (and counted).
    cache_write_queue: PositiveInt = 100_000
    # -- API keys and limits (docs/auth.md) --
    #: ``auto``: keys are required once any key is on record, and a server bound beyond loopback with
    #: none refuses to start; ``on``: always required; ``off`` (``--no-auth``): never.
    auth: Literal["auto", "on", "off"] = "auto"
    #: JSON keys file (e.g. a mounted Kubernetes Secret); when unset, keys live in Redis if configured.
    keys_file: str | None = None
    #: Whether /metrics needs a key like the scoring routes.
    metrics_auth: bool = False
    #: Static API keys (``--api-key``, ``RERANKD_API_KEY[S]``), kept only as digests once the server
    #: starts; an alternative to a keys file or Redis for one or a few keys.
    api_keys: tuple[
        Annotated[str, Meta(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9\-._~+/]+=*$")], ...
    ] = ()
    max_query_chars: PositiveInt = 32_768
    #: Unknown request fields are refused with 422 instead of ignored with a warning.
    strict: bool = False
    # -- observability and lifecycle (docs/observability.md) --
    #: ``auto``: JSON lines when stderr is not a terminal, readable text when it is.
    log_format: Literal["auto", "json", "text"] = "auto"
    #: Seconds a SIGTERM waits for requests in flight before it cancels them and exits.
    shutdown_grace_s: Annotated[int, Meta(ge=0)] = 30
    #: Export OpenTelemetry traces (OTLP; endpoint from the standard ``OTEL_*`` env); needs the
    #: ``otel`` extra installed.
    otel: bool = False

    # -- vLLM and remote engines (docs/engines.md) -------------------------------------------
    #: Base URLs that ``engine: remote`` forwards scoring to; tried in turn when one fails.
    upstreams: tuple[Annotated[str, Meta(pattern=r"^https?://[^\s,]+$")], ...] = ()
    #: The upstream API: ``cohere`` (POST /v2/rerank), ``vllm-rerank`` (/rerank), ``vllm-score`` (/score).
    upstream_kind: Literal["cohere", "vllm-rerank", "vllm-score"] = "cohere"
    #: Sent as ``Authorization: Bearer <key>`` to every upstream.
    upstream_api_key: str | None = None
    #: Per attempt; a request's own deadline (request_timeout_s) caps all attempts together.
    upstream_timeout_s: PositiveFloat = 60.0
    upstream_max_connections: PositiveInt = 100
    # vLLM engine options, named as vLLM names them; None leaves vLLM's default.
    #: On GPU the fraction of GPU memory vLLM takes; on CPU builds, of host memory.
    gpu_memory_utilization: Annotated[float, Meta(gt=0, le=1)] | None = None
    max_model_len: PositiveInt | None = None
    max_num_seqs: PositiveInt | None = None
    max_num_batched_tokens: PositiveInt | None = None
    tensor_parallel_size: PositiveInt = 1
    data_parallel_size: PositiveInt = 1
    quantization: str | None = None
    enforce_eager: bool = False
    #: The query prefix every pair of a request shares is computed once (causal models only).
    enable_prefix_caching: bool = True
    #: Model formats by served model name, for models whose config.json does not tell
    #: (``--model-format NAME=FORMAT``); a model's own ``format`` in a settings file does the same.
    model_formats: dict[str, Format] = msgspec.field(default_factory=dict)
    # -- hub models (docs/deploy.md) --
    #: Where hub models are downloaded and looked up (``rerankd download --cache-dir``); default:
    #: huggingface_hub's cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``).
    model_cache_dir: str | None = None

    # -- torch engine: shared prefixes, compile cache (docs/engines.md) ------------------------
    #: LLM rerankers: a prefix common to adjacent rows of a batch (prompt, instruction, query) is
    #: computed once and every row attends to its keys/values; false: every row is run whole.
    #: Unset: on for CPU devices, off for CUDA, as measured (docs/benchmarks.md: on an H200 the
    #: second pass cannot take the flash-attention kernel and the saving is lost; on CPU it pays).
    shared_prefix: bool | None = None
    #: Where ``--compile`` keeps its artifacts between starts, one folder per model fingerprint,
    #: torch version, device name, dtype and batch shape; default: ``compile-cache`` beside the
    #: model's folder where writable, else ``~/.cache/rerankd/compile``.
    compile_cache_dir: str | None = None

    # -- several devices (docs/engines.md#several-devices) ------------------------------------
    #: One torch-engine replica per device behind the one scheduler: ``cuda:0,cuda:1``, ``all``
    #: (every CUDA device), or CPU replicas (``cpu,cpu`` or ``cpu:0,cpu:1``) that split the
    #: intra-op threads. Empty: the one ``device``.
    devices: tuple[Annotated[str, Meta(pattern=r"^(all|cpu(:\d+)?|cuda(:\d+)?)$")], ...] = ()
    #: For testing fail-over only: the replicas (indexes into ``devices``) whose forward pass
    #: raises once they have run ``fault_after_batches`` batches. A CPU forward pass cannot be
    #: made to fail from outside the way a GPU's can (device error, out of memory), so the tests
    #: need this to take a replica down for real.
    fault_devices: tuple[Annotated[int, Meta(ge=0)], ...] = ()
    fault_after_batches: Annotated[int, Meta(ge=0)] = 0

    # -- Redis deployments (docs/deploy.md) --------------------------------------------------
    #: Starts every name rerankd keeps in Redis (cached pairs, key records, limits, usage), so that
    #: deployments can share one Redis without sharing entries. No braces: they would make a
    #: Redis Cluster hash tag of it and put every key in one slot.
    redis_prefix: Annotated[str, Meta(max_length=64, pattern=r"^[^{}\s]*$")] = "rerankd:"

    #: ``int8``: the onnx engine's dynamic quantization of the exported model (weights int8).
    #: ``fp8``: the torch engine's FP8 projections on CUDA GPUs of compute capability 8.9 or later
    #: (weights per channel, activations per token; docs/engines.md#fp8).
    quantize: Literal["none", "int8", "fp8"] = "none"

    # -- ONNX Runtime engine (docs/engines.md#onnx) ------------------------------------------
    #: Where exported models are kept, one file per model fingerprint, exporter and quantization.
    #: Default: ``$XDG_CACHE_HOME/rerankd/onnx`` (``~/.cache/rerankd/onnx``).
    onnx_cache_dir: str | None = None
    #: Intra-op threads of the onnx engine (and of the torch engine when torch_threads is unset);
    #: default: the cores this process may run on.
    threads: PositiveInt | None = None

    def __post_init__(self) -> None:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique, repeated: {', '.join(dupes)}")
        for alias, target in self.aliases.items():
            if self.models and target not in names:
                raise ValueError(f"alias {alias!r} points to {target!r}, which is not a served model")
        for model in self.model_formats:
            if self.models and model not in names:
                raise ValueError(f"model_formats names {model!r}, which is not a served model")
        if self.api_keys and self.keys_file:
            raise ValueError("give static keys (api_keys) or a keys file (keys_file), not both")
        if self.engine not in engine_names():
            raise ValueError(f"engine {self.engine!r} is not one of: {', '.join(engine_names())}")
        if self.engine == "remote" and not (self.upstreams and self.models):
            raise ValueError(
                "engine remote needs upstreams (--upstream URL) and models (--model NAME=UPSTREAM_MODEL)"
            )
        if "all" in self.devices and len(self.devices) > 1:
            raise ValueError("devices: 'all' stands alone (every CUDA device)")
        if self.devices and self.device != "auto":
            raise ValueError("give device or devices, not both")
        if any(i >= max(len(self.devices), 1) for i in self.fault_devices) and "all" not in self.devices:
            raise ValueError("fault_devices are indexes into devices")


# Keys whose env/flag form is a comma-separated list or NAME=VALUE map.
_LIST_KEYS = {"models"}
_MAP_KEYS = {"aliases", "model_formats"}
_CSV_KEYS = {"upstreams", "api_keys"}
_CSV_KEYS |= {"devices", "fault_devices"}
# Singular env names that read naturally for one value.
_ENV_SINGULAR = {"model": "models", "upstream": "upstreams", "api_key": "api_keys"}


def parse_model_spec(spec: str) -> dict[str, str]:
    """``NAME=PATH_OR_HUB_ID`` or a bare path/hub id (named after its last path segment)."""
    spec = spec.strip()
    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name:
        return {"name": name, "path": path}
    return {"name": Path(spec.rstrip("/")).name or spec, "path": spec}


def split_csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _parse_map(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"expected NAME=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _read_file(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(raw.decode())
        elif path.suffix in {".yaml", ".yml"}:
            import yaml  # litestar depends on PyYAML

            data = yaml.safe_load(raw) or {}
        else:
            data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot parse config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    return data


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fields = set(Settings.__struct_fields__)
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        name = _ENV_SINGULAR.get(name, name)
        if name not in fields:
            continue
        if name in _LIST_KEYS:
            out[name] = [parse_model_spec(s) for s in value.split(",") if s.strip()]
        elif name in _MAP_KEYS:
            out[name] = _parse_map(value)
        elif name in _CSV_KEYS:
            out[name] = split_csv(value)
        else:
            out[name] = value
    return out


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
) -> Settings:
    """Merge the sources and validate once; raise :class:`ConfigError` with the offending key."""
    env = os.environ if env is None else env
    flags = dict(flags or {})
    path = flags.pop("config", None) or config_file or env.get(f"{ENV_PREFIX}CONFIG")
    merged: dict[str, Any] = _read_file(Path(path)) if path else {}
    merged.update(_from_env(env))
    merged.update({k: v for k, v in flags.items() if v is not None})
    if isinstance(merged.get("models"), list):
        merged["models"] = [parse_model_spec(m) if isinstance(m, str) else m for m in merged["models"]]
    try:
        # strict=False lets env/flag strings become ints, floats and bools.
        return msgspec.convert(merged, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid setting: {exc}") from exc
