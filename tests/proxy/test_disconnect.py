"""A client that disconnects has its queued documents dropped, not scored."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

from rerankd.config import Settings
from tests.servers import inprocess_server, wait_for


def test_disconnect_drops_queued_work() -> None:
    # One row per batch: a 600-document request takes many batches, so most are still queued
    # when the client leaves.
    settings = Settings(max_batch_size=1)
    with inprocess_server(settings) as srv:
        engine = srv.service.engines["all-MiniLM-L6-v2"]
        before = engine.stats()["sequences"]
        body = json.dumps({"query": "q", "documents": [f"document {i} " * 20 for i in range(600)]}).encode()
        host = urlsplit(srv.url)
        with socket.create_connection((host.hostname, host.port)) as sock:
            sock.sendall(
                b"POST /v2/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            wait_for(lambda: engine.stats()["sequences"] > before, 30, "scoring to start")
        # The connection is closed: within a moment the worker stops taking this request's rows.
        time.sleep(1.0)
        settled = engine.stats()["sequences"]
        time.sleep(1.0)
        assert engine.stats()["sequences"] == settled
        assert settled - before < 600
        assert engine.stats()["queue_depth"] == 0
