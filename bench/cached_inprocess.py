"""CPU time of one fully cached request, server and client in one process, on one core.

    python -m bench.cached_inprocess [--requests 2000] [--documents 100] [--redis-url URL] [--profile]

uvicorn serves the app on loopback on this process's event loop (the embedded model, the in-process
cache or ``--redis-url``); a raw keep-alive socket sends the same ``/v2/rerank`` request until
every pair is cached, then ``--requests`` more, one at a time. Prints the process's CPU time per
request (the client's share is a few socket calls). One process and one request in flight: the
figure moves little with the machine's other load, unlike requests per second; compare two
commits by alternating runs. ``--profile`` prints cProfile's top functions (which slows every
call, so read its shares, not its times).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from collections.abc import Sequence

import uvicorn

from rerankd.config import Settings
from rerankd.proxy.app import create_app
from rerankd.service import RerankService
from tests.proxy.test_cached_cost import _exchange, _request
from tests.servers import free_port


async def _run(ns: argparse.Namespace) -> None:
    settings = Settings(redis_url=ns.redis_url) if ns.redis_url else Settings()
    service = RerankService(settings)
    config = uvicorn.Config(
        create_app(settings, service=service),
        host="127.0.0.1",
        port=free_port(),
        log_level="warning",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not (server.started and service.ready):  # noqa: ASYNC110  # neither exposes an event
        await asyncio.sleep(0.1)
    reader, writer = await asyncio.open_connection("127.0.0.1", config.port)
    request, want = _request(ns.documents), b"x-cache-hits: %d/%d" % (ns.documents, ns.documents)
    for _ in range(200):  # until every pair is cached (writes land behind the answers)
        if want in await _exchange(reader, writer, request):
            break
        await asyncio.sleep(0.05)
    else:
        raise SystemExit("the request never became fully cached")
    profile = cProfile.Profile()
    cpu, wall = time.process_time(), time.perf_counter()
    if ns.profile:
        profile.enable()
    for _ in range(ns.requests):
        await _exchange(reader, writer, request)
    if ns.profile:
        profile.disable()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(
        f"{ns.requests} fully cached requests of {ns.documents} documents: "
        f"{1000 * cpu / ns.requests:.3f} ms CPU and {1000 * wall / ns.requests:.3f} ms wall per request"
    )
    if ns.profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(40)
    writer.close()
    server.should_exit = True
    await serving


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--documents", type=int, default=100)
    p.add_argument("--redis-url", default=None, help="cache in this Redis (default: in-process)")
    p.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    asyncio.run(_run(p.parse_args(argv)))


if __name__ == "__main__":
    main()
