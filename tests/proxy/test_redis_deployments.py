"""``rerankd serve`` on Redis as clusters run it: a real 3-node Redis Cluster shared by replicas and
by two deployments with their own prefixes, a node of it going down, and a Sentinel failover
under load."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis as redis_sync

from tests.proxy.auth_helpers import eventually, new_key
from tests.servers import RedisCluster, RerankdServer, redis_cluster, redis_sentinel, rerankd_server, wait_for

QUERY = "What is the capital of France?"


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    """This module's own cluster: its last test takes a node down."""
    with redis_cluster() as c:
        yield c


@pytest.fixture(scope="module")
def replica_a(cluster: RedisCluster) -> Iterator[RerankdServer]:
    with rerankd_server(["--redis-url", cluster.url]) as server:
        yield server


@pytest.fixture(scope="module")
def replica_b(cluster: RedisCluster) -> Iterator[RerankdServer]:
    with rerankd_server(["--redis-url", cluster.url]) as server:
        yield server


@pytest.fixture(scope="module")
def staging(cluster: RedisCluster) -> Iterator[RerankdServer]:
    """Another deployment on the same cluster, under its own prefix."""
    with rerankd_server(["--redis-url", cluster.url, "--redis-prefix", "staging:"]) as server:
        yield server


def new_docs(n: int = 5) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"document {i} of {tag}: Paris is the capital of France." for i in range(n)]


def rerank(server: RerankdServer, docs: list[str], timeout: float = 30) -> httpx.Response:
    body = {"model": "all-MiniLM-L6-v2", "query": QUERY, "documents": docs}
    return httpx.post(server.url + "/v2/rerank", json=body, timeout=timeout)


def hits(r: httpx.Response) -> tuple[int, int]:
    assert r.status_code == 200, r.text
    got, _, total = r.headers["X-Cache-Hits"].partition("/")
    return int(got), int(total)


def eventually_cached(server: RerankdServer, docs: list[str], timeout: float = 15) -> None:
    """Write-behind: a scored pair reaches Redis shortly after its response."""
    wait_for(lambda: hits(rerank(server, docs)) == (len(docs), len(docs)), timeout, "every pair cached")


def pair_keys_by_node(cluster: RedisCluster, prefix: bytes) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    for node in cluster.nodes:
        with redis_sync.Redis(port=node.port) as client:
            out[node.port] = list(client.scan_iter(match=prefix + b"pair:*", count=1000))
    return out


def test_replicas_share_cached_pairs_through_the_cluster(
    cluster: RedisCluster, replica_a: RerankdServer, replica_b: RerankdServer
) -> None:
    docs = new_docs()
    first = rerank(replica_a, docs)
    assert hits(first) == (0, len(docs))
    # The other process reads what the first one wrote: the same scores, from the cluster.
    wait_for(lambda: hits(rerank(replica_b, docs)) == (len(docs), len(docs)), 15, "replica b's hits")
    scores_a = {r["index"]: r["relevance_score"] for r in first.json()["results"]}
    scores_b = {r["index"]: r["relevance_score"] for r in rerank(replica_b, docs).json()["results"]}
    assert scores_a.keys() == scores_b.keys()
    assert all(abs(scores_a[i] - scores_b[i]) < 1e-9 for i in scores_a)
    # One request's pairs share a hash tag: one slot, one node, one MGET.
    by_node = {port: keys for port, keys in pair_keys_by_node(cluster, b"rerankd:").items() if keys}
    assert sum(len(k) for k in by_node.values()) == len(docs)
    assert len(by_node) == 1
    (keys,) = by_node.values()
    with redis_sync.Redis(port=cluster.nodes[0].port) as client:
        assert len({client.cluster("keyslot", k) for k in keys}) == 1


def test_deployments_with_other_prefixes_share_no_entries(
    cluster: RedisCluster, replica_a: RerankdServer, staging: RerankdServer
) -> None:
    docs = new_docs()
    rerank(replica_a, docs)
    eventually_cached(replica_a, docs)
    # The same pairs, the same model: staging still scores them itself and keeps them apart.
    assert hits(rerank(staging, docs)) == (0, len(docs))
    eventually_cached(staging, docs)
    staged = [k for keys in pair_keys_by_node(cluster, b"staging:").values() for k in keys]
    assert len(staged) == len(docs)
    # API keys too: a key created for staging locks staging only (keys are required on loopback
    # once one exists), and it works there.
    key = new_key("ci", "--redis-url", cluster.url, "--redis-prefix", "staging:")
    eventually(lambda: rerank(staging, docs).status_code == 401, 10, "staging to require its key")
    assert rerank(replica_a, docs).status_code == 200
    r = httpx.post(
        staging.url + "/v2/rerank",
        json={"model": "all-MiniLM-L6-v2", "query": QUERY, "documents": docs},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert hits(r) == (len(docs), len(docs))
    names = [k for n in cluster.nodes for k in redis_sync.Redis(port=n.port).scan_iter(match=b"*auth*")]
    assert names
    assert all(n.startswith((b"staging:", b"{staging:")) for n in names), names


def test_a_node_down_degrades_to_uncached_and_requests_are_answered(
    cluster: RedisCluster, replica_a: RerankdServer
) -> None:
    docs = new_docs()
    rerank(replica_a, docs)
    eventually_cached(replica_a, docs)
    cluster.nodes[1].process.kill()
    cluster.nodes[1].process.wait()
    # Every request is answered, cached or not, while the cluster loses a third of its slots.
    for _ in range(15):
        r = rerank(replica_a, [*docs, *new_docs(2)])
        assert r.status_code == 200, r.text
        assert len(r.json()["results"]) == len(docs) + 2
    assert replica_a.process.poll() is None
    assert httpx.get(replica_a.url + "/ready", timeout=5).status_code == 200


def test_a_sentinel_failover_under_load_fails_no_request() -> None:
    with redis_sentinel() as setup, rerankd_server(["--redis-url", setup.url]) as server:
        warm = new_docs()
        rerank(server, warm)
        eventually_cached(server, warm)
        failures: list[str] = []
        answered = 0
        stop = threading.Event()

        def load() -> None:
            nonlocal answered
            with httpx.Client(timeout=30) as client:
                body = {"model": "all-MiniLM-L6-v2", "query": QUERY}
                while not stop.is_set():
                    # Cached pairs and fresh ones: reads and writes both meet the failover.
                    docs = [*warm, *new_docs(2)]
                    try:
                        r = client.post(server.url + "/v2/rerank", json={**body, "documents": docs})
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))
                        continue
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                    answered += 1

        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: answered >= 3, 60, "the load to run")
            before = answered
            new_master = setup.failover()
            wait_for(lambda: answered >= before + 3, 60, "more requests after the failover")
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert answered > before > 0
        assert failures == []
        assert new_master == setup.master_port()
        # The cache works again on the new master: fresh pairs are written there and read back.
        after = new_docs()
        rerank(server, after)
        eventually_cached(server, after, timeout=30)
        with redis_sync.Redis(port=new_master) as client:
            assert any(True for _ in client.scan_iter(match=b"rerankd:pair:*", count=1000))
        assert server.process.poll() is None
