"""The newest Cohere SDK line (7.x) beside the 5.x line that LangChain and LlamaIndex pin.

Both lines are what users run, but one environment can hold only one: scripts/test installs 7.x into
``.cohere-next`` and this test drives it from a subprocess (tests/apart.py).
"""

from __future__ import annotations

from tests.apart import COHERE_NEXT, run_apart
from tests.servers import RerankdServer

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
    got = run_apart(COHERE_NEXT, SCRIPT, minilm_server.url)
    assert got["version"].startswith("7.")
    assert [r[0] for r in got["v1"]] == [2, 0, 1]
    assert got["v1"][0][2] == "Paris is the capital of France."
    assert [r[0] for r in got["v2"]] == [2, 0]
    assert got["async"] == [2, 0, 1]
