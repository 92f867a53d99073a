"""The direct scoring routes answer exactly as Litestar's handler does.

Two real servers on loopback, one with the direct routes (the default) and one without, get the
same requests: well-formed ones of every dialect, and the malformed, oversized, unknown-model and
strict-mode ones that the direct route hands on to Litestar or answers with an error itself.
Status, body and headers must be the same, apart from the request id and the timings.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from rerankd.config import Settings
from tests.servers import InProcessServer, inprocess_server

DOCS = ["Paris is the capital of France.", "Bananas are yellow.", "The Louvre is in Paris."]
#: Headers that differ between any two answers.
VARYING = {"x-request-id", "date", "server"} | {
    f"x-{s}-time" for s in ("total", "compute", "tokenization", "queue", "inference")
}

CASES: list[tuple[str, str, Any]] = [
    ("cohere v2", "/v2/rerank", {"query": "capital of France", "documents": DOCS, "top_n": 2}),
    ("cohere v2 documents back", "/v2/rerank", {"query": "q", "documents": DOCS, "return_documents": True}),
    ("cohere v1 objects", "/v1/rerank", {"query": "q", "documents": [{"text": d} for d in DOCS]}),
    ("jina/vllm", "/rerank", {"query": "capital", "documents": DOCS, "top_n": 1, "return_documents": False}),
    ("tei", "/rerank", {"query": "capital", "texts": DOCS, "return_text": True, "raw_scores": True}),
    ("infinity", "/infinity/rerank", {"query": "capital", "documents": DOCS, "return_documents": True}),
    ("vllm score", "/score", {"text_1": "capital", "text_2": DOCS}),
    ("vllm score, several queries", "/v1/score", {"text_1": ["a", "b"], "text_2": ["c", "d"]}),
    ("lax number, as Litestar decodes", "/v2/rerank", {"query": "q", "documents": DOCS, "top_n": "2"}),
    ("unknown field", "/v2/rerank", {"query": "q", "documents": DOCS, "top_k": 2}),
    ("wrong type", "/v2/rerank", {"query": 5, "documents": DOCS}),
    ("missing field", "/v2/rerank", {"documents": DOCS}),
    ("not an object", "/v2/rerank", [1, 2]),
    ("malformed JSON", "/v2/rerank", b'{"query": "q", "documents": ['),
    ("empty body", "/v2/rerank", b""),
    (
        "deep nesting",
        "/v2/rerank",
        b'{"query": "q", "documents": ["a"], "x": %b}' % (b"[" * 5000 + b"]" * 5000),
    ),
    ("unknown model", "/v2/rerank", {"model": "nope", "query": "q", "documents": DOCS}),
    ("no documents", "/v2/rerank", {"query": "q", "documents": []}),
    ("too many documents", "/v2/rerank", {"query": "q", "documents": ["d"] * 30}),
    ("over the body limit", "/v2/rerank", {"query": "q", "documents": ["x" * 3000]}),
    ("bad top_n", "/v2/rerank", {"query": "q", "documents": DOCS, "top_n": 0}),
]


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[InProcessServer, InProcessServer]]:
    settings = Settings(max_documents=20, max_body_bytes=2048)
    with inprocess_server(settings) as direct, inprocess_server(settings, direct=False) as litestar:
        yield direct, litestar


def _send(url: str, path: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json", **(headers or {})}
    return httpx.post(url + path, content=content, headers=headers)


def _comparable(r: httpx.Response) -> tuple[int, Any, dict[str, str]]:
    body = r.json()
    if isinstance(body, dict):
        body.pop("id", None)  # the request id (error bodies); Cohere's response id is random too
        body.pop("created", None)  # a time
    headers = {k: v for k, v in r.headers.items() if k not in VARYING}
    return r.status_code, body, headers


def _same(a: Any, b: Any) -> bool:
    """Equal, floats within 1e-9 (both servers score the same pairs on the same engine)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, int | float) and isinstance(b, int | float) and abs(a - b) <= 1e-9
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize(("path", "body"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_direct_route_answers_as_litestar_does(
    servers: tuple[InProcessServer, InProcessServer], path: str, body: Any
) -> None:
    direct, litestar = servers
    ours, theirs = _send(direct.url, path, body), _send(litestar.url, path, body)
    assert _same(_comparable(ours), _comparable(theirs)), (ours.text, theirs.text)
    assert ours.status_code < 500, ours.text
    assert "x-request-id" in ours.headers


def test_cache_control_and_request_id_reach_the_direct_route(
    servers: tuple[InProcessServer, InProcessServer],
) -> None:
    direct, _ = servers
    body = {"query": "a query only this test sends", "documents": DOCS}
    first = _send(direct.url, "/v2/rerank", body, {"cache-control": "no-store", "x-request-id": "abc-1"})
    again = _send(direct.url, "/v2/rerank", body)
    assert first.status_code == again.status_code == 200
    assert first.headers["x-request-id"] == "abc-1"
    # no-store: nothing was written, so the second request found nothing in the cache
    assert first.headers["x-cache-hits"] == again.headers["x-cache-hits"] == f"0/{len(DOCS)}"


def test_a_chunked_body_is_read_whole(servers: tuple[InProcessServer, InProcessServer]) -> None:
    direct, litestar = servers
    raw = json.dumps({"query": "capital", "documents": DOCS}).encode()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(raw), 7):
            yield raw[i : i + 7]

    ours = httpx.post(direct.url + "/v2/rerank", content=chunks())
    theirs = httpx.post(litestar.url + "/v2/rerank", content=raw)
    assert ours.status_code == 200
    assert _same(_comparable(ours)[1]["results"], _comparable(theirs)[1]["results"])


def test_strict_mode_refuses_unknown_fields_the_same_way() -> None:
    settings = Settings(strict=True)
    body = {"query": "q", "documents": DOCS, "top_k": 1}
    with inprocess_server(settings) as direct, inprocess_server(settings, direct=False) as litestar:
        ours, theirs = _send(direct.url, "/v2/rerank", body), _send(litestar.url, "/v2/rerank", body)
    assert ours.status_code == 422
    assert _same(_comparable(ours), _comparable(theirs))


def test_a_chunked_body_over_the_limit_is_refused_as_litestar_refuses_it(
    servers: tuple[InProcessServer, InProcessServer],
) -> None:
    raw = json.dumps({"query": "q", "documents": ["y" * 3000]}).encode()  # over the 2,048-byte limit

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(raw), 500):
            yield raw[i : i + 500]

    ours, theirs = (httpx.post(s.url + "/v2/rerank", content=chunks()) for s in servers)
    assert ours.status_code == 413
    assert _same(_comparable(ours), _comparable(theirs))
