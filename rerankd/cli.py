"""``rerankd`` command line: ``rerankd serve [options]``, ``rerankd bench [options]``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from rerankd import __version__
from rerankd.config import Settings, load_settings, parse_model_spec
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
    p.add_argument("--engine", choices=["auto", "torch"], help="scoring engine (default auto)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--torch-threads", type=int, dest="torch_threads")
    p.add_argument("--max-documents", type=int, dest="max_documents")
    p.add_argument("--max-body-bytes", type=int, dest="max_body_bytes")
    p.add_argument("--max-batch-tokens", type=int, dest="max_batch_tokens")
    p.add_argument("--max-batch-size", type=int, dest="max_batch_size")
    p.add_argument("--max-queue-sequences", type=int, dest="max_queue_sequences")
    p.add_argument("--request-timeout-s", type=float, dest="request_timeout_s")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], dest="log_level")


def _flags(ns: argparse.Namespace) -> dict[str, Any]:
    flags = {k: v for k, v in vars(ns).items() if k != "command" and v is not None}
    if "models" in flags:
        flags["models"] = [parse_model_spec(m) for m in flags["models"]]
    if "aliases" in flags:
        pairs = [a.partition("=") for a in flags["aliases"]]
        if any(not sep for _, sep, _ in pairs):
            raise ConfigError("--alias takes ALIAS=MODEL")
        flags["aliases"] = {a: m for a, _, m in pairs}
    return flags


def serve(settings: Settings) -> int:
    import uvicorn

    from rerankd.proxy.app import create_app
    from rerankd.service import RerankService

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
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
        timeout_graceful_shutdown=30,
    )
    server = uvicorn.Server(config)
    server.run()
    return exit_code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rerankd", description="A rerank server.")
    parser.add_argument("--version", action="version", version=f"rerankd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    # Listed for --help only: main() hands everything after "bench" to the load generator.
    sub.add_parser("bench", help="load generator (rerankd bench --help)", add_help=False)
    return parser


def serve_settings(argv: Sequence[str]) -> Settings:
    """The settings ``rerankd serve ARGV`` would run with (benchmarks build in-process engines)."""
    return load_settings(_flags(_parser().parse_args(["serve", *argv])))


def _bench(argv: Sequence[str]) -> int:
    try:
        from bench.loadgen import main as bench_main
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
        settings = load_settings(_flags(ns))
        if ns.command == "serve":
            return serve(settings)
    except ConfigError as exc:
        print(f"rerankd: {exc.detail}", file=sys.stderr)
        return 2
    return 0
