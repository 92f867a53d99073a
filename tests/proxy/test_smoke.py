from __future__ import annotations

import httpx

from tests.servers import RerankdServer


def test_embedded_model_ranks_paris_first(minilm_server: RerankdServer) -> None:
    docs = ["Berlin is the capital of Germany.", "I like bananas.", "Paris is the capital of France."]
    r = httpx.post(
        minilm_server.url + "/v2/rerank",
        json={"query": "What is the capital of France?", "documents": docs},
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["index"] for x in results] == [2, 0, 1]
    assert all("document" not in x for x in results)
