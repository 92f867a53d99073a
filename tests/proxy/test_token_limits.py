"""Token limits under a burst: 20 concurrent requests on a key with a small ``tpm``, over real HTTP,
with limits in the server process (keys file) and in a real Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from rerankd.adapters.formats import EncodeOptions
from rerankd.estimate import token_bound
from tests.proxy.auth_helpers import assert_error_body, eventually, keys_cli, new_key
from tests.servers import RerankdServer, redis_server, rerankd_server

BURST = 20


def body(i: int) -> dict[str, Any]:
    return {
        "query": f"What is the capital of France? ({i})",
        "documents": [f"Paris is the capital of France ({i}).", f"Bananas are yellow ({i})."],
    }


#: The server, its key store's flags, and a key without limits that it loaded at start-up.
Served = tuple[RerankdServer, tuple[str, ...], str]


@pytest.fixture(params=["memory", "redis"])
def limited(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    if request.param == "memory":
        store: tuple[str, ...] = ("--keys-file", str(tmp_path / "keys.json"))
        yield from _serve(store)
    else:
        with redis_server() as redis:
            yield from _serve(("--redis-url", redis.url))


def _serve(store: tuple[str, ...]) -> Iterator[Served]:
    free = new_key("free", *store)
    with rerankd_server([*store]) as server:
        yield server, store, free


def test_a_burst_scores_at_most_tpm_plus_one_request(limited: Served) -> None:
    server, store, free = limited
    with httpx.Client(base_url=server.url, timeout=120) as client:
        card = client.get("/v1/models", headers={"Authorization": f"Bearer {free}"}).json()["data"][0]
    # The most tokens one request of the burst may reserve; the key's bucket holds three of them.
    bounds = [
        token_bound(card["format"], card["max_length"], b["query"], b["documents"], EncodeOptions())
        for b in map(body, range(BURST))
    ]
    most = max(bounds)

    tpm = 3 * most
    key = new_key("bursty", *store, limits=("--tpm", str(tpm)))
    with httpx.Client(base_url=server.url, timeout=120) as client:
        # The server reloads keys every 2 s; /v1/models costs the key no tokens.
        eventually(
            lambda: client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200,
            10,
            "the new key works",
        )

    def send(i: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            return c.post("/v2/rerank", json=body(i), headers={"Authorization": f"Bearer {key}"})

    started = time.monotonic()
    with ThreadPoolExecutor(BURST) as pool:
        answers = list(pool.map(send, range(BURST)))
    elapsed = time.monotonic() - started
    for r, bound_of_one in zip(answers, bounds, strict=True):
        if r.status_code == 200:  # the reservation's bound is never below what is scored
            assert r.json()["meta"]["tokens"]["input_tokens"] <= bound_of_one
    ok = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code != 200]
    for r in refused:
        assert_error_body(r, 429)
        assert int(r.headers["retry-after"]) >= 1
    scored = [r.json()["meta"]["tokens"]["input_tokens"] for r in ok]
    assert ok, "the bucket lets some requests through"
    assert refused, "a burst of 20 does not fit a bucket of three requests"
    # The documented bound: tpm plus one request's tokens, plus what refilled during the burst.
    bound = tpm + max(scored) + tpm * elapsed / 60
    assert sum(scored) <= bound, (sum(scored), bound, len(ok))
    if "--redis-url" not in store:
        return  # usage kept in the server process is not readable from outside
    usage = msgspec.json.decode(keys_cli("usage", "bursty", "--json", *store).stdout)
    assert usage["tokens"] == sum(scored)
    # Requests let through: the scored ones and the one /v1/models call that found the key loaded.
    assert (usage["requests"], usage["rate_limited"]) == (len(ok) + 1, len(refused))


def test_the_bound_covers_what_an_llm_reranker_scores(tiny_qwen3_dir: Path) -> None:
    # Byte-level BPE and the Qwen3 prompt template; long documents chunked (v1), an instruction.
    long_doc = "Paris is the capital of France and its largest city. " * 40
    docs = ["Paris", "Berlin, ünïcödé and 東京", long_doc]
    with rerankd_server(["--model", f"qwen3={tiny_qwen3_dir}"]) as server:
        card = httpx.get(server.url + "/v1/models", timeout=30).json()["data"][0]
        for path, chunks in (("/v1/rerank", 10), ("/v2/rerank", 1)):
            for instruction in (None, "Find the capital"):
                body: dict[str, Any] = {"query": "capital of France", "documents": docs}
                if instruction:
                    body["instruction"] = instruction
                r = httpx.post(server.url + path, json=body, timeout=120)
                assert r.status_code == 200, r.text
                scored = r.json()["meta"]["tokens"]["input_tokens"]
                opts = EncodeOptions(instruction=instruction, max_chunks=chunks)
                bound = token_bound(card["format"], card["max_length"], body["query"], docs, opts)
                assert scored <= bound, (path, instruction, scored, bound)
