"""The seed's comparison, redone: naive, executor and rerankd on the same model, one after another;
rerankd twice, on the torch engine the baselines also run and on the onnx engine.

``python -m bench.compare [--model PATH] [--concurrency 10] [--json out.json] [--plot out.png]``

``--servers rerankd,vllm-serve`` puts vLLM's own server (``vllm serve`` with the pooling runner,
the Qwen3-Reranker overrides and a score template of the model card's prompt) beside rerankd on the
same Qwen3-shaped model and workload: "faster than vLLM" as a command anyone can rerun.

Each server is started alone (nothing else loads the machine), driven by the same load generator
with the same requests, then stopped. Ratios are against the naive server at the same
concurrency: throughput x (higher is better) and p50 latency x (lower is better).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.servers import (
    ModelChoice,
    baseline_command,
    exit_on_sigterm,
    rerankd_command,
    scrape_metrics,
    spawn,
    split_args,
    vllm_serve_command,
)
from rerankd.bench.loadgen import (
    SCHEMA,
    add_workload_args,
    format_table,
    http_sweep,
    make_report,
    markdown_table,
    run_params,
    sweep_options,
    workload_from_args,
)

__all__ = ["main", "median_ratios", "ratios"]

SERVERS = ("naive", "executor", "rerankd", "rerankd-onnx", "vllm-serve")
#: /metrics families kept in each report: which engine ran, and what prefix sharing/caching did.
_METRICS = (
    "rerankd_engine_info",
    "rerankd_engine_prefix",
    "rerankd_engine_busy_seconds",
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
)


def ratios(reports: Sequence[dict[str, Any]], reference: str = "naive") -> list[dict[str, Any]]:
    """Per round, server and level: throughput and p50 latency relative to ``reference`` in the
    same round at the same concurrency (None where there is no reference)."""
    refs = {
        (rep.get("round", 1), lv["concurrency"]): lv
        for rep in reports
        if rep["label"] == reference
        for lv in rep["levels"]
    }
    out = []
    for rep in reports:
        for lv in rep["levels"]:
            base = refs.get((rep.get("round", 1), lv["concurrency"]))
            p50, base_p50 = lv["latency_ms"]["p50"], base["latency_ms"]["p50"] if base else None
            out.append(
                {
                    "round": rep.get("round", 1),
                    "server": rep["label"],
                    "concurrency": lv["concurrency"],
                    "tokens_per_s": lv["tokens_per_s"],
                    "p50_ms": p50,
                    "throughput_ratio": lv["tokens_per_s"] / base["tokens_per_s"]
                    if base and base["tokens_per_s"]
                    else None,
                    "p50_ratio": p50 / base_p50 if p50 and base_p50 else None,
                }
            )
    return out


def median_ratios(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The median of each server's ratios over the rounds, per concurrency."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for e in entries:
        groups.setdefault((e["server"], e["concurrency"]), []).append(e)

    def median(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    return [
        {
            "server": server,
            "concurrency": c,
            "rounds": len(group),
            "tokens_per_s": median([g["tokens_per_s"] for g in group]),
            "throughput_ratio": median([g["throughput_ratio"] for g in group]),
            "p50_ratio": median([g["p50_ratio"] for g in group]),
        }
        for (server, c), group in groups.items()
    ]


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def ratio_table(entries: Sequence[dict[str, Any]]) -> str:
    rows = [["round", "server", "clients", "tokens/s", "p50 ms", "throughput ratio", "p50 ratio"]]
    for e in entries:
        rows.append(
            [
                str(e["round"]),
                e["server"],
                str(e["concurrency"]),
                f"{e['tokens_per_s']:,.0f}",
                f"{e['p50_ms'] or 0:,.0f}",
                _x(e["throughput_ratio"]),
                _x(e["p50_ratio"]),
            ]
        )
    return markdown_table(rows)


def median_table(medians: Sequence[dict[str, Any]]) -> str:
    rows = [["server", "clients", "rounds", "median tokens/s", "throughput ratio", "p50 ratio"]]
    for m in medians:
        rows.append(
            [
                m["server"],
                str(m["concurrency"]),
                str(m["rounds"]),
                f"{m['tokens_per_s']:,.0f}",
                _x(m["throughput_ratio"]),
                _x(m["p50_ratio"]),
            ]
        )
    return markdown_table(rows)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    m = p.add_argument_group("model (the same for every server)")
    m.add_argument("--model", default=None, help="model folder (default: the embedded MiniLM)")
    m.add_argument("--format", default="auto", choices=["auto", "llm-yes-no", "cross-encoder", "bi-encoder"])
    m.add_argument("--device", default=None)
    m.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"])
    m.add_argument("--torch-threads", type=int, default=None)
    s = p.add_argument_group("servers")
    s.add_argument(
        "--servers",
        default="naive,executor,rerankd,rerankd-onnx",
        help=f"which to run, in order, of {', '.join(SERVERS)} (default: the first four; rerankd is "
        "the torch engine, the baselines' model code; rerankd-onnx the onnx engine)",
    )
    s.add_argument("--reference", default="naive", help="the server ratios are taken against")
    s.add_argument(
        "--label", default=None, help="name rerankd's report under this label (e.g. rerankd-compile)"
    )
    s.add_argument(
        "--vllm-arg", action="append", metavar="ARGS", help="extra arguments of vllm-serve (repeatable)"
    )
    s.add_argument(
        "--onnx-quantize", choices=["none", "int8"], default="int8", help="rerankd-onnx's quantize"
    )
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
    s.add_argument("--rounds", type=int, default=1, help="run the server list this many times (default 1)")
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
        # Pinned: the baselines run the torch engine's model code, so this is the same-engine arm.
        "rerankd": rerankd_command(model, ["--engine", "torch", *split_args(ns.server_arg)]),
        "rerankd-onnx": rerankd_command(
            model, ["--engine", "onnx", "--quantize", ns.onnx_quantize, *split_args(ns.server_arg)]
        ),
    }
    if "vllm-serve" in names:
        commands["vllm-serve"] = vllm_serve_command(model, split_args(ns.vllm_arg))
    reports: list[dict[str, Any]] = []
    exit_on_sigterm()
    try:
        for rnd, name in ((r + 1, n) for r in range(ns.rounds) for n in names):
            label = ns.label if name == "rerankd" and ns.label else name
            with spawn(
                label,
                commands[name],
                start_timeout=ns.start_timeout,
                log_dir=ns.log_dir,
                # vLLM's server has no /ready; its /health answers 200 once the engine is up.
                ready_path="/health" if name == "vllm-serve" else "/ready",
            ) as server:
                levels = asyncio.run(
                    http_sweep(
                        server.url + ns.route,
                        workload,
                        ns.concurrency,
                        **sweep_options(ns),
                        label=label,
                        progress=None if ns.quiet else sys.stderr,
                    )
                )
                metrics = scrape_metrics(server.url, _METRICS)
            report = make_report(
                label=label,
                target={
                    "command": server.command,
                    "route": ns.route,
                    "start_s": round(server.start_s, 1),
                    "metrics": metrics,
                },
                workload=workload,
                run=run_params(ns),
                levels=levels,
            )
            reports.append({**report, "round": rnd})
    finally:
        model.cleanup()
    entries = ratios(reports, ns.reference)
    medians = median_ratios(entries)
    print(format_table(reports))
    print()
    print(ratio_table(entries))
    if ns.rounds > 1:
        print()
        print(median_table(medians))
    if ns.json_path:
        doc = {"schema": SCHEMA, "kind": "compare", "reports": reports, "ratios": entries, "medians": medians}
        Path(ns.json_path).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"bench: wrote {ns.json_path}", file=sys.stderr)
    if ns.plot:
        from rerankd.bench.plot import plot_reports

        plot_reports(reports, Path(ns.plot), title="naive vs executor vs rerankd")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
