"""One table from several ``bench.compare`` result files: which engine ran, start-up, throughput,
and what prefix sharing (rerankd) or prefix caching (vLLM) did.

``python -m bench.summary out/rerankd-*.json out/vllm-serve.json [--json out/side-by-side.json]``
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rerankd.bench.loadgen import markdown_table

__all__ = ["main", "summarize"]


def _sum(metrics: dict[str, float], name: str) -> float | None:
    values = [v for k, v in metrics.items() if k == name or k.startswith(name + "{")]
    return sum(values) if values else None


def _engine(label: str, metrics: dict[str, float]) -> str:
    for key in metrics:
        if key.startswith("rerankd_engine_info{") and (m := re.search(r'engine="([^"]*)"', key)):
            return m.group(1)
    return "vllm serve" if label.startswith("vllm") else "?"


def summarize(docs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for doc in docs:
        for rep in doc["reports"]:
            target = rep.get("target", {})
            metrics: dict[str, float] = target.get("metrics") or {}
            queries = _sum(metrics, "vllm:prefix_cache_queries_total")
            hits = _sum(metrics, "vllm:prefix_cache_hits_total")
            for lv in rep["levels"]:
                rows.append(
                    {
                        "label": rep["label"],
                        "engine": _engine(rep["label"], metrics),
                        "start_s": target.get("start_s"),
                        "concurrency": lv["concurrency"],
                        "tokens_per_s": lv["tokens_per_s"],
                        "p50_ms": lv["latency_ms"]["p50"],
                        "prefix_saved_tokens": _sum(metrics, "rerankd_engine_prefix_saved_tokens_total"),
                        "prefix_cache_hit_share": hits / queries if hits is not None and queries else None,
                    }
                )
    return rows


def _table(rows: Sequence[dict[str, Any]]) -> str:
    def fmt(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    out = [
        ["server", "engine", "start s", "clients", "tokens/s", "p50 ms", "prefix saved", "vLLM prefix hits"]
    ]
    for r in rows:
        out.append(
            [
                r["label"],
                r["engine"],
                fmt(r["start_s"], ".1f"),
                str(r["concurrency"]),
                fmt(r["tokens_per_s"], ",.0f"),
                fmt(r["p50_ms"], ",.0f"),
                fmt(r["prefix_saved_tokens"], ",.0f"),
                fmt(r["prefix_cache_hit_share"], ".0%"),
            ]
        )
    return markdown_table(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.summary", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--json", dest="json_path", type=Path)
    ns = p.parse_args(argv)
    docs = []
    for path in ns.files:
        if not path.is_file():
            print(f"summary: {path} missing, skipped", file=sys.stderr)
            continue
        docs.append(json.loads(path.read_text()))
    rows = summarize(docs)
    print(_table(rows))
    if ns.json_path:
        ns.json_path.write_text(json.dumps({"kind": "side-by-side", "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
