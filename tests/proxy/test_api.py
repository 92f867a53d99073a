"""Raw HTTP against a real server on the embedded model: every rule of the API contract."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.servers import RerankdServer, rerankd_server

QUERY = "What is the capital of France?"
DOCS = ["Berlin is the capital of Germany.", "I like bananas.", "Paris is the capital of France."]
ROUTES = ["/v1/rerank", "/v2/rerank", "/rerank"]


def post(server: RerankdServer, path: str, body: Any, **kw: Any) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60, **kw)


def assert_error(r: httpx.Response, status: int, *fragments: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert set(body) == {"message", "detail", "id"}
    assert body["id"] == r.headers["x-request-id"]
    for fragment in fragments:
        assert fragment in body["message"], body
    return body


@pytest.mark.parametrize("path", ROUTES)
def test_ranks_and_sorts(minilm_server: RerankdServer, path: str) -> None:
    r = post(minilm_server, path, {"query": QUERY, "documents": DOCS})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["index"] for x in results] == [2, 0, 1]
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True)
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)


def test_cohere_meta_and_no_document_by_default(minilm_server: RerankdServer) -> None:
    for path, version in (("/v1/rerank", "1"), ("/v2/rerank", "2")):
        body = post(minilm_server, path, {"query": QUERY, "documents": DOCS}).json()
        assert body["meta"]["api_version"] == {"version": version}
        assert body["meta"]["billed_units"] == {"search_units": 1}
        assert body["meta"]["tokens"]["input_tokens"] > 20
        assert isinstance(body["id"], str)
        assert body["id"]
        # Absent, not null: several clients reject "document": null.
        assert all(set(x) == {"index", "relevance_score"} for x in body["results"])


def test_jina_route_returns_documents_and_usage(minilm_server: RerankdServer) -> None:
    body = post(minilm_server, "/rerank", {"query": QUERY, "documents": DOCS}).json()
    assert body["model"] == "all-MiniLM-L6-v2"
    assert body["usage"]["total_tokens"] > 20
    assert body["results"][0]["document"] == {"text": DOCS[2]}
    off = post(
        minilm_server, "/rerank", {"query": QUERY, "documents": DOCS, "return_documents": False}
    ).json()
    assert all("document" not in x for x in off["results"])


def test_return_documents_gives_strings_as_text_and_objects_as_sent(minilm_server: RerankdServer) -> None:
    docs = ["Paris is the capital of France.", {"title": "Bananas", "text": "I like bananas.", "n": 3}]
    body = post(
        minilm_server, "/v1/rerank", {"query": QUERY, "documents": docs, "return_documents": True}
    ).json()
    by_index = {x["index"]: x["document"] for x in body["results"]}
    assert by_index == {0: {"text": docs[0]}, 1: docs[1]}


def test_rank_fields_pick_and_order_object_fields(minilm_server: RerankdServer) -> None:
    docs = [
        {"title": "Bananas", "body": "Paris is the capital of France."},
        {"title": "Capitals", "body": "I like bananas."},
    ]
    on_body = post(minilm_server, "/v2/rerank", {"query": QUERY, "documents": docs, "rank_fields": ["body"]})
    assert [x["index"] for x in on_body.json()["results"]] == [0, 1]
    missing = post(minilm_server, "/v2/rerank", {"query": QUERY, "documents": docs, "rank_fields": ["nope"]})
    assert_error(missing, 400, "documents[0]", "nope")


def test_top_n_limits_and_clamps(minilm_server: RerankdServer) -> None:
    one = post(minilm_server, "/v2/rerank", {"query": QUERY, "documents": DOCS, "top_n": 1}).json()
    assert [x["index"] for x in one["results"]] == [2]
    many = post(minilm_server, "/v2/rerank", {"query": QUERY, "documents": DOCS, "top_n": 50}).json()
    assert len(many["results"]) == 3


def test_ties_keep_document_order(minilm_server: RerankdServer) -> None:
    body = post(minilm_server, "/v2/rerank", {"query": QUERY, "documents": ["same text"] * 4}).json()
    assert [x["index"] for x in body["results"]] == [0, 1, 2, 3]


def test_search_units_follow_cohere_rule(minilm_server: RerankdServer) -> None:
    docs = [f"document number {i}" for i in range(101)]
    body = post(minilm_server, "/v2/rerank", {"query": QUERY, "documents": docs}).json()
    assert body["meta"]["billed_units"]["search_units"] == 2
    assert len(body["results"]) == 101


def test_models_default_alias_and_unknown(minilm_server: RerankdServer) -> None:
    alias = post(
        minilm_server, "/v2/rerank", {"model": "rerank-english-v3.0", "query": QUERY, "documents": DOCS}
    )
    assert alias.status_code == 200
    unknown = post(minilm_server, "/v2/rerank", {"model": "gpt-9", "query": QUERY, "documents": DOCS})
    body = assert_error(unknown, 404, "gpt-9")
    assert "all-MiniLM-L6-v2" in body["detail"]
    listing = httpx.get(minilm_server.url + "/v1/models").json()
    assert listing["data"][0]["id"] == "all-MiniLM-L6-v2"
    assert listing["data"][0]["aliases"] == ["rerank-english-v3.0"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"query": "", "documents": DOCS}, "query must not be empty"),
        ({"query": "   ", "documents": DOCS}, "query must not be empty"),
        ({"query": QUERY, "documents": []}, "list of documents must not be empty"),
        ({"query": 5, "documents": DOCS}, "query"),
        ({"query": QUERY, "documents": [1, 2]}, "documents[0]"),
        ({"query": QUERY, "documents": "one string"}, "documents"),
        ({"documents": DOCS}, "query"),
        ({"query": QUERY, "documents": DOCS, "top_n": -1}, "top_n"),
        ({"query": QUERY, "documents": DOCS, "max_chunks_per_doc": 0}, "max_chunks_per_doc"),
        ({"query": QUERY, "documents": DOCS, "priority": 1000}, "priority"),
        ([QUERY], "object"),
    ],
)
@pytest.mark.parametrize("path", ROUTES)
def test_bad_requests_are_400_with_the_field(
    minilm_server: RerankdServer, path: str, body: Any, fragment: str
) -> None:
    assert_error(post(minilm_server, path, body), 400, "invalid request", fragment)


def test_malformed_json_is_400(minilm_server: RerankdServer) -> None:
    r = httpx.post(
        minilm_server.url + "/v2/rerank",
        content=b'{"query": "x", "documents": [',
        headers={"content-type": "application/json"},
    )
    assert_error(r, 400, "malformed JSON")


def test_unknown_fields_are_ignored(minilm_server: RerankdServer) -> None:
    r = post(
        minilm_server, "/v2/rerank", {"query": QUERY, "documents": DOCS, "truncation": True, "x": {"y": 1}}
    )
    assert r.status_code == 200


def test_request_id_is_echoed(minilm_server: RerankdServer) -> None:
    r = post(
        minilm_server, "/v2/rerank", {"query": QUERY, "documents": DOCS}, headers={"X-Request-ID": "abc-123"}
    )
    assert r.headers["x-request-id"] == "abc-123"
    assert r.json()["id"] == "abc-123"
    bad = post(
        minilm_server, "/v2/rerank", {"query": "", "documents": DOCS}, headers={"X-Request-ID": "abc-124"}
    )
    assert bad.json()["id"] == "abc-124"


def test_long_documents_are_truncated_not_rejected(minilm_server: RerankdServer) -> None:
    long_doc = "Paris is the capital of France. " * 400  # far beyond MiniLM's 256 tokens
    for path in ROUTES:
        r = post(minilm_server, path, {"query": QUERY, "documents": [long_doc, "bananas"]})
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["index"] == 0


def test_v1_chunks_long_documents_and_bills_each_chunk(minilm_server: RerankdServer) -> None:
    # The answer sits at the end of a long document: truncation misses it, chunking finds it.
    filler = "Bananas grow in warm climates and are rich in potassium. " * 60
    doc = filler + "Paris is the capital of France."
    v2 = post(minilm_server, "/v2/rerank", {"query": QUERY, "documents": [doc]}).json()
    v1 = post(minilm_server, "/v1/rerank", {"query": QUERY, "documents": [doc]}).json()
    assert v1["results"][0]["relevance_score"] > v2["results"][0]["relevance_score"] + 0.05
    assert v1["meta"]["tokens"]["input_tokens"] > 2 * v2["meta"]["tokens"]["input_tokens"]
    capped = post(
        minilm_server, "/v1/rerank", {"query": QUERY, "documents": [doc], "max_chunks_per_doc": 1}
    ).json()
    assert capped["results"][0]["relevance_score"] == pytest.approx(
        v2["results"][0]["relevance_score"], abs=1e-6
    )


def test_status_and_docs_routes(minilm_server: RerankdServer) -> None:
    assert httpx.get(minilm_server.url + "/health").json() == {"status": "ok"}
    assert httpx.get(minilm_server.url + "/ready").json() == {"status": "ready"}
    schema = httpx.get(minilm_server.url + "/docs/openapi.json").json()
    assert {"/v1/rerank", "/v2/rerank", "/rerank", "/v1/models"} <= set(schema["paths"])
    assert httpx.get(minilm_server.url + "/docs").status_code == 200
    assert_error(httpx.get(minilm_server.url + "/nope"), 404)
    assert_error(httpx.get(minilm_server.url + "/v2/rerank"), 405)


@pytest.fixture(scope="module")
def strict_server() -> Iterator[RerankdServer]:
    """Small limits, and MiniLM told a context longer than its 512 positions: long input breaks it."""
    with rerankd_server(["--max-documents", "5", "--max-body-bytes", "4000"]) as server:
        yield server


def test_limits(strict_server: RerankdServer) -> None:
    too_many = post(strict_server, "/v2/rerank", {"query": QUERY, "documents": ["d"] * 6})
    assert_error(too_many, 400, "too many documents")
    huge = post(strict_server, "/v2/rerank", {"query": QUERY, "documents": ["x" * 5000]})
    assert_error(huge, 413)
    assert post(strict_server, "/v2/rerank", {"query": QUERY, "documents": ["d"] * 5}).status_code == 200


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 1000 + b"]" * 1000,  # nested too deeply for the decoder: 2 KB of brackets
        b'{"query": "q", "documents": ["d"], "x": ' + b"[" * 1000 + b"]" * 1000 + b"}",
        b'{"query": "q", "documents": [{"text": "d", "n": ' + b'{"a": ' * 1000 + b"1" + b"}" * 1001 + b"]}",
        b"",
        b"null",
        b"not json at all",
        b'{"query": "q", "documents": ["\xff\xfe"]}',  # not UTF-8
        b'{"query": "q", "documents": ["d"]} trailing',
    ],
    ids=["deep", "deep-unknown-field", "deep-document", "empty", "null", "text", "not-utf8", "trailing"],
)
def test_every_malformed_body_is_400_without_a_traceback(minilm_server: RerankdServer, raw: bytes) -> None:
    r = httpx.post(
        minilm_server.url + "/v2/rerank",
        content=raw,
        headers={"content-type": "application/json", "X-Request-ID": "malformed-body-1"},
        timeout=60,
    )
    body = assert_error(r, 400, "invalid request")
    assert body["id"] == "malformed-body-1"
    assert "Traceback" not in minilm_server.log()
    assert "unhandled error" not in minilm_server.log()


def test_nesting_below_the_decoders_limit_is_accepted(minilm_server: RerankdServer) -> None:
    deep = {"query": QUERY, "documents": DOCS, "x": json.loads("[" * 500 + "]" * 500)}
    assert post(minilm_server, "/v2/rerank", deep).status_code == 200


def test_router_refusals_echo_the_request_id_and_405_says_allow(minilm_server: RerankdServer) -> None:
    wrong_method = httpx.get(minilm_server.url + "/v2/rerank", headers={"X-Request-ID": "router-405"})
    body = assert_error(wrong_method, 405)
    assert body["id"] == "router-405"
    allowed = {m.strip() for m in wrong_method.headers["allow"].split(",")}
    assert "POST" in allowed
    assert "GET" not in allowed
    missing = httpx.post(minilm_server.url + "/v9/nothing", json={}, headers={"X-Request-ID": "router-404"})
    assert assert_error(missing, 404)["id"] == "router-404"
    # An id of an unsafe shape is replaced, on router refusals as on any answer.
    unsafe = httpx.get(minilm_server.url + "/nope", headers={"X-Request-ID": "bad id with spaces"})
    assert assert_error(unsafe, 404)["id"] != "bad id with spaces"
    assert (
        httpx.get(minilm_server.url + "/health", headers={"X-Request-ID": "probe-1"}).headers["x-request-id"]
        == "probe-1"
    )
