"""Mixed traffic against one rerankd: small and large requests together, invalid and abandoned ones,
a flooding tenant beside a quiet one, and an overload of many clients; ``/health`` probed throughout.

    python -m bench.mixed [--scenarios idle,mixed,tenants,overload] [--duration 30] [--out FILE]

Each scenario reports per class of request: count, p50/p99 latency, 503s, other 5xx, client
time-outs; and ``/health`` latency. Tenants are told apart by client address (127.0.0.1 and
127.0.0.2), as rerankd does when API keys are off. The server runs the embedded MiniLM on CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.servers import ModelChoice, exit_on_sigterm, rerankd_command, spawn

__all__ = ["main"]

SCENARIOS = ("idle", "mixed", "tenants", "overload")
BAD_BODIES = [
    b"[" * 1000 + b"]" * 1000,  # nested 1,000 deep
    b'{"query": "q", "documents": "not a list"}',
    b'{"query": 1, "documents": ["a"]}',
    b'{"documents": ["a"]}',
    b"{not json",
]


def documents(n: int, words: int = 40, start: int = 0) -> list[str]:
    return [
        f"document {start + i} is about topic {(start + i) % 7}. " + "filler words here " * (words // 3)
        for i in range(n)
    ]


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    timeouts: int = 0

    def add(self, status: int | str, seconds: float) -> None:
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        if status == 200:
            self.latencies.append(seconds)

    def report(self) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def q(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1) if lat else None

        five = sum(n for s, n in self.statuses.items() if s.startswith("5") and s != "503")
        return {
            "ok": len(lat),
            "p50_ms": q(0.5),
            "p99_ms": q(0.99),
            "max_ms": round(lat[-1] * 1000, 1) if lat else None,
            "503": self.statuses.get("503", 0),
            "other_5xx": five,
            "4xx": sum(n for s, n in self.statuses.items() if s.startswith("4")),
            "client_timeouts": self.timeouts,
        }


async def loop_requests(
    until: float,
    tally: Tally,
    send: Callable[[], Awaitable[httpx.Response]],
    *,
    pause: float = 0.0,
    honour_retry_after: bool = True,
) -> None:
    while time.monotonic() < until:
        started = time.monotonic()
        try:
            r = await send()
        except httpx.TimeoutException:
            tally.timeouts += 1
            continue
        except httpx.HTTPError:
            tally.add("conn-error", 0.0)
            continue
        tally.add(r.status_code, time.monotonic() - started)
        if r.status_code == 503 and honour_retry_after:
            await asyncio.sleep(
                min(float(r.headers.get("retry-after", "1")), max(0.0, until - time.monotonic()))
            )
        elif pause:
            await asyncio.sleep(pause)


def client(
    url: str, *, address: str = "127.0.0.1", seconds: float = 60.0, connections: int = 256
) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections)
    transport = httpx.AsyncHTTPTransport(local_address=address, limits=limits)
    return httpx.AsyncClient(base_url=url, timeout=seconds, transport=transport)


def rerank(c: httpx.AsyncClient, n: int, start: int = 0) -> Callable[[], Awaitable[httpx.Response]]:
    body = {"query": "which topic?", "documents": documents(n, start=start)}
    return lambda: c.post("/v2/rerank", json=body)


async def probe_health(url: str, until: float, tally: Tally) -> None:
    async with client(url, seconds=10) as c:
        await loop_requests(until, tally, lambda: c.get("/health"), pause=0.05)


async def batch_seconds(url: str) -> float | None:
    """Mean seconds per forward pass so far, from the server's metrics."""
    async with client(url) as c:
        text = (await c.get("/metrics")).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        for name in ("rerankd_engine_busy_seconds_total", "rerankd_engine_batches_total"):
            if line.startswith(name):
                values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    batches = values.get("rerankd_engine_batches_total")
    return round(values["rerankd_engine_busy_seconds_total"] / batches, 3) if batches else None


async def idle(url: str, duration: float) -> dict[str, Any]:
    small, health = Tally(), Tally()
    until = time.monotonic() + duration
    async with client(url) as c:
        await asyncio.gather(loop_requests(until, small, rerank(c, 2)), probe_health(url, until, health))
    return {"small": small.report(), "health": health.report()}


async def mixed(url: str, duration: float, small_clients: int = 4) -> dict[str, Any]:
    tallies = {k: Tally() for k in ("small", "large", "invalid", "abandoned", "health")}
    until = time.monotonic() + duration
    async with client(url, seconds=300) as c, client(url, seconds=0.5) as impatient:
        bad = iter(BAD_BODIES * 10_000)

        def invalid() -> Awaitable[httpx.Response]:
            return c.post("/v2/rerank", content=next(bad), headers={"content-type": "application/json"})

        await asyncio.gather(
            loop_requests(until, tallies["large"], rerank(c, 800)),
            *(
                loop_requests(until, tallies["small"], rerank(c, 2 + i, start=i))
                for i in range(small_clients)
            ),
            loop_requests(until, tallies["invalid"], invalid, pause=0.2),
            loop_requests(until, tallies["abandoned"], rerank(impatient, 200), pause=0.5),
            probe_health(url, until, tallies["health"]),
        )
    return {k: t.report() for k, t in tallies.items()}


async def tenants(url: str, duration: float, flood_clients: int = 16) -> dict[str, Any]:
    flood, quiet, health = Tally(), Tally(), Tally()
    until = time.monotonic() + duration
    async with client(url, seconds=300) as a, client(url, address="127.0.0.2", seconds=300) as b:
        await asyncio.gather(
            *(loop_requests(until, flood, rerank(a, 100, start=i)) for i in range(flood_clients)),
            loop_requests(until, quiet, rerank(b, 5)),
            probe_health(url, until, health),
        )
    return {"flooding": flood.report(), "quiet": quiet.report(), "health": health.report()}


async def overload(url: str, duration: float, clients: int = 200, patience: float = 60.0) -> dict[str, Any]:
    tally, health = Tally(), Tally()
    until = time.monotonic() + duration
    async with client(url, seconds=patience, connections=clients + 8) as c:
        await asyncio.gather(
            *(loop_requests(until, tally, rerank(c, 20, start=i)) for i in range(clients)),
            probe_health(url, until, health),
        )
    return {"clients": tally.report(), "health": health.report(), "client_timeout_s": patience}


RUNNERS: dict[str, Callable[[str, float], Awaitable[dict[str, Any]]]] = {
    "idle": idle,
    "mixed": mixed,
    "tenants": tenants,
    "overload": overload,
}


async def run(url: str, scenarios: list[str], duration: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in scenarios:
        print(f"bench.mixed: {name} for {duration:g} s", file=sys.stderr)
        out[name] = await RUNNERS[name](url, duration)
        out[name]["mean_batch_s"] = await batch_seconds(url)
        print(json.dumps({name: out[name]}), file=sys.stderr)
        await asyncio.sleep(2)  # let the queue drain between scenarios
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.mixed", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--duration", type=float, default=30.0, help="seconds per scenario")
    p.add_argument("--server-arg", action="append", default=[], help="extra rerankd serve arguments")
    p.add_argument("--url", help="measure a server already running there instead of starting one")
    p.add_argument("--out", type=Path)
    ns = p.parse_args(argv)
    scenarios = [s for s in ns.scenarios.split(",") if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    exit_on_sigterm()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    extra = [part for arg in ns.server_arg for part in arg.split()]
    with contextlib.ExitStack() as stack:
        url = (
            ns.url
            or stack.enter_context(spawn("rerankd", rerankd_command(ModelChoice(device="cpu"), extra))).url
        )
        results = asyncio.run(run(url, scenarios, ns.duration))
    report = {
        "bench": "mixed",
        "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "server_args": extra,
        "duration_s": ns.duration,
        "results": results,
        "idle_small_p99_ms": results.get("idle", {}).get("small", {}).get("p99_ms"),
    }
    text = json.dumps(report, indent=2)
    if ns.out:
        ns.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
