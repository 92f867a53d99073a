"""``--devices``: several replicas of the packaged MiniLM on CPU threads, over real HTTP.

CPU replicas (``cpu,cpu``) are the same code path as GPU replicas but for the device: each has
its own model copy and worker thread. A replica is made to fail for real with the test-only
``fault_devices`` setting: its forward pass raises after a few batches, as a broken GPU's would."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import httpx
import pytest

from tests.servers import RerankdServer, rerankd_server, wait_for

QUERY = "What is the capital of France?"
#: Small batches, so that each request spans several and both replicas get some.
#: A long request deadline: a busy test machine must not make admission refuse the load.
ARGS = [
    *("--devices", "cpu,cpu", "--torch-threads", "2", "--max-batch-tokens", "256"),
    *("--no-cache", "--request-timeout-s", "120"),
]
N_REQUESTS = 12
N_DOCS = 24


def _documents(i: int) -> list[str]:
    return [
        f"Document {j} of request {i}: Paris is the capital of France, say {j * i} sources."
        for j in range(N_DOCS)
    ]


def _metric(text: str, name: str, device: str) -> float:
    match = re.search(rf'^{name}{{device="{device}",model="[^"]+"}} (\S+)$', text, re.M)
    assert match, f"{name} for {device} not in /metrics"
    return float(match.group(1))


async def _load(url: str) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        return await asyncio.gather(
            *(
                client.post("/v2/rerank", json={"query": QUERY, "documents": _documents(i)})
                for i in range(N_REQUESTS)
            )
        )


def _scores(response: httpx.Response) -> dict[int, float]:
    return {r["index"]: r["relevance_score"] for r in response.json()["results"]}


@pytest.fixture(scope="module")
def single() -> Iterator[RerankdServer]:
    args = ["--device", "cpu", "--torch-threads", "2", "--no-cache", "--request-timeout-s", "120"]
    with rerankd_server(args) as server:
        yield server


def test_both_replicas_score_like_one(single: RerankdServer) -> None:
    with rerankd_server(ARGS) as two:
        answers = asyncio.run(_load(two.url))
        assert [a.status_code for a in answers] == [200] * N_REQUESTS
        metrics = httpx.get(two.url + "/metrics").text
        ready = httpx.get(two.url + "/ready")
    for device in ("cpu:0", "cpu:1"):
        assert _metric(metrics, "rerankd_device_batches_total", device) > 2
        assert _metric(metrics, "rerankd_device_busy_seconds_total", device) > 0
        assert _metric(metrics, "rerankd_device_up", device) == 1
    assert ready.json() == {"status": "ready", "replicas": {"live": 2, "total": 2}}
    reference = asyncio.run(_load(single.url))
    assert [r.status_code for r in reference] == [200] * N_REQUESTS, [r.text for r in reference]
    for got, want in zip(answers, reference, strict=True):
        a, b = _scores(got), _scores(want)
        assert a.keys() == b.keys()
        for index, score in b.items():
            assert a[index] == pytest.approx(score, abs=1e-5)


def test_a_failing_replica_is_taken_out_without_failed_requests() -> None:
    env = {"RERANKD_FAULT_DEVICES": "1", "RERANKD_FAULT_AFTER_BATCHES": "3"}
    with rerankd_server(ARGS, env=env) as server:
        answers = asyncio.run(_load(server.url))
        assert [a.status_code for a in answers] == [200] * N_REQUESTS
        ready = httpx.get(server.url + "/ready")
        health = httpx.get(server.url + "/health")
        metrics = httpx.get(server.url + "/metrics").text
        again = asyncio.run(_load(server.url))
        assert [a.status_code for a in again] == [200] * N_REQUESTS
        log = server.log()
    degraded = {
        "status": "degraded",
        "replicas": {"live": 1, "total": 2},
        "down": {"all-MiniLM-L6-v2": ["cpu:1"]},
    }
    assert ready.status_code == 200
    assert ready.json() == degraded
    assert health.status_code == 200
    assert health.json() == degraded
    assert _metric(metrics, "rerankd_device_up", "cpu:0") == 1
    assert _metric(metrics, "rerankd_device_up", "cpu:1") == 0
    assert "replica cpu:1 is taken out" in log


def test_every_replica_failing_answers_503() -> None:
    env = {"RERANKD_FAULT_DEVICES": "0,1", "RERANKD_FAULT_AFTER_BATCHES": "3"}
    with rerankd_server(ARGS, env=env) as server:
        statuses = [a.status_code for a in asyncio.run(_load(server.url))]
        assert 503 in statuses
        assert set(statuses) <= {200, 503}, statuses  # scored, or told to retry: never a 500

        def unready() -> bool:
            return httpx.get(server.url + "/ready").status_code == 503

        wait_for(unready, 10, "/ready to turn 503")
        late = httpx.post(server.url + "/v2/rerank", json={"query": QUERY, "documents": ["Paris"]})
        metrics = httpx.get(server.url + "/metrics").text
        health = httpx.get(server.url + "/health")
    assert late.status_code == 503
    assert "retry-after" in late.headers
    assert late.json()["message"]
    assert _metric(metrics, "rerankd_device_up", "cpu:0") == 0
    assert _metric(metrics, "rerankd_device_up", "cpu:1") == 0
    assert health.json()["replicas"] == {"live": 0, "total": 2}
