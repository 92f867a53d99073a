"""Infinity's own client (``infinity_client``) against rerankd's Infinity dialect and /rerank.

The client pins an older httpx than the rest of the environment uses, so scripts/test installs it
apart, into ``.infinity-client``, and this test drives it from a subprocess whose path puts that
folder first (its code unmodified; only its httpx is the newer one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.servers import RerankdServer

ROOT = Path(__file__).resolve().parents[2]
APART = ROOT / ".infinity-client"

SCRIPT = """
import json, sys
from infinity_client import Client
from infinity_client.api.default import rerank
from infinity_client.models import RerankInput

url = sys.argv[1]
docs = ["Berlin is the capital of Germany.", "I like bananas.", "Paris is the capital of France."]
q = "What is the capital of France?"
out = {}
for name, base in (("infinity", url + "/infinity"), ("rerank", url)):
    client = Client(base_url=base, headers={"Authorization": "Bearer dummy"})
    body = RerankInput(query=q, documents=docs, return_documents=True, model="all-MiniLM-L6-v2", top_n=2)
    got = rerank.sync(client=client, body=body)
    out[name] = {
        "results": [[r.index, r.relevance_score, r.document] for r in got.results],
        "usage": [got.usage.prompt_tokens, got.usage.total_tokens],
        "model": got.model,
    }
raw = rerank.sync(
    client=Client(base_url=url + "/infinity"),
    body=RerankInput(query=q, documents=docs, raw_scores=True),
)
out["raw"] = [[r.index, r.relevance_score] for r in raw.results]
print(json.dumps(out))
"""


def test_infinity_client(minilm_server: RerankdServer) -> None:
    assert APART.is_dir(), (
        "install Infinity's client first: "
        "pip install --no-deps --target .infinity-client 'infinity-client>=0.0.78,<0.1'"
    )
    env = {**os.environ, "PYTHONPATH": f"{APART}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, minilm_server.url],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    ref = httpx.post(
        minilm_server.url + "/v2/rerank",
        json={
            "query": "What is the capital of France?",
            "documents": [
                "Berlin is the capital of Germany.",
                "I like bananas.",
                "Paris is the capital of France.",
            ],
        },
        timeout=60,
    ).json()
    want = {r["index"]: r["relevance_score"] for r in ref["results"]}
    infinity = got["infinity"]
    # Infinity's own shape: documents as strings.
    assert [(i, d) for i, _, d in infinity["results"]] == [
        (2, "Paris is the capital of France."),
        (0, "Berlin is the capital of Germany."),
    ]
    for i, score, _ in infinity["results"]:
        assert abs(score - want[i]) < 1e-6
    prompt, total = infinity["usage"]
    assert prompt == total > 20
    assert infinity["model"] == "all-MiniLM-L6-v2"
    # /rerank answers the same order; its documents are vLLM's objects.
    assert [r[0] for r in got["rerank"]["results"]] == [2, 0]
    assert got["rerank"]["results"][0][2] == {"text": "Paris is the capital of France."}
    # (The second call's pairs come from the cache: its count may differ, its shape may not.)
    prompt, total = got["rerank"]["usage"]
    assert prompt == total > 20
    # raw_scores: the embedded model's cosine, (score * 2 - 1); no model named: the default.
    assert [i for i, _ in got["raw"]] == [2, 0, 1]
    for i, score in got["raw"]:
        assert abs(score - (2 * want[i] - 1)) < 1e-6
