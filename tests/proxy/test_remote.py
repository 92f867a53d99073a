"""``rerankd serve --engine remote`` in front of real upstreams: a vLLM server process (tiny Qwen3 on
the pooling runner) and another rerankd. Failover, the upstream's key, an upstream that dies and
comes back while rerankd keeps running."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

from tests.adapters.test_vllm_engine import DOCS, QUERY
from tests.servers import RerankdServer, VLLMServer, free_port, rerankd_server, vllm_server, wait_for

UPSTREAM_KEY = "upstream-secret"
QWEN3_AS_CLASSIFIER = {
    "architectures": ["Qwen3ForSequenceClassification"],
    "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": True,
}


@pytest.fixture(scope="module")
def upstream(tiny_qwen3_dir: Path, vllm_env: dict[str, str]) -> Iterator[VLLMServer]:
    args = ["--model", str(tiny_qwen3_dir), "--served-model-name", "tiny", "--runner", "pooling"]
    args += ["--hf-overrides", json.dumps(QWEN3_AS_CLASSIFIER), "--dtype", "float32", "--enforce-eager"]
    args += ["--max-model-len", "512", "--api-key", UPSTREAM_KEY]
    with vllm_server(args, env=vllm_env) as server:
        yield server


def _front(
    upstreams: str, kind: str, model: str, key: str | None = UPSTREAM_KEY
) -> AbstractContextManager[RerankdServer]:
    env = {"RERANKD_UPSTREAM_API_KEY": key} if key else {}
    # No result cache: every request must reach the upstreams under test.
    args = [
        "--engine",
        "remote",
        "--upstream",
        upstreams,
        "--upstream-kind",
        kind,
        "--model",
        model,
        "--no-cache",
    ]
    return rerankd_server(args, env=env)


@pytest.fixture(scope="module")
def front(upstream: VLLMServer) -> Iterator[RerankdServer]:
    """rerankd on two upstreams, the first of which never answers."""
    dead = f"http://127.0.0.1:{free_port()}"
    with _front(f"{dead},{upstream.url}", "vllm-rerank", "qwen=tiny") as server:
        yield server


def _by_index(results: list[dict[str, float]], n: int) -> list[float]:
    out = [0.0] * n
    for r in results:
        out[int(r["index"])] = r["relevance_score"]
    return out


def _direct(upstream: VLLMServer, docs: list[str]) -> list[float]:
    r = httpx.post(
        upstream.url + "/rerank", json={"model": "tiny", "query": QUERY, "documents": docs}, timeout=60
    )
    assert r.status_code == 200, r.text
    return _by_index(r.json()["results"], len(docs))


def _rerank(front: RerankdServer, docs: list[str], route: str = "/v2/rerank") -> httpx.Response:
    return httpx.post(
        front.url + route, json={"model": "qwen", "query": QUERY, "documents": docs}, timeout=60
    )


def test_scores_pass_through_and_a_dead_upstream_is_skipped(
    front: RerankdServer, upstream: VLLMServer
) -> None:
    expected = _direct(upstream, DOCS)
    assert max(expected) - min(expected) > 0.01
    # Requests start at alternating upstreams: half of them meet the dead one first.
    for _ in range(4):
        r = _rerank(front, DOCS)
        assert r.status_code == 200, r.text
        assert _by_index(r.json()["results"], len(DOCS)) == pytest.approx(expected, abs=1e-6)
    assert httpx.get(front.url + "/ready").status_code == 200


@pytest.mark.parametrize("kind", ["vllm-score", "cohere"])
def test_other_upstream_apis(kind: str, upstream: VLLMServer) -> None:
    # vLLM guards /v2/rerank with its --api-key: the cohere kind passes only with the key sent.
    expected = _direct(upstream, DOCS)
    with _front(upstream.url, kind, "qwen=tiny") as front:
        r = _rerank(front, DOCS)
    assert r.status_code == 200, r.text
    assert _by_index(r.json()["results"], len(DOCS)) == pytest.approx(expected, abs=1e-6)


def test_a_rejected_key_is_a_server_error_not_a_retry(upstream: VLLMServer) -> None:
    with _front(upstream.url, "cohere", "qwen=tiny", key="wrong") as front:
        r = _rerank(front, DOCS)
        log = front.log()
    assert r.status_code == 500
    assert r.json()["message"] == "internal error while scoring; see the server log for this request id"
    assert "refused the request: HTTP 401" in log
    assert "wrong" not in r.text


def test_upstream_killed_then_restarted(front: RerankdServer, upstream: VLLMServer) -> None:
    """Kills and restarts the upstream: keep this test last among those using it."""
    expected = _direct(upstream, DOCS[:3])
    upstream.kill()
    r = _rerank(front, DOCS[:3])
    assert r.status_code == 503, r.text
    assert int(r.headers["Retry-After"]) >= 1
    assert r.json()["message"] == "no upstream could score the request (2 tried)"
    assert httpx.get(front.url + "/ready").status_code == 503

    upstream.start()
    wait_for(lambda: _rerank(front, DOCS[:3]).status_code == 200, 60, "rerankd to use the restarted upstream")
    r = _rerank(front, DOCS[:3], route="/rerank")
    assert _by_index(r.json()["results"], 3) == pytest.approx(expected, abs=1e-6)
    assert front.process.poll() is None


def test_rerankd_in_front_of_rerankd(minilm_server: RerankdServer) -> None:
    docs = ["Berlin is the capital of Germany.", "I like bananas.", "Paris is the capital of France."]
    body = {"model": "all-MiniLM-L6-v2", "query": "What is the capital of France?", "documents": docs}
    direct = httpx.post(minilm_server.url + "/v2/rerank", json=body).json()["results"]
    with _front(minilm_server.url, "cohere", "all-MiniLM-L6-v2", key=None) as front:
        fronted = httpx.post(front.url + "/v2/rerank", json=body).json()["results"]
        # The front's own API features work on upstream scores: Jina returns documents, top_n.
        jina = httpx.post(front.url + "/rerank", json={**body, "top_n": 1}).json()["results"]
    assert fronted == direct
    assert [x["index"] for x in fronted] == [2, 0, 1]
    assert jina == [
        {"index": 2, "relevance_score": direct[0]["relevance_score"], "document": {"text": docs[2]}}
    ]
