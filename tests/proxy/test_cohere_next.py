"""The newest Cohere SDK line (7.x) beside the 5.x line that LangChain and LlamaIndex pin.

Both lines are what users run, but one environment can hold only one: scripts/test installs 7.x into
``.cohere-next`` and this test drives it from a subprocess whose path puts that folder first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.servers import RerankdServer

ROOT = Path(__file__).resolve().parents[2]
NEXT = ROOT / ".cohere-next"

SCRIPT = """
import asyncio, json, sys
import cohere

url = sys.argv[1]
docs = ["Berlin is the capital of Germany.", "I like bananas.", "Paris is the capital of France."]
q = "What is the capital of France?"
v1 = cohere.Client(api_key="dummy", base_url=url).rerank(query=q, documents=docs, return_documents=True)
co2 = cohere.ClientV2(api_key="dummy", base_url=url)
v2 = co2.rerank(model="all-MiniLM-L6-v2", query=q, documents=docs, top_n=2)

async def run():
    return await cohere.AsyncClientV2(api_key="dummy", base_url=url).rerank(
        model="all-MiniLM-L6-v2", query=q, documents=docs)

av2 = asyncio.run(run())
print(json.dumps({
    "version": cohere.__version__,
    "v1": [[r.index, r.relevance_score, r.document.text] for r in v1.results],
    "v2": [[r.index, r.relevance_score] for r in v2.results],
    "async": [r.index for r in av2.results],
}))
"""


def test_cohere_7_clients(minilm_server: RerankdServer) -> None:
    assert NEXT.is_dir(), (
        "install the newest SDK first: pip install --no-deps --target .cohere-next 'cohere>=7,<8'"
    )
    env = {**os.environ, "PYTHONPATH": f"{NEXT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, minilm_server.url],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["version"].startswith("7.")
    assert [r[0] for r in got["v1"]] == [2, 0, 1]
    assert got["v1"][0][2] == "Paris is the capital of France."
    assert [r[0] for r in got["v2"]] == [2, 0]
    assert got["async"] == [2, 0, 1]
