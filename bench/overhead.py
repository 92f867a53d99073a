"""What HTTP costs: rerankd over HTTP vs the same engine called in-process, at saturation.

``python -m bench.overhead [--model PATH] [--concurrency 16] [--rounds 2] [--json out.json]``

In-process, ``concurrency`` asyncio tasks call ``engine.score`` of an engine built from exactly the
settings ``rerankd serve`` gets (model, ``--server-arg``s), with the load generator's requests. Over
HTTP, the same requests go to a ``rerankd serve`` child process. The two alternate for ``--rounds``
rounds, never at the same time, so drift on a shared machine hits both alike. For each HTTP round
the server's CPU time is split by thread (Linux): its main thread runs the event loop, so its
share is what HTTP handling costs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from bench.servers import ModelChoice, exit_on_sigterm, rerankd_command, spawn, split_args
from rerankd.bench.loadgen import (
    SCHEMA,
    LevelResult,
    RequestFailed,
    Sender,
    add_workload_args,
    drive,
    format_table,
    http_sweep,
    make_report,
    markdown_table,
    run_params,
    sweep_options,
    workload_from_args,
)
from rerankd.bench.workload import Workload

__all__ = ["cpu_split", "in_process_sweep", "main", "summarize", "thread_cpu"]


async def in_process_sweep(
    serve_args: Sequence[str],
    workload: Workload,
    levels: Sequence[int],
    *,
    duration: float,
    warmup: float,
    max_requests: int | None = None,
    progress: TextIO | None = sys.stderr,
) -> list[LevelResult]:
    """The load generator's closed loop, calling the engine of ``rerankd serve SERVE_ARGS`` directly."""
    from rerankd.adapters.formats import EncodeOptions
    from rerankd.cli import serve_settings
    from rerankd.errors import RerankdError
    from rerankd.service import RerankService

    service = RerankService(serve_settings(serve_args))
    await service.start()
    engine = service.engines[service.default_model]
    opts = EncodeOptions()  # what a /v2/rerank body without options asks for

    async def send(k: int) -> tuple[int, int]:
        query, docs = workload.request(k)
        try:
            result = await engine.score(query, docs, opts)
        except RerankdError as exc:
            raise RequestFailed(type(exc).__name__) from exc
        return len(docs), result.n_tokens

    sender: Sender = send
    results: list[LevelResult] = []
    next_k = 0
    try:
        for c in levels:
            result, next_k = await drive(
                sender,
                concurrency=c,
                duration=duration,
                warmup=warmup,
                max_requests=max_requests,
                first_request=next_k,
                label="in-process",
                progress=progress,
            )
            results.append(result)
    finally:
        await service.close()
    return results


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds used so far by each thread of a process (Linux ``/proc``; empty elsewhere)."""
    out: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return out


def cpu_split(before: dict[int, float], after: dict[int, float], pid: int) -> dict[str, float]:
    """Where the server's CPU went during the run: the main thread runs the event loop (HTTP
    parsing, routing, JSON, responses); the rest is the scheduler, torch's and tokenizer threads."""
    used = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    total = sum(used.values())
    loop = used.get(pid, 0.0)
    return {"total_s": total, "event_loop_s": loop, "event_loop_share": loop / total if total else 0.0}


def summarize(reports: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per concurrency: each HTTP round against the in-process round just before it, the median
    of those ratios (robust to one disturbed round on a shared machine) and the means."""
    out = []
    levels = sorted({lv["concurrency"] for rep in reports for lv in rep["levels"]})
    for c in levels:
        side: dict[str, list[float]] = {"in-process": [], "http": []}
        for rep in reports:
            side[rep["label"]] += [lv["tokens_per_s"] for lv in rep["levels"] if lv["concurrency"] == c]
        inproc, http = side["in-process"], side["http"]
        per_round = [h / i for i, h in zip(inproc, http, strict=False) if i]
        out.append(
            {
                "concurrency": c,
                "in_process_tokens_per_s": statistics.fmean(inproc) if inproc else 0.0,
                "http_tokens_per_s": statistics.fmean(http) if http else 0.0,
                "round_ratios": per_round,
                "http_vs_in_process": statistics.median(per_round) if per_round else None,
            }
        )
    return out


def _cpu_lines(reports: Sequence[dict[str, Any]]) -> str:
    lines = []
    for i, rep in enumerate(r for r in reports if "server_cpu" in r):
        cpu = rep["server_cpu"]
        lines.append(
            f"HTTP round {i + 1}: the server used {cpu['total_s']:.1f} CPU s, its event loop "
            f"{cpu['event_loop_s']:.2f} s ({cpu['event_loop_share']:.1%}); the load generator "
            f"{cpu['client_s']:.2f} s"
        )
    return "\n".join(lines)


def _summary_table(summary: Sequence[dict[str, Any]]) -> str:
    rows = [
        [
            "clients",
            "in-process tokens/s",
            "HTTP tokens/s",
            "HTTP / in-process by round",
            "median",
            "overhead",
        ]
    ]
    for s in summary:
        ratio = s["http_vs_in_process"]
        rows.append(
            [
                str(s["concurrency"]),
                f"{s['in_process_tokens_per_s']:,.0f}",
                f"{s['http_tokens_per_s']:,.0f}",
                " ".join(f"{r:.3f}" for r in s["round_ratios"]),
                f"{ratio:.3f}" if ratio else "-",
                f"{(1 - ratio) * 100:+.1f}%" if ratio else "-",
            ]
        )
    return markdown_table(rows)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model folder (default: the embedded MiniLM)")
    p.add_argument("--format", default="auto", choices=["auto", "llm-yes-no", "cross-encoder", "bi-encoder"])
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--torch-threads", type=int, default=None)
    p.add_argument("--server-arg", action="append", metavar="ARGS", help="extra rerankd serve arguments")
    p.add_argument("--rounds", type=int, default=2, help="in-process/HTTP pairs to run (default 2)")
    p.add_argument("--start-timeout", type=float, default=900.0)
    p.add_argument("--log-dir", type=Path, default=None)
    p.add_argument("--json", dest="json_path", metavar="PATH")
    add_workload_args(p, concurrency="16", duration=60.0, warmup=10.0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    workload = workload_from_args(ns)
    model = ModelChoice(ns.model, ns.format, ns.device, ns.dtype, ns.torch_threads)
    progress = None if ns.quiet else sys.stderr
    reports: list[dict[str, Any]] = []
    exit_on_sigterm()
    try:
        # The in-process engine takes exactly the arguments the server is started with.
        serve_args = [*model.rerankd_model_args(), *model.common_args(), *split_args(ns.server_arg)]
        command = rerankd_command(model, split_args(ns.server_arg))
        for _ in range(ns.rounds):
            levels = asyncio.run(
                in_process_sweep(
                    serve_args,
                    workload,
                    ns.concurrency,
                    duration=ns.duration,
                    warmup=ns.warmup,
                    max_requests=ns.requests,
                    progress=progress,
                )
            )
            gc.collect()  # let the in-process model go before the server loads its own
            reports.append(
                make_report(
                    label="in-process",
                    target={"serve_args": serve_args},
                    workload=workload,
                    run=run_params(ns),
                    levels=levels,
                )
            )
            with spawn("rerankd", command, start_timeout=ns.start_timeout, log_dir=ns.log_dir) as server:
                before, client_before = thread_cpu(server.process.pid), time.process_time()
                levels = asyncio.run(
                    http_sweep(
                        server.url + "/v2/rerank",
                        workload,
                        ns.concurrency,
                        **sweep_options(ns),
                        label="http",
                        progress=progress,
                    )
                )
                cpu = cpu_split(before, thread_cpu(server.process.pid), server.process.pid)
                # The load generator shares the machine: its CPU is part of what HTTP costs here.
                cpu["client_s"] = time.process_time() - client_before
            report = make_report(
                label="http",
                target={"command": server.command, "route": "/v2/rerank"},
                workload=workload,
                run=run_params(ns),
                levels=levels,
            )
            reports.append({**report, "server_cpu": cpu})
    finally:
        model.cleanup()
    summary = summarize(reports)
    print(format_table(reports))
    print()
    print(_summary_table(summary))
    print(_cpu_lines(reports))
    if ns.json_path:
        doc = {"schema": SCHEMA, "kind": "overhead", "reports": reports, "summary": summary}
        Path(ns.json_path).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"bench: wrote {ns.json_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
