"""A guard on the cost of a fully cached request, in a measure a shared machine cannot skew.

Time varies with the neighbours; the number of function calls a request makes does not. The server
(uvicorn, the app, the embedded model, the in-process cache) runs on this test's event loop, a raw
socket sends it fully cached ``/v2/rerank`` requests, and ``sys.setprofile`` counts every Python
and C function call the loop makes per request (the client's share is a few calls, the same for
every request). Two sizes of request separate the cost per document from the cost per request.

Measured with this code (Python 3.11, Litestar 2.25, uvicorn 0.54): 5.3 calls per document, nearly
all C (encode and hash the document, append its key; 0.2 Python calls, uvicorn reading a longer
body), and about 275 Python function calls per request, client included: 388 when the same request
goes through Litestar's handler instead of the direct route. Before the middleware merge and the
bulk cache path the same test measured 18.3 calls per document (2.2 Python) and 456 Python calls
per request. Each bound below leaves room for library updates, not for another layer per request
or another step per document; the per-request bound fails if scoring requests stop taking the
direct route.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import pytest
import uvicorn

from rerankd.config import Settings
from rerankd.proxy.app import create_app
from rerankd.service import RerankService
from tests.servers import free_port

#: Calls per document (Python and C together), and Python function calls per document.
MAX_CALLS_PER_DOCUMENT = 8
MAX_PYTHON_CALLS_PER_DOCUMENT = 0.5
#: Python function calls per request beyond the documents' share (HTTP, routing, middleware, ranking).
#: Measured 275 through the direct route, 388 through Litestar's handler: a bound between the two.
MAX_PYTHON_CALLS_PER_REQUEST = 330


@dataclass
class Counts:
    python: float
    c: float


@pytest.fixture
async def port() -> AsyncIterator[int]:
    service = RerankService(Settings())
    app = create_app(Settings(), service=service)
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    for _ in range(1200):
        if server.started and service.ready:
            break
        await asyncio.sleep(0.1)
    try:
        yield config.port
    finally:
        server.should_exit = True
        await serving


def _request(n_docs: int) -> bytes:
    docs = [f"document {i}: " + "the museums of the capital and its rivers " * 6 for i in range(n_docs)]
    body = json.dumps({"query": "which city has the most museums?", "documents": docs}).encode()
    head = "POST /v2/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bytes:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in lines if line.startswith(b"content-length"))
    await reader.readexactly(length)
    return head


async def _count(port: int, n_docs: int, rounds: int = 20) -> Counts:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = _request(n_docs)
    try:
        for _ in range(100):  # until every pair is cached (writes land behind the responses)
            if b"x-cache-hits: %d/%d" % (n_docs, n_docs) in await _exchange(reader, writer, request):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the request never became fully cached")
        calls = {"call": 0, "c_call": 0}

        def profile(frame: FrameType, event: str, arg: Any) -> None:
            if event in calls:
                calls[event] += 1

        sys.setprofile(profile)
        try:
            for _ in range(rounds):
                head = await _exchange(reader, writer, request)
        finally:
            sys.setprofile(None)
        assert b"x-cache-hits: %d/%d" % (n_docs, n_docs) in head
        return Counts(calls["call"] / rounds, calls["c_call"] / rounds)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_cached_request_costs_a_bounded_number_of_calls(port: int) -> None:
    small, large = await _count(port, 50), await _count(port, 250)
    per_doc_python = (large.python - small.python) / 200
    per_doc = (large.python + large.c - small.python - small.c) / 200
    per_request_python = small.python - 50 * per_doc_python
    report = (
        f"per document: {per_doc:.2f} calls, {per_doc_python:.2f} Python; "
        f"per request: {per_request_python:.0f} Python"
    )
    assert per_doc <= MAX_CALLS_PER_DOCUMENT, report
    assert per_doc_python <= MAX_PYTHON_CALLS_PER_DOCUMENT, report
    assert per_request_python <= MAX_PYTHON_CALLS_PER_REQUEST, report
    assert per_doc >= 1, report  # the measure works: hashing a document is at least one call
