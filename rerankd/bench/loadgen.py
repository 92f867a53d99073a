"""Closed-loop load generator for rerank servers (``rerankd bench``, also ``python -m bench`` in a checkout).

``rerankd bench --url http://127.0.0.1:8080 --concurrency 1,4,16,64 --json out.json --plot out.png``

Each concurrency level runs ``concurrency`` workers that send requests back to back for a warm-up
period and then a measured window. Requests still in flight when the window closes are awaited, so
the next level starts on an idle server. Throughput counts every request with the share of its
lifetime that falls inside the window (a server that answers a whole batch at once is measured as
steadily as one that answers one request at a time); latency percentiles are over the requests that
ended inside the window. Token counts are the servers' own (``meta.tokens.input_tokens`` or
``usage.total_tokens``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from rerankd.bench.workload import Workload, parse_range

__all__ = [
    "SCHEMA",
    "LevelResult",
    "RequestFailed",
    "Sender",
    "add_workload_args",
    "drive",
    "format_table",
    "http_sweep",
    "main",
    "make_report",
    "markdown_table",
    "parse_levels",
    "percentile",
    "run_params",
    "sweep_options",
    "workload_from_args",
    "write_outputs",
]

SCHEMA = "rerankd-bench/1"
_NUMBER = re.compile(r"^[-+]?[\d,.]+[x%]?$|^-$")


class RequestFailed(Exception):
    """A request that got no usable answer; ``kind`` groups failures in the report."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


#: Sends request number ``k`` and returns (pairs scored, tokens the server counted).
Sender = Callable[[int], Awaitable[tuple[int, int]]]


def percentile(ordered: Sequence[float], p: float) -> float | None:
    """Linear interpolation between closest ranks; ``ordered`` must be sorted."""
    if not ordered:
        return None
    pos = (len(ordered) - 1) * p / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class LevelResult:
    concurrency: int
    requests: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    window_s: float = 0.0
    requests_per_s: float = 0.0
    pairs_per_s: float = 0.0
    tokens_per_s: float = 0.0
    tokens_per_request: float = 0.0
    latency_ms: dict[str, float | None] = field(default_factory=dict)

    @classmethod
    def from_samples(
        cls,
        concurrency: int,
        window: tuple[float, float],
        samples: Sequence[tuple[float, float, int, int]],
        errors: dict[str, int],
    ) -> LevelResult:
        """``samples`` holds (start, end, pairs, tokens) of successful requests that overlap the
        window. Each counts with the share of its lifetime inside the window: a server that
        finishes requests in bursts (a batch at a time) is then measured as steadily as one that
        finishes them one by one. Latencies are those of the requests that ended in the window."""
        start, end = window
        length = end - start
        done = sorted((t1 - t0) * 1000 for t0, t1, _, _ in samples if start <= t1 <= end)
        requests = pairs = tokens = 0.0
        for t0, t1, n_pairs, n_tokens in samples:
            share = (min(t1, end) - max(t0, start)) / (t1 - t0) if t1 > t0 else float(start <= t1 <= end)
            if share > 0:
                requests += share
                pairs += share * n_pairs
                tokens += share * n_tokens
        per_s = 1 / length if length > 0 else 0.0
        return cls(
            concurrency=concurrency,
            requests=len(done),
            errors=sum(errors.values()),
            error_kinds=dict(errors),
            window_s=round(length, 3),
            requests_per_s=requests * per_s,
            pairs_per_s=pairs * per_s,
            tokens_per_s=tokens * per_s,
            tokens_per_request=tokens / requests if requests else 0.0,
            latency_ms={
                "mean": sum(done) / len(done) if done else None,
                "p50": percentile(done, 50),
                "p95": percentile(done, 95),
                "p99": percentile(done, 99),
                "max": done[-1] if done else None,
            },
        )


class _Progress:
    """One status line on stderr: rewritten in place on a terminal, every few seconds otherwise."""

    def __init__(self, label: str, stream: TextIO | None) -> None:
        self.label = label
        self.stream = stream
        self.tty = bool(stream and stream.isatty())
        self.interval = 0.5 if self.tty else 5.0

    def show(self, text: str, *, final: bool = False) -> None:
        if self.stream is None:
            return
        line = f"[{self.label}] {text}" if self.label else text
        if self.tty:
            self.stream.write("\r\x1b[K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


class _Level:
    """The state of one running level: workers, the measured window and its samples."""

    def __init__(
        self, send: Sender, warmup: float, duration: float, max_requests: int | None, k: int
    ) -> None:
        self.send = send
        self.warmup, self.duration, self.max_requests = warmup, duration, max_requests
        self.next_k = k
        self.samples: list[tuple[float, float, int, int]] = []
        self.latencies: list[float] = []  # of successful requests that ended in the window
        self.errors: dict[str, int] = {}
        self.started = time.perf_counter()
        self.t_warm = self.started + warmup
        self.t_end = self.t_warm + duration
        self.closed_at: float | None = None  # set when max_requests closes the window early
        self.in_flight = 0

    def _record(self, t0: float, t1: float, outcome: tuple[int, int] | str) -> None:
        if t1 < self.t_warm:
            return
        if not isinstance(outcome, str):
            # Kept even after the window closes: the part of its life inside the window counts.
            self.samples.append((t0, t1, *outcome))
        if t1 > self.t_end or self.closed_at is not None:
            return
        if isinstance(outcome, str):
            self.errors[outcome] = self.errors.get(outcome, 0) + 1
        else:
            self.latencies.append(t1 - t0)
        if self.max_requests and len(self.latencies) + sum(self.errors.values()) >= self.max_requests:
            self.closed_at = t1

    async def worker(self) -> None:
        while self.closed_at is None and time.perf_counter() < self.t_end:
            k, self.next_k = self.next_k, self.next_k + 1
            t0 = time.perf_counter()
            self.in_flight += 1
            try:
                outcome: tuple[int, int] | str = await self.send(k)
            except RequestFailed as exc:
                outcome = exc.kind
            finally:
                self.in_flight -= 1
            self._record(t0, time.perf_counter(), outcome)
            if isinstance(outcome, str):
                await asyncio.sleep(0.05)  # a failing server answers fast: do not spin on it

    def status(self) -> str:
        now = time.perf_counter()
        if now < self.t_warm:
            return f"warm-up {now - self.started:5.1f}/{self.warmup:g} s"
        if self.closed_at is None and now < self.t_end:
            p50 = percentile(sorted(x * 1000 for x in self.latencies), 50)
            rate = len(self.latencies) / max(now - self.t_warm, 1e-9)
            return (
                f"measuring {now - self.t_warm:5.1f}/{self.duration:g} s: {len(self.latencies)} ok, "
                f"{sum(self.errors.values())} failed, {rate:.2f} req/s, p50 {p50 or 0:.0f} ms"
            )
        return f"waiting for {self.in_flight} requests in flight"

    def result(self, concurrency: int) -> LevelResult:
        window = (self.t_warm, self.closed_at or self.t_end)
        return LevelResult.from_samples(concurrency, window, self.samples, self.errors)


async def drive(
    send: Sender,
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    max_requests: int | None = None,
    first_request: int = 0,
    label: str = "",
    progress: TextIO | None = sys.stderr,
) -> tuple[LevelResult, int]:
    """Run one level; return its result and the number of the next unsent request."""
    level = _Level(send, warmup, duration, max_requests, first_request)
    bar = _Progress(f"{label} c={concurrency}".strip(), progress)

    async def report() -> None:
        while True:
            await asyncio.sleep(bar.interval)
            bar.show(level.status())

    ticker = asyncio.create_task(report())
    try:
        await asyncio.gather(*(level.worker() for _ in range(concurrency)))
    finally:
        ticker.cancel()
    result = level.result(concurrency)
    p50 = result.latency_ms["p50"]
    bar.show(
        f"{result.requests} ok, {result.errors} failed in {result.window_s:.1f} s: "
        f"{result.requests_per_s:.2f} req/s, {result.tokens_per_s:,.0f} tokens/s, p50 {p50 or 0:.0f} ms",
        final=True,
    )
    if not result.requests or result.window_s < 3 * (p50 or 0) / 1000:
        # Few completions per worker: boundary effects dominate the rates.
        bar.show("warning: the window is short for this latency; raise --duration", final=True)
    return result, level.next_k


# -- HTTP ----------------------------------------------------------------------------------


def _tokens_of(data: Any) -> int:
    if isinstance(data, dict):
        meta = data.get("meta")
        if isinstance(meta, dict) and isinstance(meta.get("tokens"), dict):
            return int(meta["tokens"].get("input_tokens") or 0)
        usage = data.get("usage")
        if isinstance(usage, dict):
            return int(usage.get("total_tokens") or 0)
    return 0


def _http_sender(client: httpx.AsyncClient, url: str, workload: Workload) -> Sender:
    headers = {"content-type": "application/json"}

    async def send(k: int) -> tuple[int, int]:
        body = json.dumps(workload.body(k)).encode()
        try:
            r = await client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise RequestFailed(type(exc).__name__) from exc
        if r.status_code != 200:
            raise RequestFailed(f"http {r.status_code}")
        return workload.documents, _tokens_of(r.json())

    return send


async def _preflight(client: httpx.AsyncClient, url: str, workload: Workload) -> None:
    """One request before measuring: a wrong URL or route fails here with the server's answer."""
    try:
        r = await client.post(url, json=workload.body(-1))
    except httpx.HTTPError as exc:
        raise SystemExit(f"bench: cannot reach {url}: {type(exc).__name__}: {exc}") from exc
    if r.status_code != 200:
        raise SystemExit(f"bench: {url} answered {r.status_code}: {r.text[:500]}")
    if not _tokens_of(r.json()):
        print(f"bench: warning: {url} reports no token counts; tokens/s will read 0", file=sys.stderr)


async def http_sweep(
    url: str,
    workload: Workload,
    levels: Sequence[int],
    *,
    duration: float,
    warmup: float,
    max_requests: int | None = None,
    request_timeout: float = 300.0,
    label: str = "",
    progress: TextIO | None = sys.stderr,
) -> list[LevelResult]:
    """Run each concurrency level in turn against ``url`` (the full route URL)."""
    results: list[LevelResult] = []
    next_k = 0
    async with httpx.AsyncClient(timeout=request_timeout) as probe:
        await _preflight(probe, url, workload)
    for c in levels:
        # One pooled connection per worker: HTTP/1.1 keep-alive, no connection set-up per request.
        limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
        async with httpx.AsyncClient(timeout=request_timeout, limits=limits) as client:
            result, next_k = await drive(
                _http_sender(client, url, workload),
                concurrency=c,
                duration=duration,
                warmup=warmup,
                max_requests=max_requests,
                first_request=next_k,
                label=label,
                progress=progress,
            )
        results.append(result)
    return results


# -- reports -------------------------------------------------------------------------------


def make_report(
    *,
    label: str,
    target: dict[str, Any],
    workload: Workload,
    run: dict[str, Any],
    levels: Sequence[LevelResult],
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "label": label,
        "target": target,
        "workload": workload.describe(),
        "run": {
            **run,
            "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "levels": [asdict(r) for r in levels],
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def format_table(reports: Sequence[dict[str, Any]]) -> str:
    """One row per (report, level), aligned for a terminal or a Markdown page."""
    head = ["server", "clients", "req/s", "pairs/s", "tokens/s", "p50 ms", "p95 ms", "p99 ms", "ok", "failed"]
    rows = [head]
    for rep in reports:
        for lv in rep["levels"]:
            lat = lv["latency_ms"]
            rows.append(
                [
                    rep.get("label") or "-",
                    str(lv["concurrency"]),
                    f"{lv['requests_per_s']:,.2f}",
                    f"{lv['pairs_per_s']:,.1f}",
                    f"{lv['tokens_per_s']:,.0f}",
                    _ms(lat["p50"]),
                    _ms(lat["p95"]),
                    _ms(lat["p99"]),
                    str(lv["requests"]),
                    str(lv["errors"]),
                ]
            )
    return markdown_table(rows)


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    """Aligned Markdown: numeric columns to the right, text columns to the left."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    numeric = [all(_NUMBER.match(r[i]) for r in rows[1:]) for i in range(len(widths))]

    def line(cells: Sequence[str]) -> str:
        padded = (c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True))
        return "| " + " | ".join(padded) + " |"

    sep = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(rows[0]), sep, *(line(r) for r in rows[1:])])


def write_outputs(reports: Sequence[dict[str, Any]], json_path: str | None, plot_path: str | None) -> None:
    if json_path:
        doc: Any = reports[0] if len(reports) == 1 else {"schema": SCHEMA, "reports": list(reports)}
        Path(json_path).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"bench: wrote {json_path}", file=sys.stderr)
    if plot_path:
        from rerankd.bench.plot import plot_reports

        if plot_reports(reports, Path(plot_path)):
            print(f"bench: wrote {plot_path}", file=sys.stderr)


# -- command line --------------------------------------------------------------------------


def parse_levels(text: str) -> list[int]:
    levels = [int(x) for x in text.split(",") if x.strip()]
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of positive integers, got {text!r}"
        )
    return levels


def add_workload_args(
    p: argparse.ArgumentParser, *, concurrency: str, duration: float, warmup: float
) -> None:
    """The options every benchmark shares: what a request holds and how long each level runs."""
    g = p.add_argument_group("workload")
    g.add_argument("--documents", type=int, default=20, help="documents per request (default 20)")
    g.add_argument(
        "--doc-tokens",
        type=parse_range,
        default=(200, 200),
        metavar="N|MIN-MAX",
        help="document length in words ≈ tokens, fixed or uniform (default 200)",
    )
    g.add_argument("--query-tokens", type=int, default=12, help="query length in words (default 12)")
    g.add_argument("--repeat", type=float, default=0.0, help="share of documents drawn from a pool (0..1)")
    g.add_argument("--query-pool", type=int, default=16, help="distinct queries (default 16)")
    g.add_argument("--doc-pool", type=int, default=64, help="pooled documents per query (default 64)")
    g.add_argument("--seed", type=int, default=0)
    r = p.add_argument_group("run")
    r.add_argument(
        "--concurrency",
        type=parse_levels,
        default=parse_levels(concurrency),
        metavar="N[,N...]",
        help=f"concurrent clients; a list runs a sweep (default {concurrency})",
    )
    r.add_argument(
        "--duration", type=float, default=duration, help=f"measured seconds per level ({duration:g})"
    )
    r.add_argument("--warmup", type=float, default=warmup, help=f"unmeasured seconds per level ({warmup:g})")
    r.add_argument("--requests", type=int, default=None, help="end a level after this many measured requests")
    r.add_argument("--timeout", type=float, default=300.0, help="seconds per request (default 300)")
    r.add_argument("--quiet", action="store_true", help="no progress on stderr")


def workload_from_args(ns: argparse.Namespace, model: str | None = None) -> Workload:
    return Workload(
        documents=ns.documents,
        doc_words=ns.doc_tokens,
        query_words=ns.query_tokens,
        repeat=ns.repeat,
        query_pool=ns.query_pool,
        doc_pool=ns.doc_pool,
        seed=ns.seed,
        model=model,
    )


def sweep_options(ns: argparse.Namespace) -> dict[str, Any]:
    """:func:`http_sweep`'s keyword options from the flags every bench command shares."""
    return {
        "duration": ns.duration,
        "warmup": ns.warmup,
        "max_requests": ns.requests,
        "request_timeout": ns.timeout,
    }


def run_params(ns: argparse.Namespace) -> dict[str, Any]:
    return {
        "duration_s": ns.duration,
        "warmup_s": ns.warmup,
        "max_requests": ns.requests,
        "timeout_s": ns.timeout,
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Load generator for rerank servers (Cohere /v1 and /v2 rerank, Jina /rerank).",
    )
    p.add_argument("--url", default="http://127.0.0.1:8080", help="server base URL")
    p.add_argument("--route", default="/v2/rerank", help="route (default /v2/rerank)")
    p.add_argument("--model", default=None, help="model field of each request (default: omitted)")
    p.add_argument("--label", default="", help="name of this run in tables and plots")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="write the report as JSON")
    p.add_argument("--plot", metavar="PNG", help="draw throughput and p99 latency against concurrency")
    add_workload_args(p, concurrency="1,4,16,64", duration=30.0, warmup=5.0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    try:
        workload = workload_from_args(ns, ns.model)
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    url = ns.url.rstrip("/") + "/" + ns.route.lstrip("/")
    label = ns.label or url
    results = asyncio.run(
        http_sweep(
            url,
            workload,
            ns.concurrency,
            **sweep_options(ns),
            label=ns.label,
            progress=None if ns.quiet else sys.stderr,
        )
    )
    report = make_report(
        label=label,
        target={"url": ns.url, "route": ns.route, "model": ns.model},
        workload=workload,
        run=run_params(ns),
        levels=results,
    )
    print(format_table([report]))
    write_outputs([report], ns.json_path, ns.plot)
    return 0
