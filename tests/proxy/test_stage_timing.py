"""Per-stage timing (TEI's headers and rerankd's stage histograms) and the process metrics, against a
real ``rerankd serve`` with the embedded model and the in-process cache."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.proxy.auth_helpers import eventually
from tests.servers import RerankdServer, rerankd_server

MODEL = "all-MiniLM-L6-v2"
STAGES = ("tokenization", "queue", "inference", "compute")
HEADERS = ("x-total-time", "x-compute-time", "x-tokenization-time", "x-queue-time", "x-inference-time")


@pytest.fixture(scope="module")
def server() -> Iterator[RerankdServer]:
    # Small batches: a request of a few dozen documents takes several forward passes. A long
    # deadline: on a busy machine two such requests at once take longer than the default's 30 s.
    with rerankd_server(["--max-batch-tokens", "256", "--request-timeout-s", "300"]) as s:
        yield s


def docs(n: int) -> list[str]:
    """Documents no other request sends: never in the cache."""
    tag = uuid.uuid4().hex
    return [f"{tag} document {i} about the museums and rivers of the capital" for i in range(n)]


def timings(r: httpx.Response) -> dict[str, int]:
    assert r.status_code == 200, r.text
    return {name.removeprefix("x-").removesuffix("-time"): int(r.headers[name]) for name in HEADERS}


def scrape(url: str) -> tuple[str, dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    r = httpx.get(url + "/metrics", timeout=30)
    assert r.status_code == 200
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }
    return r.headers["content-type"], samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def bodies(n: int) -> list[tuple[str, dict[str, Any]]]:
    """One scoring request per dialect, each with documents of its own."""
    q = "which city has the most museums?"
    return [
        ("/v2/rerank", {"model": MODEL, "query": q, "documents": docs(n)}),
        ("/v1/rerank", {"query": q, "documents": docs(n)}),
        ("/rerank", {"query": q, "documents": docs(n)}),
        ("/rerank", {"query": q, "texts": docs(n)}),  # TEI's body
        ("/infinity/rerank", {"query": q, "documents": docs(n)}),
        ("/score", {"text_1": q, "text_2": docs(n)}),
    ]


def test_every_dialect_answers_the_stage_headers_and_they_add_up(server: RerankdServer) -> None:
    for path, body in bodies(12):
        t = timings(httpx.post(server.url + path, json=body, timeout=120))
        # Whole milliseconds, each cut down (TEI's unit): the parts of a span never exceed it.
        assert t["tokenization"] + t["queue"] + t["inference"] <= t["compute"] <= t["total"], (path, t)
        assert t["inference"] >= 1, (path, t)  # 12 documents in batches of a few: forward passes ran


def test_a_cached_request_reports_no_engine_stages(server: RerankdServer) -> None:
    body = {"query": "a query for the cached timing test", "documents": docs(5)}
    first = httpx.post(server.url + "/v2/rerank", json=body, timeout=120)
    assert timings(first)["inference"] >= 1

    def cached() -> bool:  # writes land behind the response
        r = httpx.post(server.url + "/v2/rerank", json=body, timeout=120)
        return r.headers["x-cache-hits"] == "5/5"

    eventually(cached, 10, "the pairs to be cached")
    t = timings(httpx.post(server.url + "/v2/rerank", json=body, timeout=120))
    assert (t["tokenization"], t["queue"], t["inference"]) == (0, 0, 0), t
    assert t["compute"] <= t["total"]


def test_a_request_behind_another_reports_its_queue_time(server: RerankdServer) -> None:
    # Two equal requests at once: whichever is second waits for the first one's batches.
    results: list[httpx.Response] = []
    barrier = threading.Barrier(2)

    def send() -> None:
        body = {"query": "a query for the queue test", "documents": docs(16)}
        barrier.wait()
        results.append(httpx.post(server.url + "/v2/rerank", json=body, timeout=120))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2
    queues = [timings(r)["queue"] for r in results]
    assert max(queues) >= 1, queues


def test_stage_histograms_count_each_scoring_request(server: RerankdServer) -> None:
    _, before = scrape(server.url)
    n = 3
    inference_ms = 0
    for _ in range(n):
        body = {"query": "a query for the histogram test", "documents": docs(8)}
        inference_ms += timings(httpx.post(server.url + "/v2/rerank", json=body, timeout=120))["inference"]
    _, after = scrape(server.url)
    for stage in STAGES:
        name = f"rerankd_request_{stage}_seconds"
        count = value(after, name + "_count", model=MODEL) - value(before, name + "_count", model=MODEL)
        assert count == n, (name, count)
        inf = value(after, name + "_bucket", model=MODEL, le="+Inf")
        assert inf == value(after, name + "_count", model=MODEL), name
    inference_s = value(after, "rerankd_request_inference_seconds_sum", model=MODEL) - value(
        before, "rerankd_request_inference_seconds_sum", model=MODEL
    )
    # The headers cut to whole milliseconds; the histogram keeps the exact seconds.
    assert inference_ms / 1000 <= inference_s < (inference_ms + n) / 1000 + 1e-9, (inference_ms, inference_s)


def test_metrics_name_their_charset_once_and_carry_process_and_batch_families(server: RerankdServer) -> None:
    body = {"query": "a query for the batch families", "documents": docs(6)}
    timings(httpx.post(server.url + "/v2/rerank", json=body, timeout=120))
    content_type, samples = scrape(server.url)
    assert content_type.count("charset") == 1, content_type
    assert content_type.startswith("text/plain; version="), content_type
    assert value(samples, "process_cpu_seconds_total") > 0
    assert value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "process_open_fds") > 0
    assert any(n == "python_info" for n, _ in samples)
    assert any(n == "python_gc_collections_total" for n, _ in samples)
    assert value(samples, "rerankd_batch_tokens_count", model=MODEL) >= 1
    # Tokens per pass: the sum is every real token the engine ran.
    assert value(samples, "rerankd_batch_tokens_sum", model=MODEL) == value(
        samples, "rerankd_engine_tokens_total", model=MODEL, kind="real"
    )
    assert value(samples, "rerankd_engine_running_sequences", model=MODEL) == 0  # nothing in flight now
