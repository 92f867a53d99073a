"""Throughput and p99 latency against concurrency, one line per report.

``python -m rerankd.bench.plot report.json [more.json ...] -o docs/plot.png``: draws from saved reports, so a
machine without matplotlib can measure and another can draw.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["load_reports", "main", "plot_reports"]

_METRICS = {
    "tokens_per_s": "tokens/s",
    "pairs_per_s": "pairs/s",
    "requests_per_s": "requests/s",
}


def load_reports(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Reports from files holding one report or ``{"reports": [...]}`` (compare, overhead)."""
    out: list[dict[str, Any]] = []
    for path in paths:
        doc = json.loads(path.read_text())
        out.extend(doc.get("reports", [doc]))
    return out


def plot_reports(
    reports: Sequence[dict[str, Any]], out: Path, *, metric: str = "tokens_per_s", title: str = ""
) -> bool:
    """Write the PNG; False (with a note on stderr) where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "bench: matplotlib is not installed; draw later with python -m rerankd.bench.plot",
            file=sys.stderr,
        )
        return False
    fig, (thr, p99) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100)
    for rep in reports:
        levels = sorted(rep["levels"], key=lambda lv: lv["concurrency"])
        xs = [lv["concurrency"] for lv in levels]
        label = rep.get("label") or "-"
        thr.plot(xs, [lv[metric] for lv in levels], marker="o", label=label)
        p99.plot(xs, [(lv["latency_ms"]["p99"] or 0) / 1000 for lv in levels], marker="o", label=label)
    ticks = sorted({lv["concurrency"] for rep in reports for lv in rep["levels"]})
    for ax, ylabel in ((thr, _METRICS[metric]), (p99, "p99 latency (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    thr.legend(fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rerankd.bench.plot", description=__doc__)
    p.add_argument(
        "reports", nargs="+", type=Path, help="JSON reports of python -m bench, compare or overhead"
    )
    p.add_argument("-o", "--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--metric", choices=sorted(_METRICS), default="tokens_per_s")
    p.add_argument("--title", default="")
    ns = p.parse_args(argv)
    return 0 if plot_reports(load_reports(ns.reports), ns.out, metric=ns.metric, title=ns.title) else 1


if __name__ == "__main__":
    raise SystemExit(main())
