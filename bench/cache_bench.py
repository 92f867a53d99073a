"""Cache benchmark: 100-document requests on the embedded model, fully cached vs uncached.

    python -m bench.cache_bench [--backend redis|memory] [--clients 10] [--out results.json]

Starts a private Redis (``--backend redis``) and ``rerankd serve`` on free loopback ports, then
drives them with a closed-loop load generator: ``--clients`` keep-alive connections, each sending
its next request as soon as the previous answer arrived. Phases:

- uncached: every request has a query never seen before, so all 100 pairs miss and are scored
  (and written back, as in production);
- cached: one request repeated, every pair served from the cache (``X-Cache-Hits: 100/100``
  is checked on every answer), with ``--clients`` clients and with one client.

Prints a table and writes JSON: requests/s, latency percentiles, CPU seconds per request of
the server, Redis and the load generator (all three share this machine's cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.servers import redis_server, rerankd_server

WORDS = tuple(
    [
        "city",
        "river",
        "museum",
        "capital",
        "france",
        "paris",
        "europe",
        "history",
        "art",
        "bridge",
        "tower",
        "cathedral",
        "market",
        "station",
        "garden",
        "palace",
        "square",
        "street",
        "night",
        "food",
        "wine",
        "bread",
        "cheese",
        "train",
        "airport",
        "hotel",
        "school",
        "university",
        "library",
        "theatre",
        "music",
        "opera",
        "painting",
        "sculpture",
        "revolution",
        "king",
        "queen",
        "republic",
    ]
)


def documents(n: int, seed: int = 7) -> list[str]:
    """``n`` distinct documents of about 40 words (~60 tokens each for MiniLM)."""
    rng = random.Random(seed)
    return [f"Doc {i}: " + " ".join(rng.choices(WORDS, k=40)) + "." for i in range(n)]


def http_request(body: bytes, path: str = "/v2/rerank") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def body(query: str, docs: list[str]) -> bytes:
    return json.dumps({"model": "all-MiniLM-L6-v2", "query": query, "documents": docs}).encode()


@dataclass
class Phase:
    name: str
    clients: int
    seconds: float
    requests: int = 0
    req_per_s: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    #: CPU seconds per request, by process.
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[i]


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
    payload = await reader.readexactly(int(headers[b"content-length"]))
    return status, headers, payload


async def _client(
    port: int,
    next_request: Callable[[], bytes],
    stop_at: float,
    latencies: list[float],
    errors: Counter[str],
    expect_hits: bytes | None,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            request = next_request()
            started = time.perf_counter()
            writer.write(request)
            status, headers, _ = await _read_response(reader)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                errors[f"status {status}"] += 1
            elif expect_hits is not None and headers.get(b"x-cache-hits") != expect_hits:
                errors["not fully cached"] += 1
    finally:
        writer.close()
        await writer.wait_closed()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_phase(
    phase: Phase,
    port: int,
    make_request: Callable[[], bytes],
    pids: dict[str, int],
    expect_hits: bytes | None = None,
) -> Phase:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    cpu_before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    own_before = time.process_time()
    started = time.perf_counter()
    stop_at = started + phase.seconds
    await asyncio.gather(
        *(_client(port, make_request, stop_at, latencies, errors, expect_hits) for _ in range(phase.clients))
    )
    elapsed = time.perf_counter() - started
    n = len(latencies)
    cpu = {name: _cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    cpu["load generator"] = time.process_time() - own_before
    latencies.sort()
    phase.requests = n
    phase.req_per_s = round(n / elapsed, 1)
    for q in (50, 95, 99):
        setattr(phase, f"p{q}_ms", round(percentile(latencies, q) * 1000, 2))
    phase.max_ms = round(latencies[-1] * 1000, 2) if latencies else 0.0
    phase.errors = dict(errors)
    phase.cpu_ms_per_request = {k: round(v / max(n, 1) * 1000, 3) for k, v in cpu.items()}
    return phase


async def bench(port: int, pids: dict[str, int], args: argparse.Namespace) -> list[Phase]:
    docs = documents(args.docs)
    counter = iter(range(10**9))

    def uncached() -> bytes:
        return http_request(body(f"query {next(counter)}: which city has the most museums?", docs))

    cached_request = http_request(body("which city has the most museums?", docs))
    expect = f"{args.docs}/{args.docs}".encode()
    phases = []
    if args.uncached_s > 0:
        phases.append(await run_phase(Phase("uncached", args.clients, args.uncached_s), port, uncached, pids))
    # Warm the cache: repeat until every pair is served from it (writes land behind responses).
    warm = Phase("warm-up", 1, 0.5)
    for _ in range(200):
        await run_phase(warm, port, lambda: cached_request, pids, expect)
        if not warm.errors:
            break
    for clients in (args.clients, 1):
        phase = Phase(f"cached, {clients} client{'s' if clients > 1 else ''}", clients, args.cached_s)
        phases.append(await run_phase(phase, port, lambda: cached_request, pids, expect))
    return phases


def table(phases: list[Phase]) -> str:
    cpu_header = "CPU ms/request (server, redis, load gen)"
    rows = [f"| phase | clients | requests | req/s | p50 ms | p95 ms | p99 ms | {cpu_header} |"]
    rows.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for p in phases:
        cpu = p.cpu_ms_per_request
        cpus = ", ".join(f"{cpu.get(k, 0):.2f}" for k in ("server", "redis", "load generator"))
        rows.append(
            f"| {p.name} | {p.clients} | {p.requests} | {p.req_per_s:,.0f} | {p.p50_ms} | {p.p95_ms} "
            f"| {p.p99_ms} | {cpus} |"
        )
    return "\n".join(rows)


def start_servers(args: argparse.Namespace, stack: ExitStack) -> tuple[int, dict[str, int]]:
    """Redis (unless ``--backend memory``) and rerankd, stopped when ``stack`` closes."""
    flags = ["--log-level", "warning"]
    pids: dict[str, int] = {}
    if args.backend == "redis":
        redis = stack.enter_context(redis_server())
        flags += ["--redis-url", redis.url]
        pids["redis"] = redis.process.pid
    server = stack.enter_context(rerankd_server(flags))
    pids["server"] = server.process.pid
    print(f"rerankd pid {server.process.pid} at {server.url}", file=sys.stderr)
    return int(server.url.rsplit(":", 1)[1]), pids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["redis", "memory"], default="redis")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--docs", type=int, default=100)
    parser.add_argument("--uncached-s", type=float, default=60.0, help="0 skips the uncached phase")
    parser.add_argument("--cached-s", type=float, default=15.0)
    parser.add_argument("--out", type=Path, help="write the JSON results here")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        port, pids = start_servers(args, stack)
        phases = asyncio.run(bench(port, pids, args))
    result = {
        "command": "python -m bench.cache_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{os.cpu_count()}-core {platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "backend": args.backend,
        "documents_per_request": args.docs,
        "phases": [asdict(p) for p in phases],
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    print()
    print(table(phases))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
