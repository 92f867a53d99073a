"""Settings: one frozen msgspec object, filled from defaults < config file < ``RERANKD_*`` env < flags.

Each field's annotation also says how it appears on ``rerankd serve`` (:class:`Flag`); the command
line is built from :func:`options`, so a setting, its flag, env name, default and help are declared once.

Nothing here reads the environment at import time; :func:`load_settings` does it when asked.
"""

from __future__ import annotations

import functools
import json
import os
import tomllib
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import msgspec
from msgspec import Meta

from rerankd.adapters.registry import AUTO, ENGINES, engine_names
from rerankd.errors import ConfigError

__all__ = [
    "BATCH_TOKENS_CPU",
    "BATCH_TOKENS_GPU",
    "ENV_PREFIX",
    "GROUPS",
    "MAX_BATCH_SIZE",
    "MAX_QUEUE_SEQUENCES",
    "Flag",
    "ModelConfig",
    "NoFlag",
    "Option",
    "Settings",
    "VLLMOptions",
    "flag_spec",
    "load_settings",
    "options",
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


@dataclass(frozen=True, slots=True)
class Flag:
    """How a setting appears on ``rerankd serve``; goes in the field's ``Annotated[...]``.

    The flag's name, its env variable, its argparse type and choices and the default its help shows
    all come from the field (:func:`options`); only what the field cannot tell is written here.
    """

    help: str
    #: A key of :data:`GROUPS`: the section of ``rerankd serve --help`` the flag is listed in.
    group: str
    #: Default: ``--`` and the field name with dashes.
    flag: str | None = None
    metavar: str | None = None
    #: Default: a ``Literal`` field's values. A callable is asked when the parser is built.
    choices: Callable[[], Sequence[str]] | None = None
    #: Help text asked for when the parser is built (from the engine table, say).
    detail: Callable[[], str] | None = None
    #: The flag may be given again; list fields split each value at commas unless ``parse`` is set.
    repeat: bool = False
    #: Turns each value of a repeated flag into one item (instead of splitting at commas).
    parse: Callable[[str], Any] | None = None
    #: Bools: ``--x`` / ``--no-x``; False: ``--x`` alone, which sets true.
    negatable: bool = True
    #: What a None or empty default means, shown as the default.
    unset: str | None = None
    #: A second flag that sets the setting to a constant: ``("--no-auth", "off")``.
    shorthand: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class NoFlag:
    """A setting on purpose without a flag (env and file only): says why."""

    why: str


#: The sections of ``rerankd serve --help``, in order: key -> (title, description).
GROUPS: dict[str, tuple[str, str]] = {
    "server": ("server", "binding and shutdown"),
    "models": ("models", "what is served (docs/configuration.md#server-and-models)"),
    "engine": ("engine", "what scores, and where (docs/engines.md)"),
    "torch": ("torch engine", "docs/engines.md#torch-shared-prefixes-llm-rerankers"),
    "onnx": ("onnx engine", "docs/engines.md#onnx"),
    "vllm": ("vllm and vllm-sync engines", "vLLM's own names; unset leaves vLLM's default"),
    "remote": ("remote engine", "scoring forwarded to upstream rerank servers"),
    "limits": ("requests and limits", "what one request may ask for"),
    "batching": ("batching", "how the scheduler fills forward passes"),
    "cache": ("result cache", "docs/cache.md"),
    "redis": ("Redis", "one Redis for the cache, keys, limits and usage (docs/deploy.md)"),
    "auth": ("API keys", "docs/auth.md"),
    "logging": ("logging and tracing", "docs/observability.md"),
}


def _engine_help() -> str:
    return "; ".join(f"{spec.name}: {spec.description}" for spec in ENGINES.values())


class VLLMOptions(msgspec.Struct, frozen=True, kw_only=True):
    """Engine arguments rerankd passes through to vLLM, named as vLLM names them; ``None`` leaves
    vLLM's default. :class:`Settings` inherits them: they are declared here once."""

    dtype: Annotated[
        Literal["auto", "float32", "bfloat16", "float16"],
        Flag("weights and activations; auto: bfloat16 on CUDA, float32 on CPU", "engine"),
    ] = "auto"
    #: On GPU the fraction of GPU memory vLLM takes; on CPU builds, of host memory.
    gpu_memory_utilization: Annotated[
        Annotated[float, Meta(gt=0, le=1)] | None,
        Flag(
            "share of GPU memory vLLM takes (CPU build: of host memory)",
            "vllm",
            metavar="FRACTION",
            unset="LLM rerankers: a KV cache sized for scoring; others: vLLM's",
        ),
    ] = None
    max_model_len: Annotated[
        PositiveInt | None,
        Flag("context vLLM reserves; lower, it also truncates", "vllm", unset="the model's max_length"),
    ] = None
    max_num_seqs: Annotated[
        PositiveInt | None,
        Flag("sequences per engine step", "vllm", unset="vLLM's"),
    ] = None
    max_num_batched_tokens: Annotated[
        PositiveInt | None, Flag("tokens per engine step", "vllm", unset="vLLM's")
    ] = None
    tensor_parallel_size: Annotated[PositiveInt, Flag("GPUs one model is split over", "vllm")] = 1
    data_parallel_size: Annotated[PositiveInt, Flag("engine replicas inside the process", "vllm")] = 1
    quantization: Annotated[
        str | None, Flag("vLLM quantization method, e.g. fp8", "vllm", metavar="METHOD", unset="none")
    ] = None
    enforce_eager: Annotated[
        bool, Flag("no CUDA graphs or compilation: faster start, slower scoring", "vllm")
    ] = False
    #: The query prefix every pair of a request shares is computed once (causal models only).
    enable_prefix_caching: Annotated[
        bool, Flag("compute the prefix a request's pairs share once (causal models)", "vllm")
    ] = True

    @classmethod
    def from_settings(cls, settings: VLLMOptions) -> VLLMOptions:
        """The vLLM part of :class:`Settings` (or of any subclass), field by field."""
        return cls(**{name: getattr(settings, name) for name in cls.__struct_fields__})


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


class Settings(VLLMOptions, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Every option of ``rerankd serve``. Each is also ``RERANKD_<NAME>`` and a config-file key.

    Each field's :class:`Flag` (or :class:`NoFlag`) says how it appears on the command line;
    :func:`options` lists them with their env names and defaults, and the CLI is built from that.
    """

    # -- server --------------------------------------------------------------------------------
    host: Annotated[str, Flag("address to bind", "server")] = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535), Flag("port to bind", "server", metavar="N")] = 8080
    #: Seconds a SIGTERM waits for requests in flight before it cancels them and exits.
    shutdown_grace_s: Annotated[
        int, Meta(ge=0), Flag("seconds SIGTERM lets requests in flight finish", "server")
    ] = 30

    # -- models --------------------------------------------------------------------------------
    #: Served models; empty means the embedded all-MiniLM-L6-v2.
    models: Annotated[
        tuple[ModelConfig, ...],
        Flag(
            "a model to serve; repeat for several; the first is the default",
            "models",
            flag="--model",
            metavar="[NAME=]PATH_OR_HUB_ID",
            repeat=True,
            parse=parse_model_spec,
            unset="the embedded all-MiniLM-L6-v2",
        ),
    ] = ()
    #: Extra names clients may send, mapped to served model names.
    aliases: Annotated[
        dict[str, str],
        Flag("extra model name", "models", flag="--alias", metavar="ALIAS=MODEL", repeat=True, unset="none"),
    ] = msgspec.field(default_factory=dict)
    #: Model formats by served model name, for models whose config.json does not tell
    #: (``--model-format NAME=FORMAT``); a model's own ``format`` in a settings file does the same.
    model_formats: Annotated[
        dict[str, Format],
        Flag(
            "a served model's format where its config.json does not tell (docs/engines.md)",
            "models",
            flag="--model-format",
            metavar="NAME=FORMAT",
            repeat=True,
            unset="detected",
        ),
    ] = msgspec.field(default_factory=dict)
    #: Where hub models are downloaded and looked up (``rerankd download --cache-dir``).
    model_cache_dir: Annotated[
        str | None,
        Flag(
            "where hub models are downloaded and found",
            "models",
            metavar="DIR",
            unset="HF_HUB_CACHE, else HF_HOME/hub",
        ),
    ] = None

    # -- engine --------------------------------------------------------------------------------
    #: ``auto`` or a name of the engine table (``rerankd.adapters.registry``).
    engine: Annotated[
        str,
        Flag(
            "scoring engine; auto: vllm where it is installed and CUDA is there, on the CPU onnx for "
            "encoders, else torch",
            "engine",
            choices=engine_names,
            detail=_engine_help,
        ),
    ] = AUTO
    device: Annotated[
        str,
        Meta(pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$"),
        Flag("auto | cpu | cuda | cuda:N | mps", "engine"),
    ] = "auto"
    #: One torch-engine replica per device behind the one scheduler: ``cuda:0,cuda:1``, ``all``
    #: (every CUDA device), or CPU replicas (``cpu,cpu`` or ``cpu:0,cpu:1``) that split the
    #: intra-op threads. Empty: the one ``device``.
    devices: Annotated[
        tuple[Annotated[str, Meta(pattern=r"^(all|cpu(:\d+)?|cuda(:\d+)?)$")], ...],
        Flag(
            "one replica per device: cuda:0,cuda:1,... | all (every GPU) | cpu,cpu (torch engine)",
            "engine",
            unset="the one --device",
        ),
    ] = ()
    #: For testing fail-over only: the replicas (indexes into ``devices``) whose forward pass
    #: raises once they have run ``fault_after_batches`` batches. A CPU forward pass cannot be
    #: made to fail from outside the way a GPU's can (device error, out of memory), so the tests
    #: need this to take a replica down for real.
    fault_devices: Annotated[
        tuple[Annotated[int, Meta(ge=0)], ...], NoFlag("fault injection for tests: env and file only")
    ] = ()
    fault_after_batches: Annotated[
        int, Meta(ge=0), NoFlag("fault injection for tests: env and file only")
    ] = 0

    # -- torch engine: threads, compile, shared prefixes (docs/engines.md) ---------------------
    torch_threads: Annotated[
        PositiveInt | None, Flag("intra-op threads of the torch engine", "torch", unset="torch's choice")
    ] = None
    #: torch.compile the model (GPU: about 2x throughput; a start compiles one layer, docs/engines.md).
    compile: Annotated[
        bool, Flag("torch.compile the model (faster on GPU, slower start)", "torch", negatable=False)
    ] = False
    #: ``layers``: the stack of identical layers is compiled as one graph that every layer runs
    #: (a start compiles one layer, not the whole model); ``model``: the whole model as one graph.
    compile_scope: Annotated[
        Literal["layers", "model"],
        Flag("what --compile compiles: one graph for the repeated layers, or the whole model", "torch"),
    ] = "layers"
    #: LLM rerankers: a prefix common to adjacent rows of a batch (prompt, instruction, query) is
    #: computed once and every row attends to its keys/values; false: every row is run whole.
    #: On by default: it paid on the CPU and on an H200, eager and compiled (docs/benchmarks.md).
    shared_prefix: Annotated[
        bool, Flag("LLM rerankers: compute the prefix a request's pairs share once per batch", "torch")
    ] = True
    #: Where ``--compile`` keeps its artifacts between starts, one folder per model fingerprint,
    #: torch version, device name, dtype and batch shape.
    compile_cache_dir: Annotated[
        str | None,
        Flag(
            "folder where --compile keeps its artifacts between starts",
            "torch",
            metavar="DIR",
            unset="compile-cache beside the model's folder where writable, else ~/.cache/rerankd/compile",
        ),
    ] = None

    # -- ONNX Runtime engine (docs/engines.md#onnx) --------------------------------------------
    #: ``int8``: the onnx engine's dynamic quantization of the exported model (weights int8).
    #: ``fp8``: the torch engine's FP8 projections on CUDA GPUs of compute capability 8.9 or later
    #: (weights per channel, activations per token; docs/engines.md#torch-fp8).
    quantize: Annotated[
        Literal["none", "int8", "fp8"],
        Flag(
            "int8: the onnx engine's int8 weights; fp8: the torch engine's FP8 projections (CUDA, sm 8.9+)",
            "engine",
        ),
    ] = "none"
    #: Where exported models are kept, one file per model fingerprint, exporter and quantization.
    onnx_cache_dir: Annotated[
        str | None,
        Flag(
            "where exported models are kept",
            "onnx",
            metavar="DIR",
            unset="$XDG_CACHE_HOME/rerankd/onnx (~/.cache/rerankd/onnx)",
        ),
    ] = None
    threads: Annotated[
        PositiveInt | None,
        Flag(
            "intra-op threads of the onnx engine (and of torch when --torch-threads is unset)",
            "onnx",
            unset="the cores this process may run on",
        ),
    ] = None

    # -- remote engine (docs/engines.md) -------------------------------------------------------
    #: Base URLs that ``engine: remote`` forwards scoring to; tried in turn when one fails.
    upstreams: Annotated[
        tuple[Annotated[str, Meta(pattern=r"^https?://[^\s,]+$")], ...],
        Flag(
            "base URL of an upstream rerank server (engine remote); repeat or separate with commas",
            "remote",
            flag="--upstream",
            metavar="URL[,URL...]",
            repeat=True,
            unset="none",
        ),
    ] = ()
    #: The upstream API: ``cohere`` (POST /v2/rerank), ``vllm-rerank`` (/rerank), ``vllm-score`` (/score).
    upstream_kind: Annotated[
        Literal["cohere", "vllm-rerank", "vllm-score"],
        Flag("the upstream API: POST /v2/rerank, /rerank or /score", "remote"),
    ] = "cohere"
    upstream_api_key: Annotated[
        str | None,
        Flag(
            "sent as Authorization: Bearer to every upstream; prefer the env variable",
            "remote",
            metavar="KEY",
            unset="none",
        ),
    ] = None
    #: Per attempt; a request's own deadline (request_timeout_s) caps all attempts together.
    upstream_timeout_s: Annotated[
        PositiveFloat, Flag("seconds per attempt; --request-timeout-s bounds them all", "remote")
    ] = 60.0
    upstream_max_connections: Annotated[
        PositiveInt, Flag("pooled connections to all upstreams together", "remote")
    ] = 100

    # -- requests and limits -------------------------------------------------------------------
    max_documents: Annotated[PositiveInt, Flag("documents per request (400 beyond)", "limits")] = 10_000
    max_body_bytes: Annotated[
        PositiveInt,
        Flag("request body size in bytes (413 beyond)", "limits"),
    ] = 32 * 1024 * 1024
    max_query_chars: Annotated[PositiveInt, Flag("longer queries get 400", "limits")] = 32_768
    #: Seconds one request may take in all (tokenizing, queueing, scoring); then it answers 503.
    request_timeout_s: Annotated[
        PositiveFloat, Flag("seconds one request may take in all; then 503", "limits")
    ] = 30.0
    strict: Annotated[
        bool, Flag("refuse unknown request fields with 422 (off: ignore them with a warning)", "limits")
    ] = False

    # -- batching ------------------------------------------------------------------------------
    #: Padded tokens per forward pass (batch rows x longest row).
    max_batch_tokens: Annotated[
        PositiveInt | None,
        Flag(
            "padded tokens per forward pass (rows x longest row)",
            "batching",
            unset=f"{BATCH_TOKENS_GPU} on GPU, {BATCH_TOKENS_CPU} on CPU",
        ),
    ] = None
    max_batch_size: Annotated[PositiveInt, Flag("rows per forward pass", "batching")] = MAX_BATCH_SIZE
    #: Sequences waiting to be scored across all requests; beyond it requests get 503. A bound on
    #: memory: before it is reached, requests that could not finish within request_timeout_s at the
    #: measured rate are refused (503 + Retry-After) as they arrive.
    max_queue_sequences: Annotated[
        PositiveInt, Flag("sequences waiting across all requests (503 beyond)", "batching")
    ] = MAX_QUEUE_SEQUENCES

    # -- per-pair result cache (docs/cache.md) -------------------------------------------------
    #: Cache every scored (query, document) pair; false: no cache reads, writes or coalescing.
    cache: Annotated[bool, Flag("cache scored (query, document) pairs", "cache")] = True
    cache_ttl_s: Annotated[PositiveInt, Flag("seconds a cached pair lives", "cache")] = 7 * 24 * 3600
    #: Time budget of one cache read; beyond it the request is scored uncached.
    cache_timeout_ms: Annotated[
        PositiveFloat, Flag("budget of a cache read; beyond it the request is scored uncached", "cache")
    ] = 50.0
    #: Bounds of the in-process LRU (used when no redis_url is set).
    cache_max_entries: Annotated[PositiveInt, Flag("pairs the in-process cache keeps", "cache")] = 1_000_000
    cache_max_bytes: Annotated[
        PositiveInt,
        Flag("bytes the in-process cache keeps", "cache"),
    ] = 256 * 1024 * 1024
    #: Scored pairs waiting to be written to Redis; beyond it writes are dropped (and counted).
    cache_write_queue: Annotated[
        PositiveInt, Flag("pairs awaiting their Redis write; beyond it writes are dropped", "cache")
    ] = 100_000

    # -- Redis deployments (docs/deploy.md) ----------------------------------------------------
    #: A shared cache: redis://, rediss:// (TLS) or unix:// URL, redis+sentinel://h:p,h:p/MASTER or
    #: redis+cluster://h:p,h:p (rediss+ for TLS). Unset: an in-process LRU.
    redis_url: Annotated[
        Annotated[str, Meta(pattern=r"^(redis|rediss|unix|rediss?\+sentinel|rediss?\+cluster)://.")] | None,
        Flag(
            "redis://, rediss://, unix://, redis+sentinel://H:P,.../MASTER, redis+cluster://H:P,...",
            "redis",
            metavar="URL",
            unset="in-process cache, keys from the keys file",
        ),
    ] = None
    #: Starts every name rerankd keeps in Redis (cached pairs, key records, limits, usage), so that
    #: deployments can share one Redis without sharing entries. No braces: they would make a
    #: Redis Cluster hash tag of it and put every key in one slot.
    redis_prefix: Annotated[
        str,
        Meta(max_length=64, pattern=r"^[^{}\s]*$"),
        Flag("prefix of every name in Redis, for deployments sharing one", "redis", metavar="PREFIX"),
    ] = "rerankd:"

    # -- API keys (docs/auth.md) ---------------------------------------------------------------
    #: ``auto``: keys are required once any key is on record, and a server bound beyond loopback with
    #: none refuses to start; ``on``: always required; ``off`` (``--no-auth``): never.
    auth: Annotated[
        Literal["auto", "on", "off"],
        Flag(
            "API keys: auto: required once any key is on record; on: always; off: never",
            "auth",
            shorthand=("--no-auth", "off"),
        ),
    ] = "auto"
    #: JSON keys file (e.g. a mounted Kubernetes Secret); when unset, keys live in Redis if configured.
    keys_file: Annotated[
        str | None,
        Flag("JSON keys file (e.g. a mounted Secret)", "auth", metavar="PATH", unset="keys in Redis if set"),
    ] = None
    #: Static API keys (``--api-key``, ``RERANKD_API_KEY[S]``), kept only as digests once the server
    #: starts; an alternative to a keys file or Redis for one or a few keys.
    api_keys: Annotated[
        tuple[Annotated[str, Meta(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9\-._~+/]+=*$")], ...],
        Flag(
            "a static API key; repeatable (prefer the env variable, comma-separated for several)",
            "auth",
            flag="--api-key",
            metavar="KEY",
            repeat=True,
            unset="none",
        ),
    ] = ()
    metrics_auth: Annotated[bool, Flag("guard /metrics with a key too", "auth", negatable=False)] = False

    # -- logging and tracing (docs/observability.md) -------------------------------------------
    log_level: Annotated[Literal["debug", "info", "warning", "error"], Flag("log level", "logging")] = "info"
    log_format: Annotated[
        Literal["auto", "json", "text"],
        Flag("auto: JSON lines unless stderr is a terminal", "logging"),
    ] = "auto"
    #: Needs the ``otel`` extra installed; the endpoint comes from the standard ``OTEL_*`` env.
    otel: Annotated[
        bool, Flag("export OpenTelemetry traces (OTLP; endpoint from OTEL_*)", "logging", negatable=False)
    ] = False

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


def _env_field(key: str) -> str | None:
    """The setting an environment variable names (``RERANKD_PORT`` -> ``port``), if any."""
    if not key.startswith(ENV_PREFIX):
        return None
    name = key[len(ENV_PREFIX) :].lower()
    name = _ENV_SINGULAR.get(name, name)
    return name if name in Settings.__struct_fields__ else None


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """Lists are comma-separated (models as ``NAME=PATH`` specs), maps ``NAME=VALUE,...``."""
    out: dict[str, Any] = {}
    for key, value in env.items():
        name = _env_field(key)
        if name is None:
            continue
        shape = _shape(_field_types()[name])[0]
        if name == "models":
            out[name] = [parse_model_spec(s) for s in value.split(",") if s.strip()]
        elif shape == "map":
            out[name] = _parse_map(value)
        elif shape == "list":
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


# -- the command line's view of the settings ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Option:
    """One flag of ``rerankd serve``, derived by :func:`options` from a :class:`Settings` field."""

    field: str
    flag: str
    #: ``RERANKD_<FIELD>``, as :func:`load_settings` reads it.
    env: str
    #: Other names :func:`load_settings` reads for it (``RERANKD_MODEL`` beside ``RERANKD_MODELS``).
    env_aliases: tuple[str, ...]
    #: The field's type without its constraints.
    type: Any
    #: ``one`` value, a ``list`` (a tuple field) or a ``map`` (a dict field of NAME=VALUE pairs).
    shape: Literal["one", "list", "map"]
    #: What argparse turns one value into: ``str``, ``int``, ``float`` or ``bool``.
    item: type
    choices: tuple[str, ...] | None
    default: Any
    help: str
    group: str
    spec: Flag

    @property
    def shown_default(self) -> str:
        """The default as ``--help`` and the docs write it: as env and files spell values."""
        value = self.default
        if value is None or (isinstance(value, tuple | dict) and not value):
            return self.spec.unset or "none"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)


def _plain(tp: Any) -> Any:
    """``tp`` without ``Annotated`` metadata, at any depth."""
    if get_origin(tp) is Annotated:
        return _plain(get_args(tp)[0])
    args = get_args(tp)
    if get_origin(tp) in (Union, types.UnionType):
        return Union[tuple(_plain(a) for a in args)]  # noqa: UP007 (a runtime union of a tuple)
    if get_origin(tp) in (tuple, dict):
        return types.GenericAlias(get_origin(tp), tuple(a if a is ... else _plain(a) for a in args))
    return tp


def _shape(tp: Any) -> tuple[Literal["one", "list", "map"], Any]:
    """A plain field type's shape and its item type (``None`` dropped from unions)."""
    if get_origin(tp) in (Union, types.UnionType):
        (tp,) = (a for a in get_args(tp) if a is not type(None))
    if get_origin(tp) is tuple:
        return "list", get_args(tp)[0]
    if get_origin(tp) is dict:
        return "map", get_args(tp)[1]
    return "one", tp


@functools.cache
def _field_types() -> dict[str, Any]:
    return {f.name: _plain(f.type) for f in msgspec.structs.fields(Settings)}


@functools.cache
def _hints() -> dict[str, Any]:
    return get_type_hints(Settings, include_extras=True)


def flag_spec(field: str) -> Flag | NoFlag | None:
    """The :class:`Flag` or :class:`NoFlag` in a Settings field's annotation; None: neither."""
    hint = _hints()[field]
    marks = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Flag | NoFlag)]
    return marks[-1] if marks else None


@functools.cache
def options() -> tuple[Option, ...]:
    """Every setting that is a flag of ``rerankd serve``, grouped as :data:`GROUPS` orders them."""
    out: list[Option] = []
    for f in msgspec.structs.fields(Settings):
        spec = flag_spec(f.name)
        if not isinstance(spec, Flag):
            continue
        tp = _field_types()[f.name]
        shape, item = _shape(tp)
        literal = get_args(item) if get_origin(item) is Literal and shape == "one" else None
        choices = spec.choices() if spec.choices else literal
        default = f.default_factory() if f.default is msgspec.NODEFAULT else f.default
        scalar = str if literal or item not in (bool, int, float) else item
        help_ = f"{spec.help}; {spec.detail()}" if spec.detail else spec.help
        aliases = tuple(ENV_PREFIX + k.upper() for k, v in _ENV_SINGULAR.items() if v == f.name)
        out.append(
            Option(
                field=f.name,
                flag=spec.flag or "--" + f.name.replace("_", "-"),
                env=ENV_PREFIX + f.name.upper(),
                env_aliases=aliases,
                type=tp,
                shape=shape,
                item=scalar,
                choices=tuple(choices) if choices else None,
                default=default,
                help=help_,
                group=spec.group,
                spec=spec,
            )
        )
    order = list(GROUPS)
    return tuple(sorted(out, key=lambda o: order.index(o.group)))
