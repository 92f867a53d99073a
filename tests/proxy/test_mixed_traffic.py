"""Mixed traffic over real HTTP: no request, however large, abandoned or late, stalls the others."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Sequence

import httpx
import psutil

from tests.proxy.test_observability import scrape, value
from tests.servers import rerankd_server, wait_for

MODEL = "all-MiniLM-L6-v2"
QUERY = "which topic?"


def docs(n: int, words: int = 40) -> list[str]:
    return [f"document {i} is about topic {i % 7}. " + "filler words here " * (words // 3) for i in range(n)]


async def until(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    """``wait_for`` for async tests: the loop keeps running the requests in flight meanwhile."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {seconds} s waiting for {what}"
        await asyncio.sleep(0.05)


def body(documents: Sequence[str]) -> dict[str, object]:
    return {"model": MODEL, "query": QUERY, "documents": list(documents)}


async def test_a_small_request_is_not_held_behind_a_large_one() -> None:
    with rerankd_server(["--no-cache", "--torch-threads", "1", "--request-timeout-s", "300"]) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
            large = asyncio.ensure_future(client.post("/v2/rerank", json=body(docs(800))))
            await until(lambda: value(scrape(server.url), "rerankd_queue_depth") > 0, 30, "queued work")
            small = await client.post("/v2/rerank", json=body(docs(2)))
            assert small.status_code == 200, small.text
            # Scored in the next batch, not after the 800 documents queued before it.
            assert not large.done()
            assert value(scrape(server.url), "rerankd_queue_depth") > 100
            assert (await large).status_code == 200


def test_huge_documents_are_cut_before_tokenizing_and_abandoned_work_stops() -> None:
    # Before documents were cut, one 5 MB document took 25 s to tokenize on this kind of machine:
    # far beyond this request timeout.
    args = ["--no-cache", "--torch-threads", "1", "--request-timeout-s", "20"]
    with rerankd_server(args) as server:
        process = psutil.Process(server.process.pid)
        huge = "Photosynthesis makes sugar from light. " * 130_000  # 5 MB
        r = httpx.post(server.url + "/v2/rerank", json=body([huge, "sugar from light"]), timeout=60)
        assert r.status_code == 200, r.text + server.log()
        assert r.json()["meta"]["tokens"]["input_tokens"] < 2 * 512 + 64
        rss_before = process.memory_info().rss

        def abandon() -> None:
            # Clients that send 10 MB and leave before the answer.
            big = [f"{i} " + "tokens to tokenize " * 5_000 for i in range(100)]
            with contextlib.suppress(httpx.TimeoutException):
                httpx.post(server.url + "/v2/rerank", json=body(big), timeout=1.5)

        for _ in range(2):
            abandon()
        small = httpx.post(server.url + "/v2/rerank", json=body(docs(2)), timeout=60)
        assert small.status_code == 200, small.text
        # The abandoned requests' work stopped, and their memory is not held.
        wait_for(lambda: value(scrape(server.url), "rerankd_queue_depth") == 0, 30, "an empty queue")
        assert process.memory_info().rss < rss_before + 400 * 2**20
        assert "499" in server.log()


def test_one_deadline_bounds_the_whole_request() -> None:
    with rerankd_server(["--no-cache", "--torch-threads", "1", "--request-timeout-s", "1"]) as server:
        started = time.monotonic()
        r = httpx.post(server.url + "/v2/rerank", json=body(docs(4000)), timeout=60)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"].isdigit()
        assert set(r.json()) >= {"message", "detail", "id"}
        assert "request_timeout_s" in r.json()["detail"]
        assert time.monotonic() - started < 10
        # Its work was dropped: nothing of it is left queued, and the next request is served.
        assert value(scrape(server.url), "rerankd_queue_depth") == 0
        assert httpx.post(server.url + "/v2/rerank", json=body(docs(2)), timeout=30).status_code == 200


async def test_sigterm_answers_what_is_still_running_when_the_grace_period_ends() -> None:
    args = ["--no-cache", "--torch-threads", "1", "--shutdown-grace-s", "4", "--log-format", "json"]
    with rerankd_server([*args, "--request-timeout-s", "300"]) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            requests = [asyncio.ensure_future(client.post("/v2/rerank", json=body(docs(3000))))]
            await until(lambda: value(scrape(server.url), "rerankd_queue_depth") > 0, 30, "queued work")
            requests += [
                asyncio.ensure_future(client.post("/v2/rerank", json=body(docs(3)))) for _ in range(8)
            ]
            await asyncio.sleep(0.5)
            server.process.send_signal(signal.SIGTERM)
            replies = await asyncio.gather(*requests)
        assert server.process.wait(30) == 0
        log = server.log()
    large = replies[0]
    assert large.status_code == 503, large.text
    assert large.headers["content-type"].startswith("application/json")
    assert large.headers["retry-after"] == "1"
    assert "shutting down" in large.json()["message"]
    # The small ones finished within the grace period; nothing was cut off without an answer.
    assert all(r.status_code == 200 for r in replies[1:]), [r.status_code for r in replies]
    assert "Traceback" not in log
    assert "CancelledError" not in log


def test_health_answers_while_the_model_loads_and_sigterm_stops_loading() -> None:
    with rerankd_server(["--no-cache"], wait_ready=False) as server:
        # The port answers /health before the model is ready: imports and loading are off the loop.
        assert httpx.get(server.url + "/health", timeout=2).status_code == 200
        loading = httpx.get(server.url + "/ready", timeout=2).status_code == 503
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0
        stopped_in = time.monotonic() - signalled
        log = server.log()
    assert loading, "the model was ready before the first /health: nothing was checked"
    assert "Traceback" not in log
    assert stopped_in < 10, log
