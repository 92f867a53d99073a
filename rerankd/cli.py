"""``rerankd`` command line: ``rerankd serve``, ``rerankd download``, ``rerankd keys``, ``rerankd bench``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from rerankd import __version__
from rerankd.auth import cli as keys_cli
from rerankd.config import ENV_PREFIX, GROUPS, Settings, load_settings, options, split_csv
from rerankd.errors import ConfigError
from rerankd.flags import HelpFormatter, add_option, env_help

__all__ = ["main", "serve_settings"]


def _serve_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the rerank server",
        description="Run the rerank server. Every option is also an env variable and a key of the "
        "--config file; a flag beats the env, which beats the file (docs/configuration.md).",
        formatter_class=HelpFormatter,
    )
    groups = {key: p.add_argument_group(title, description) for key, (title, description) in GROUPS.items()}
    groups["server"].add_argument(
        "--config",
        metavar="FILE",
        help=env_help("settings file (.toml, .yaml or .json)", f"{ENV_PREFIX}CONFIG", "none"),
    )
    for opt in options():
        add_option(groups[opt.group], opt)


def _download_parser(sub: Any) -> None:
    p = sub.add_parser(
        "download",
        help="fetch hub models into the model cache",
        description="Fetch hub models (config, tokenizer, safetensors) into the model cache, for a "
        "volume that servers then start from offline (HF_HUB_OFFLINE=1). Prints each model's folder.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("models", nargs="+", metavar="OWNER/NAME[@REVISION]", help="hub ids")
    by_field = {opt.field: opt for opt in options()}
    add_option(
        p,
        by_field["model_cache_dir"],
        flag="--cache-dir",
        help="cache folder (default: serve's model_cache_dir, else HF_HUB_CACHE or HF_HOME/hub)",
    )
    for field in ("log_level", "log_format"):
        add_option(p, by_field[field])


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
    for opt in options():
        if opt.field not in flags or opt.shape == "one":
            continue
        value = flags[opt.field]
        items = value if isinstance(value, list) else [value]
        if opt.shape == "map":
            pairs = [item.partition("=") for item in items]
            if any(not sep for _, sep, _ in pairs):
                raise ConfigError(f"{opt.flag} takes {opt.spec.metavar}")
            flags[opt.field] = {k.strip(): v.strip() for k, _, v in pairs}
        elif opt.spec.parse:
            flags[opt.field] = [opt.spec.parse(item) for item in items]
        else:
            flags[opt.field] = [part for item in items for part in split_csv(item)]
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
