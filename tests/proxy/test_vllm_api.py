"""vLLM's score and rerank APIs, TEI's body on /rerank, warnings, strictness and raw scores.

Requests have the shapes vLLM's own API tests send; answers are read with vLLM's response models
where vLLM is installed (scripts/test installs it), so a field vLLM needs cannot go missing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.tiny_cross_encoder import build as build_cross_encoder
from tests.servers import RerankdServer, rerankd_server

MODEL = "all-MiniLM-L6-v2"
QUERIES = ["What is the capital of France?", "What is the capital of Germany?"]
ANSWERS = ["The capital of France is Paris.", "The capital of Germany is Berlin."]
LONG_QUERY = "What is the capital of France? " * 100  # far beyond MiniLM's 256 tokens


def post(server: RerankdServer, path: str, body: Any) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60)


def reference(server: RerankdServer, query: str, documents: list[str]) -> list[float]:
    """Scores in document order from the Cohere v2 route."""
    body = post(server, "/v2/rerank", {"query": query, "documents": documents}).json()
    scores = {r["index"]: r["relevance_score"] for r in body["results"]}
    return [scores[i] for i in range(len(documents))]


@pytest.fixture(scope="module")
def vllm_protocol() -> Any:
    return pytest.importorskip("vllm.entrypoints.pooling.scoring.protocol")


@pytest.mark.parametrize(
    ("first", "second"),
    [("text_1", "text_2"), ("queries", "documents"), ("queries", "items"), ("data_1", "data_2")],
)
@pytest.mark.parametrize("path", ["/score", "/v1/score"])
def test_score_pairs_lists_pairwise(
    minilm_server: RerankdServer, vllm_protocol: Any, path: str, first: str, second: str
) -> None:
    r = post(minilm_server, path, {"model": MODEL, first: QUERIES, second: ANSWERS})
    assert r.status_code == 200, r.text
    score = vllm_protocol.ScoreResponse.model_validate(r.json())
    assert [d.index for d in score.data] == [0, 1]
    assert score.model == MODEL
    want = [reference(minilm_server, q, [a])[0] for q, a in zip(QUERIES, ANSWERS, strict=True)]
    assert [d.score for d in score.data] == pytest.approx(want, abs=1e-6)
    assert score.usage.prompt_tokens > 10
    assert score.usage.total_tokens == score.usage.prompt_tokens


def test_score_one_query_against_many_and_one_to_one(
    minilm_server: RerankdServer, vllm_protocol: Any
) -> None:
    many = vllm_protocol.ScoreResponse.model_validate(
        post(minilm_server, "/score", {"model": MODEL, "queries": QUERIES[0], "documents": ANSWERS}).json()
    )
    # In input order, not ranked: the second answer scores lower but stays second.
    assert [d.index for d in many.data] == [0, 1]
    assert [d.score for d in many.data] == pytest.approx(
        reference(minilm_server, QUERIES[0], ANSWERS), abs=1e-6
    )
    assert many.data[0].score > many.data[1].score
    one = vllm_protocol.ScoreResponse.model_validate(
        post(minilm_server, "/score", {"model": MODEL, "queries": QUERIES[0], "documents": ANSWERS[0]}).json()
    )
    assert len(one.data) == 1
    assert one.data[0].score == pytest.approx(many.data[0].score, abs=1e-6)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"text_1": QUERIES, "text_2": [*ANSWERS, "more"]}, "2 items and the second 3"),
        ({"text_1": QUERIES[0]}, "text_1 and text_2"),
        ({"text_1": [], "text_2": ANSWERS}, "must not be empty"),
        ({"text_1": QUERIES[0], "text_2": [1]}, "text_2"),
    ],
)
def test_score_refuses_bad_inputs(minilm_server: RerankdServer, body: dict[str, Any], fragment: str) -> None:
    r = post(minilm_server, "/score", body)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["message"]


def test_rerank_answers_in_vllm_shape(minilm_server: RerankdServer, vllm_protocol: Any) -> None:
    documents = [
        "The capital of Brazil is Brasilia.",
        "The capital of France is Paris.",
        "Cross-encoders are neat",
    ]
    r = post(
        minilm_server, "/rerank", {"model": MODEL, "query": QUERIES[0], "documents": documents, "top_n": 2}
    )
    assert r.status_code == 200, r.text
    rerank = vllm_protocol.RerankResponse.model_validate(r.json())
    assert [x.index for x in rerank.results] == [1, 0]
    assert [x.document.text for x in rerank.results] == [documents[1], documents[0]]
    want = reference(minilm_server, QUERIES[0], documents)
    assert [x.relevance_score for x in rerank.results] == pytest.approx([want[1], want[0]], abs=1e-6)
    assert rerank.usage.prompt_tokens > 10
    assert rerank.usage.total_tokens == rerank.usage.prompt_tokens


def test_rerank_max_tokens_per_doc_reduces_tokens(minilm_server: RerankdServer) -> None:
    long_doc = "The capital of France is Paris. " * 10
    body = {"model": MODEL, "query": QUERIES[0], "documents": [long_doc]}
    full = post(minilm_server, "/rerank", body).json()
    capped = post(minilm_server, "/rerank", {**body, "max_tokens_per_doc": 10}).json()
    assert capped["usage"]["prompt_tokens"] < full["usage"]["prompt_tokens"] - 30


@pytest.mark.parametrize("path", ["/rerank", "/score"])
def test_a_query_over_the_context_is_refused_as_vllm_does(minilm_server: RerankdServer, path: str) -> None:
    body: dict[str, Any] = {"model": MODEL, "query": LONG_QUERY, "documents": ANSWERS}
    if path == "/score":
        body = {"model": MODEL, "queries": LONG_QUERY, "documents": ANSWERS}
    r = post(minilm_server, path, body)
    assert r.status_code == 400, r.text
    assert "Please reduce the length of the input prompt" in r.json()["message"]
    cut = post(minilm_server, path, {**body, "truncate_prompt_tokens": 200})
    assert cut.status_code == 200, cut.text
    assert "truncated" in cut.headers["x-api-warning"]


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
def test_a_query_over_the_context_is_cut_with_a_warning_on_cohere_routes(
    minilm_server: RerankdServer, path: str
) -> None:
    r = post(minilm_server, path, {"query": LONG_QUERY, "documents": ANSWERS})
    assert r.status_code == 200, r.text
    (warning,) = r.json()["meta"]["warnings"]
    assert "more than the 256 that fit" in warning
    assert r.headers["x-api-warning"] == warning


def test_use_activation_false_gives_the_raw_score(minilm_server: RerankdServer) -> None:
    body = {"model": MODEL, "query": QUERIES[0], "documents": ANSWERS}

    def scores(**extra: Any) -> list[float]:
        results = post(minilm_server, "/rerank", {**body, **extra}).json()["results"]
        return [x["relevance_score"] for x in sorted(results, key=lambda x: x["index"])]

    default, on, off = scores(), scores(use_activation=True), scores(use_activation=False)
    assert on == pytest.approx(default, abs=1e-6)
    # The embedded bi-encoder's activation maps the cosine c to (c + 1) / 2.
    assert [(c + 1) / 2 for c in off] == pytest.approx(on, abs=1e-6)
    assert off != pytest.approx(on, abs=1e-2)
    score = post(
        minilm_server, "/score", {"text_1": QUERIES[0], "text_2": ANSWERS, "use_activation": False}
    ).json()
    assert [d["score"] for d in score["data"]] == pytest.approx(off, abs=1e-6)


def test_unknown_fields_are_answered_with_a_warning(minilm_server: RerankdServer) -> None:
    body = {"query": QUERIES[0], "documents": ANSWERS, "top_k": 1}
    for path in ("/v1/rerank", "/v2/rerank", "/rerank"):
        r = post(minilm_server, path, body)
        assert r.status_code == 200, r.text
        assert len(r.json()["results"]) == 2  # top_k is not top_n: every document comes back
        assert r.headers["x-api-warning"] == "unknown field 'top_k' ignored (did you mean 'top_n'?)"
        if path != "/rerank":
            assert r.json()["meta"]["warnings"] == [r.headers["x-api-warning"]]
    clean = post(minilm_server, "/v2/rerank", {"query": QUERIES[0], "documents": ANSWERS})
    assert "x-api-warning" not in clean.headers
    assert "warnings" not in clean.json()["meta"]


def test_a_field_name_cannot_break_the_warning_header(minilm_server: RerankdServer) -> None:
    r = post(
        minilm_server, "/v2/rerank", {"query": QUERIES[0], "documents": ANSWERS, "x\r\nSet-Cookie: a=é": 1}
    )
    assert r.status_code == 200, r.text
    assert "set-cookie" not in r.headers
    assert "\\r\\n" in r.headers["x-api-warning"]


@pytest.fixture(scope="module")
def strict_server() -> Iterator[RerankdServer]:
    with rerankd_server(["--strict"]) as server:
        yield server


def test_strict_refuses_unknown_fields_with_422(strict_server: RerankdServer) -> None:
    r = post(strict_server, "/v2/rerank", {"query": QUERIES[0], "documents": ANSWERS, "top_k": 1})
    assert r.status_code == 422, r.text
    body = r.json()
    assert set(body) == {"message", "detail", "id"}
    assert "unknown field 'top_k' (did you mean 'top_n'?)" in body["message"]
    assert post(strict_server, "/v2/rerank", {"query": QUERIES[0], "documents": ANSWERS}).status_code == 200


def test_tei_body_is_answered_in_tei_shape(minilm_server: RerankdServer) -> None:
    texts = ["Berlin is the capital of Germany.", "Paris is the capital of France."]
    want = reference(minilm_server, QUERIES[0], texts)
    r = post(minilm_server, "/rerank", {"query": QUERIES[0], "texts": texts})
    assert r.status_code == 200, r.text
    assert r.json() == [
        {"index": 1, "score": pytest.approx(want[1], abs=1e-6)},
        {"index": 0, "score": pytest.approx(want[0], abs=1e-6)},
    ]
    raw = post(
        minilm_server,
        "/rerank",
        {"query": QUERIES[0], "texts": texts, "raw_scores": True, "return_text": True},
    )
    assert raw.json() == [
        {"index": 1, "score": pytest.approx(2 * want[1] - 1, abs=1e-6), "text": texts[1]},
        {"index": 0, "score": pytest.approx(2 * want[0] - 1, abs=1e-6), "text": texts[0]},
    ]


def test_tei_truncate_and_truncation_direction(minilm_server: RerankdServer) -> None:
    long = post(minilm_server, "/rerank", {"query": LONG_QUERY, "texts": ANSWERS})
    assert long.status_code == 400  # TEI's default: truncate false
    cut = post(minilm_server, "/rerank", {"query": LONG_QUERY, "texts": ANSWERS, "truncate": True})
    assert cut.status_code == 200, cut.text
    # The answer sits at the end of a long text: cutting on the left keeps it, on the right loses it.
    text = "Bananas grow in warm climates and are rich in potassium. " * 40 + ANSWERS[0]
    body = {"query": QUERIES[0], "texts": [text], "truncate": True}
    right = post(minilm_server, "/rerank", {**body, "truncation_direction": "Right"}).json()[0]["score"]
    left = post(minilm_server, "/rerank", {**body, "truncation_direction": "Left"}).json()[0]["score"]
    assert left > right + 0.05


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"query": "q"}, "missing required field 'documents' (or 'texts'"),
        ({"query": "q", "texts": ["a"], "documents": ["b"]}, "not both"),
    ],
)
def test_rerank_bodies_of_neither_shape_are_400(
    minilm_server: RerankdServer, body: dict[str, Any], fragment: str
) -> None:
    r = post(minilm_server, "/rerank", body)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["message"]


def test_models_list_carries_vllm_fields(minilm_server: RerankdServer) -> None:
    (card,) = httpx.get(minilm_server.url + "/v1/models").json()["data"]
    assert card["id"] == MODEL
    assert card["max_model_len"] == card["max_length"] == 256
    assert card["object"] == "model"
    assert isinstance(card["created"], int)
    assert card["root"]
    assert card["permission"][0]["object"] == "model_permission"
    assert card["format"] == "bi-encoder"
    assert card["aliases"] == ["rerank-english-v3.0"]


@pytest.fixture(scope="module")
def cross_encoder_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RerankdServer]:
    folder: Path = build_cross_encoder(tmp_path_factory.mktemp("models") / "tiny-ce")
    with rerankd_server(["--model", f"ce={folder}", "--no-cache"]) as server:
        yield server


def test_raw_scores_of_a_cross_encoder_are_its_logits(cross_encoder_server: RerankdServer) -> None:
    body = {"query": QUERIES[0], "documents": [*ANSWERS, "bananas"]}

    def by_index(path: str, **extra: Any) -> list[float]:
        results = post(cross_encoder_server, path, {**body, **extra}).json()["results"]
        return [x["relevance_score"] for x in sorted(results, key=lambda x: x["index"])]

    activated, raw = by_index("/rerank"), by_index("/rerank", use_activation=False)
    assert [1 / (1 + math.exp(-x)) for x in raw] == pytest.approx(activated, abs=1e-6)
    assert raw != pytest.approx(activated, abs=1e-3)
    infinity = post(cross_encoder_server, "/infinity/rerank", {**body, "raw_scores": True}).json()
    assert sorted(r["relevance_score"] for r in infinity["results"]) == pytest.approx(sorted(raw), abs=1e-6)


def test_raw_scores_of_an_llm_reranker_are_yes_minus_no_logits(tiny_qwen3_dir: Path) -> None:
    with rerankd_server(["--model", f"q={tiny_qwen3_dir}", "--no-cache"]) as server:
        body = {"text_1": QUERIES[0], "text_2": [*ANSWERS, "bananas"]}
        activated = [d["score"] for d in post(server, "/score", body).json()["data"]]
        raw = [d["score"] for d in post(server, "/score", {**body, "use_activation": False}).json()["data"]]
    # P(yes) over {yes, no} is the sigmoid of logit(yes) - logit(no).
    assert [1 / (1 + math.exp(-x)) for x in raw] == pytest.approx(activated, abs=1e-6)
    assert raw != pytest.approx(activated, abs=1e-3)
