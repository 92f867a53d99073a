"""The remote engine's upstream breaker against real HTTP on loopback: a small Cohere-API upstream
(uvicorn on a thread) and an address where nothing listens."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import msgspec
import pytest
import uvicorn

from rerankd.adapters.factory import resolve_source
from rerankd.adapters.formats import EncodeOptions
from rerankd.adapters.remote import COOLDOWN_S, RemoteEngine
from rerankd.config import ModelConfig, Settings
from tests.servers import free_port, wait_for


async def _upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """POST /v2/rerank: each document scores by its length; GET anything else: 200."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    docs = msgspec.json.decode(body)["documents"] if body else []
    reply = {"results": [{"index": i, "relevance_score": 1 / (1 + len(d))} for i, d in enumerate(docs)]}
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": msgspec.json.encode(reply)})


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(_upstream, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(url, timeout=1).status_code == 200, 10, "the upstream")
    yield url
    server.should_exit = True
    thread.join(10)


@pytest.fixture
async def engine(upstream: str) -> AsyncIterator[RemoteEngine]:
    dead = f"http://127.0.0.1:{free_port()}"
    settings = Settings(
        engine="remote", upstreams=(dead, upstream), models=(ModelConfig(name="m", path="up"),)
    )
    made = RemoteEngine(resolve_source(settings.models[0], settings), settings)
    await made.start()
    yield made
    await made.close()


async def test_an_unreachable_upstream_opens_its_breaker_and_is_tried_last(engine: RemoteEngine) -> None:
    dead, live = engine.upstreams
    opts = EncodeOptions()
    for _ in range(4):
        result = await engine.score("q", ["a", "bbb"], opts)
        assert result.scores == pytest.approx([1 / 2, 1 / 4])
    # The dead one failed once, then sat behind the live one while its breaker was open.
    assert engine.stats()["failed_attempts"] == 1
    assert engine._breakers[dead].is_open
    assert not engine._breakers[live].is_open
    assert engine.healthy
    assert 0 < engine._breakers[dead].retry_in() <= COOLDOWN_S
