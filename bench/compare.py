"""The seed's comparison, redone: naive, executor and rerankd on the same model, one after another.

``python -m bench.compare [--model PATH] [--concurrency 10] [--json out.json] [--plot out.png]``

Each server is started alone (nothing else loads the machine), driven by the same load generator
with the same requests, then stopped. Ratios are against the naive server at the same
concurrency: throughput x (higher is better) and p50 latency x (lower is better).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.loadgen import (
    SCHEMA,
    add_workload_args,
    format_table,
    http_sweep,
    make_report,
    markdown_table,
    run_params,
    workload_from_args,
)
from bench.servers import ModelChoice, baseline_command, rerankd_command, spawn, split_args

__all__ = ["main", "ratio_rows"]

SERVERS = ("naive", "executor", "rerankd")


def ratio_rows(reports: Sequence[dict[str, Any]], reference: str = "naive") -> list[list[str]]:
    """Per server and level: throughput and p50 latency relative to ``reference`` at that level."""
    ref = next((r for r in reports if r["label"] == reference), None)
    ref_levels = {lv["concurrency"]: lv for lv in ref["levels"]} if ref else {}
    rows = [["server", "clients", "tokens/s", "p50 ms", "throughput vs naive", "p50 vs naive"]]
    for rep in reports:
        for lv in rep["levels"]:
            base = ref_levels.get(lv["concurrency"])
            p50, base_p50 = lv["latency_ms"]["p50"], base["latency_ms"]["p50"] if base else None
            thr = (
                f"{lv['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base and base["tokens_per_s"] else "-"
            )
            lat = f"{p50 / base_p50:.2f}x" if p50 and base_p50 else "-"
            rows.append(
                [
                    rep["label"],
                    str(lv["concurrency"]),
                    f"{lv['tokens_per_s']:,.0f}",
                    f"{p50 or 0:,.0f}",
                    thr,
                    lat,
                ]
            )
    return rows


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    m = p.add_argument_group("model (the same for every server)")
    m.add_argument("--model", default=None, help="model folder (default: the embedded MiniLM)")
    m.add_argument("--format", default="auto", choices=["auto", "llm-yes-no", "cross-encoder", "bi-encoder"])
    m.add_argument("--device", default=None)
    m.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"])
    m.add_argument("--torch-threads", type=int, default=None)
    s = p.add_argument_group("servers")
    s.add_argument("--servers", default=",".join(SERVERS), help="which to run, in order (default: all three)")
    s.add_argument(
        "--server-arg",
        action="append",
        metavar="ARGS",
        help='extra rerankd serve arguments, e.g. --server-arg="--max-batch-tokens 32768" (repeatable)',
    )
    s.add_argument(
        "--baseline-arg", action="append", metavar="ARGS", help="extra arguments of both baselines"
    )
    s.add_argument("--scorer", choices=["rerankd", "card"], default="rerankd", help="baselines' LLM forward")
    s.add_argument("--workers", type=int, default=4, help="executor baseline's threads (default 4)")
    s.add_argument("--start-timeout", type=float, default=900.0, help="seconds to wait for /ready")
    s.add_argument("--log-dir", type=Path, default=None, help="keep each server's log here")
    p.add_argument("--route", default="/v2/rerank")
    p.add_argument("--json", dest="json_path", metavar="PATH")
    p.add_argument("--plot", metavar="PNG")
    add_workload_args(p, concurrency="10", duration=60.0, warmup=10.0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    names = [n.strip() for n in ns.servers.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SERVERS))
    if unknown:
        print(f"compare: unknown servers {unknown}; choose from {', '.join(SERVERS)}", file=sys.stderr)
        return 2
    workload = workload_from_args(ns)
    model = ModelChoice(ns.model, ns.format, ns.device, ns.dtype, ns.torch_threads)
    baseline_extra = ["--scorer", ns.scorer, *split_args(ns.baseline_arg)]
    commands = {
        "naive": baseline_command("naive", model, baseline_extra),
        "executor": baseline_command("executor", model, ["--workers", str(ns.workers), *baseline_extra]),
        "rerankd": rerankd_command(model, split_args(ns.server_arg)),
    }
    reports: list[dict[str, Any]] = []
    try:
        for name in names:
            with spawn(name, commands[name], start_timeout=ns.start_timeout, log_dir=ns.log_dir) as server:
                levels = asyncio.run(
                    http_sweep(
                        server.url + ns.route,
                        workload,
                        ns.concurrency,
                        duration=ns.duration,
                        warmup=ns.warmup,
                        max_requests=ns.requests,
                        request_timeout=ns.timeout,
                        label=name,
                        progress=None if ns.quiet else sys.stderr,
                    )
                )
            reports.append(
                make_report(
                    label=name,
                    target={"command": server.command, "route": ns.route},
                    workload=workload,
                    run=run_params(ns),
                    levels=levels,
                )
            )
    finally:
        model.cleanup()
    print(format_table(reports))
    print()
    print(markdown_table(ratio_rows(reports)))
    if ns.json_path:
        doc = {"schema": SCHEMA, "kind": "compare", "reports": reports, "ratios": ratio_rows(reports)}
        Path(ns.json_path).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"bench: wrote {ns.json_path}", file=sys.stderr)
    if ns.plot:
        from bench.plot import plot_reports

        plot_reports(reports, Path(ns.plot), title="naive vs executor vs rerankd")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
