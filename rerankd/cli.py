"""``rerankd`` command line: ``rerankd serve``, ``rerankd download``, ``rerankd keys``, ``rerankd bench``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from rerankd import __version__
from rerankd.adapters.registry import ENGINES, engine_names
from rerankd.auth import cli as keys_cli
from rerankd.config import Settings, load_settings, parse_model_spec, split_csv
from rerankd.errors import ConfigError

__all__ = ["main", "serve_settings"]


def _serve_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the rerank server", description="Run the rerank server.")
    # Every default is None: only flags given on the command line override env and file.
    p.add_argument("--config", help="settings file (.toml, .yaml or .json); env RERANKD_CONFIG")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8080)")
    p.add_argument(
        "--model",
        dest="models",
        action="append",
        metavar="[NAME=]PATH_OR_HUB_ID",
        help="a model to serve; repeat for several; the first is the default (default: embedded MiniLM)",
    )
    p.add_argument("--alias", dest="aliases", action="append", metavar="ALIAS=MODEL", help="extra model name")
    p.add_argument(
        "--model-format",
        dest="model_formats",
        action="append",
        metavar="NAME=FORMAT",
        help="a served model's format where its config.json does not tell (docs/engines.md)",
    )
    p.add_argument(
        "--engine",
        choices=engine_names(),
        help="scoring engine (default auto: vllm where it is installed and CUDA is there, else torch): "
        + "; ".join(f"{s.name}: {s.description}" for s in ENGINES.values()),
    )
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument(
        "--devices",
        help="one replica per device: cuda:0,cuda:1,... | all (every GPU) | cpu,cpu (torch engine)",
    )
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--torch-threads", type=int, dest="torch_threads")
    p.add_argument(
        "--compile", action="store_const", const=True, help="torch.compile the model (faster on GPU)"
    )
    p.add_argument("--max-documents", type=int, dest="max_documents")
    p.add_argument("--max-body-bytes", type=int, dest="max_body_bytes")
    p.add_argument("--max-batch-tokens", type=int, dest="max_batch_tokens")
    p.add_argument("--max-batch-size", type=int, dest="max_batch_size")
    p.add_argument("--max-queue-sequences", type=int, dest="max_queue_sequences")
    p.add_argument("--request-timeout-s", type=float, dest="request_timeout_s")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], dest="log_level")
    # per-pair result cache (docs/cache.md)
    p.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        help="cache scored pairs (default on); --no-cache: off",
    )
    p.add_argument(
        "--redis-url",
        dest="redis_url",
        help="redis://, rediss://, unix://, redis+sentinel://H:P,.../MASTER, redis+cluster://H:P,... "
        "(default: in-process)",
    )
    p.add_argument("--cache-ttl-s", type=int, dest="cache_ttl_s", help="seconds a cached pair lives (7 days)")
    p.add_argument(
        "--cache-timeout-ms", type=float, dest="cache_timeout_ms", help="budget of a cache read (50)"
    )
    p.add_argument("--cache-max-entries", type=int, dest="cache_max_entries", help="in-process cache bound")
    p.add_argument("--cache-max-bytes", type=int, dest="cache_max_bytes", help="in-process cache bound")
    p.add_argument("--cache-write-queue", type=int, dest="cache_write_queue", help="pairs awaiting write")
    # API keys and limits (docs/auth.md)
    p.add_argument("--auth", choices=["auto", "on", "off"], help="API keys: auto (default), on, off")
    p.add_argument("--no-auth", dest="auth", action="store_const", const="off", help="same as --auth off")
    p.add_argument("--keys-file", dest="keys_file", help="JSON keys file (e.g. a mounted Secret)")
    p.add_argument(
        "--metrics-auth", dest="metrics_auth", action="store_true", default=None, help="guard /metrics too"
    )
    p.add_argument(
        "--api-key",
        dest="api_keys",
        action="append",
        metavar="KEY",
        help="a static API key (repeatable; prefer env RERANKD_API_KEY, comma-separated for several)",
    )
    p.add_argument("--max-query-chars", type=int, dest="max_query_chars")
    p.add_argument(
        "--strict",
        action=argparse.BooleanOptionalAction,
        dest="strict",
        help="refuse unknown request fields with 422 (default: ignore them with a warning)",
    )
    # observability and lifecycle (docs/observability.md)
    p.add_argument(
        "--log-format",
        choices=["auto", "json", "text"],
        dest="log_format",
        help="auto (default): JSON lines unless stderr is a terminal",
    )
    p.add_argument(
        "--shutdown-grace-s",
        type=int,
        dest="shutdown_grace_s",
        help="seconds SIGTERM lets requests in flight finish (30)",
    )
    p.add_argument("--otel", action="store_const", const=True, help="export OpenTelemetry traces (OTLP)")
    p.add_argument(
        "--model-cache-dir",
        dest="model_cache_dir",
        help="where hub models are downloaded and found (default HF_HUB_CACHE, else HF_HOME/hub)",
    )
    _engine_flags(p)
    p.add_argument(
        "--redis-prefix",
        dest="redis_prefix",
        help="prefix of every name in Redis, for deployments sharing one (default rerankd:)",
    )
    _torch_flags(p)


def _torch_flags(p: argparse.ArgumentParser) -> None:
    """Options of the torch engine's LLM path and its compile cache (docs/engines.md)."""
    p.add_argument(
        "--shared-prefix",
        action=argparse.BooleanOptionalAction,
        dest="shared_prefix",
        help="LLM rerankers: compute the prefix a request's pairs share once per batch (default on)",
    )
    p.add_argument(
        "--compile-cache-dir",
        dest="compile_cache_dir",
        help="folder where --compile keeps its artifacts between starts",
    )


def _engine_flags(p: argparse.ArgumentParser) -> None:
    """Options of the vllm, vllm-sync and remote engines (docs/engines.md)."""
    p.add_argument(
        "--upstream",
        dest="upstreams",
        action="append",
        metavar="URL[,URL...]",
        help="base URL of an upstream rerank server (engine remote); repeat or separate with commas",
    )
    p.add_argument("--upstream-kind", dest="upstream_kind", choices=["cohere", "vllm-rerank", "vllm-score"])
    p.add_argument("--upstream-api-key", dest="upstream_api_key", help="prefer env RERANKD_UPSTREAM_API_KEY")
    p.add_argument("--upstream-timeout-s", type=float, dest="upstream_timeout_s")
    p.add_argument("--upstream-max-connections", type=int, dest="upstream_max_connections")
    p.add_argument("--gpu-memory-utilization", type=float, dest="gpu_memory_utilization")
    p.add_argument("--max-model-len", type=int, dest="max_model_len")
    p.add_argument("--max-num-seqs", type=int, dest="max_num_seqs")
    p.add_argument("--max-num-batched-tokens", type=int, dest="max_num_batched_tokens")
    p.add_argument("--tensor-parallel-size", type=int, dest="tensor_parallel_size")
    p.add_argument("--data-parallel-size", type=int, dest="data_parallel_size")
    p.add_argument("--quantization", dest="quantization")
    p.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, dest="enforce_eager")
    p.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        dest="enable_prefix_caching",
    )
    # The onnx engine (docs/engines.md#onnx).
    p.add_argument(
        "--quantize",
        choices=["none", "int8", "fp8"],
        dest="quantize",
        help="int8: onnx engine, int8 weights; fp8: torch engine on CUDA (compute capability >= 8.9)",
    )
    p.add_argument(
        "--onnx-cache-dir", dest="onnx_cache_dir", help="exported models (default ~/.cache/rerankd/onnx)"
    )
    p.add_argument("--threads", type=int, dest="threads", help="intra-op threads (default: usable cores)")


def _download_parser(sub: Any) -> None:
    p = sub.add_parser(
        "download",
        help="fetch hub models into the model cache",
        description="Fetch hub models (config, tokenizer, safetensors) into the model cache, for a "
        "volume that servers then start from offline (HF_HUB_OFFLINE=1). Prints each model's folder.",
    )
    p.add_argument("models", nargs="+", metavar="OWNER/NAME[@REVISION]", help="hub ids")
    p.add_argument(
        "--cache-dir",
        dest="model_cache_dir",
        help="cache folder (default: serve's model_cache_dir, else HF_HUB_CACHE or HF_HOME/hub)",
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], dest="log_level")
    p.add_argument("--log-format", choices=["auto", "json", "text"], dest="log_format")


def download(models: Sequence[str], settings: Settings) -> int:
    """``rerankd download``: exit 0 when every model is in the cache, 1 when one could not be fetched."""
    from rerankd.adapters.download import download_model, quiet_progress_bars
    from rerankd.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    quiet_progress_bars()
    failed = 0
    for spec in models:
        repo, _, revision = spec.partition("@")
        if repo.count("/") != 1 or repo.startswith((".", "/")):
            print(f"rerankd: {spec!r} is not a hub id (owner/name)", file=sys.stderr)
            failed += 1
            continue
        try:
            folder = download_model(repo, revision or None, settings.model_cache_dir)
        except Exception as exc:  # the hub client raises many types: offline, 404, auth, disk
            reason = str(exc).strip().partition("\n")[0]  # the hub client's messages run to paragraphs
            print(f"rerankd: cannot download {repo}: {reason}", file=sys.stderr)
            failed += 1
            continue
        print(f"{spec}\t{folder}", flush=True)
    return 1 if failed else 0


def _flags(ns: argparse.Namespace) -> dict[str, Any]:
    flags = {k: v for k, v in vars(ns).items() if k != "command" and v is not None}
    if ns.command == "download":
        flags.pop("models")  # hub ids to fetch, not models to serve
    if "models" in flags:
        flags["models"] = [parse_model_spec(m) for m in flags["models"]]
    if "aliases" in flags:
        pairs = [a.partition("=") for a in flags["aliases"]]
        if any(not sep for _, sep, _ in pairs):
            raise ConfigError("--alias takes ALIAS=MODEL")
        flags["aliases"] = {a: m for a, _, m in pairs}
    if "model_formats" in flags:
        pairs = [f.partition("=") for f in flags["model_formats"]]
        if any(not sep for _, sep, _ in pairs):
            raise ConfigError("--model-format takes NAME=FORMAT")
        flags["model_formats"] = {n.strip(): f.strip() for n, _, f in pairs}
    if "upstreams" in flags:
        flags["upstreams"] = [u for item in flags["upstreams"] for u in split_csv(item)]
    if "api_keys" in flags:
        flags["api_keys"] = [k for item in flags["api_keys"] for k in split_csv(item)]
    if "devices" in flags:
        flags["devices"] = split_csv(flags["devices"])
    return flags


def serve(settings: Settings) -> int:
    import asyncio

    import uvicorn

    from rerankd.adapters.download import quiet_progress_bars
    from rerankd.auth import check_exposure
    from rerankd.logs import configure_logging
    from rerankd.proxy.app import create_app
    from rerankd.proxy.server import Server, run_until_stopped
    from rerankd.service import RerankService

    configure_logging(settings.log_level, settings.log_format)
    quiet_progress_bars()  # downloads log structured lines; raw tqdm bars would break JSON logs
    asyncio.run(check_exposure(settings))  # before loading models: refusals come at once
    service = RerankService(settings)
    exit_code = 0
    server: uvicorn.Server | None = None

    def fatal(exc: BaseException) -> None:
        nonlocal exit_code
        exit_code = 1
        print(f"rerankd: cannot start: {exc}", file=sys.stderr)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, service=service, on_fatal=fatal)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # configure_logging above: one format for rerankd's and uvicorn's lines
        access_log=False,  # rerankd logs each request itself, with its id, model, key name and counts
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
    server = Server(config, service)
    run_until_stopped(server)
    return exit_code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rerankd", description="A rerank server.")
    parser.add_argument("--version", action="version", version=f"rerankd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    keys_cli.add_parser(sub)
    _download_parser(sub)
    # Listed for --help only: main() hands everything after "bench" to the load generator.
    sub.add_parser("bench", help="load generator (rerankd bench --help)", add_help=False)
    return parser


def serve_settings(argv: Sequence[str]) -> Settings:
    """The settings ``rerankd serve ARGV`` would run with (benchmarks build in-process engines)."""
    return load_settings(_flags(_parser().parse_args(["serve", *argv])))


def _bench(argv: Sequence[str]) -> int:
    try:
        from rerankd.bench.loadgen import main as bench_main
    except ImportError as exc:  # httpx comes with the bench extra, not with the server
        print(
            f"rerankd: the load generator needs the bench extra (pip install 'rerankd[bench]'): {exc}",
            file=sys.stderr,
        )
        return 2
    return bench_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["bench"]:
        return _bench(args[1:])
    ns = _parser().parse_args(args)
    try:
        if ns.command == "keys":
            return keys_cli.run(ns)
        settings = load_settings(_flags(ns))
        if ns.command == "serve":
            return serve(settings)
        if ns.command == "download":
            return download(ns.models, settings)
    except ConfigError as exc:
        print(f"rerankd: {exc.detail}", file=sys.stderr)
        return 2
    return 0
