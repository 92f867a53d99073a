"""The official client libraries, as users call them, pointed at rerankd with base_url."""

from __future__ import annotations

import asyncio
import json

import cohere
import pytest
from langchain_cohere import CohereRerank as LangChainCohereRerank
from langchain_core.documents import Document
from pydantic import SecretStr

from tests.apart import LLAMA_INDEX, run_apart
from tests.servers import RerankdServer

QUERY = "What is the capital of France?"
DOCS = [
    "Berlin is the capital of Germany.",
    "I like bananas.",
    "Paris is the capital of France.",
    "The Eiffel Tower is in Paris, the French capital.",
]
MODEL = "all-MiniLM-L6-v2"


def test_cohere_v1_client(minilm_server: RerankdServer) -> None:
    co = cohere.Client(api_key="dummy", base_url=minilm_server.url)
    res = co.rerank(query=QUERY, documents=DOCS, top_n=2, return_documents=True)
    assert [r.index for r in res.results] == [2, 3]
    assert res.results[0].document is not None
    assert res.results[0].document.text == DOCS[2]
    assert isinstance(res.results[0].relevance_score, float)
    assert res.meta is not None
    assert res.meta.billed_units is not None
    assert res.meta.billed_units.search_units == 1


def test_cohere_v2_client(minilm_server: RerankdServer) -> None:
    co = cohere.ClientV2(api_key="dummy", base_url=minilm_server.url)
    res = co.rerank(model=MODEL, query=QUERY, documents=DOCS, top_n=10)
    assert [r.index for r in res.results][:2] == [2, 3]
    assert len(res.results) == len(DOCS)  # top_n larger than the documents: clamped
    scores = [r.relevance_score for r in res.results]
    assert scores == sorted(scores, reverse=True)


def test_cohere_async_v2_client(minilm_server: RerankdServer) -> None:
    async def run() -> list[list[int]]:
        co = cohere.AsyncClientV2(api_key="dummy", base_url=minilm_server.url)
        replies = await asyncio.gather(
            *(co.rerank(model=MODEL, query=QUERY, documents=DOCS[i:] + DOCS[:i], top_n=1) for i in range(4))
        )
        return [[r.index for r in reply.results] for reply in replies]

    # Each rotation puts the Paris sentence at a different index; each reply must find it there.
    assert asyncio.run(run()) == [[2], [1], [0], [3]]


def test_cohere_client_sees_errors_as_api_errors(minilm_server: RerankdServer) -> None:
    co = cohere.ClientV2(api_key="dummy", base_url=minilm_server.url)
    with pytest.raises(cohere.core.api_error.ApiError) as err:
        co.rerank(model="no-such-model", query=QUERY, documents=DOCS)
    assert err.value.status_code == 404
    assert isinstance(err.value.body, dict)
    assert "no-such-model" in err.value.body["message"]


def test_langchain_cohere_rerank(minilm_server: RerankdServer) -> None:
    reranker = LangChainCohereRerank(
        base_url=minilm_server.url, model=MODEL, cohere_api_key=SecretStr("dummy"), top_n=2
    )
    docs = [Document(page_content=t, metadata={"i": i}) for i, t in enumerate(DOCS)]
    ranked = reranker.compress_documents(docs, QUERY)
    assert [d.metadata["i"] for d in ranked] == [2, 3]
    assert ranked[0].metadata["relevance_score"] > ranked[1].metadata["relevance_score"]


LLAMA_INDEX_SCRIPT = """
import json, sys
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.postprocessor.cohere_rerank import CohereRerank

url, model, query, docs = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
reranker = CohereRerank(api_key="dummy", model=model, top_n=2, base_url=url)
nodes = [NodeWithScore(node=TextNode(text=t, id_=str(i)), score=0.0) for i, t in enumerate(docs)]
ranked = reranker.postprocess_nodes(nodes, query_str=query)
print(json.dumps([[n.node.node_id, n.score] for n in ranked]))
"""


def test_llama_index_cohere_rerank(minilm_server: RerankdServer) -> None:
    ranked = run_apart(LLAMA_INDEX, LLAMA_INDEX_SCRIPT, minilm_server.url, MODEL, QUERY, json.dumps(DOCS))
    assert [node_id for node_id, _ in ranked] == ["2", "3"]
    assert ranked[0][1] > 0.5
    assert ranked[0][1] > ranked[1][1]
