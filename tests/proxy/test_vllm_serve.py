"""``rerankd serve --engine vllm`` as a real process: model-card scores over HTTP, concurrency,
a responsive event loop while the engine is busy, a dead engine, a failed start."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.adapters.test_vllm_engine import DOCS, LONG, MAX_LENGTH, QUERY
from tests.fixtures.qwen3_reference import model_card_scores
from tests.ranking import assert_ranked_like
from tests.servers import RerankdServer, free_port, rerankd_server, wait_for


def _config(folder: Path, model_dir: Path) -> Path:
    path = folder / "rerankd.json"
    models = [{"name": "tiny", "path": str(model_dir), "max_length": MAX_LENGTH}]
    path.write_text(json.dumps({"models": models}))
    return path


@pytest.fixture(scope="module")
def server(
    tiny_qwen3_dir: Path, vllm_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RerankdServer]:
    config = _config(tmp_path_factory.mktemp("vllm-serve"), tiny_qwen3_dir)
    # No result cache: every request must reach the engine under test.
    args = [
        "--config",
        str(config),
        "--engine",
        "vllm",
        "--dtype",
        "float32",
        "--enforce-eager",
        "--no-cache",
    ]
    with rerankd_server(args, env=vllm_env, timeout=400) as srv:
        yield srv


def _scores(body: dict[str, object], n: int) -> list[float]:
    results = body["results"]
    assert isinstance(results, list)
    out = [0.0] * n
    for r in results:
        out[r["index"]] = r["relevance_score"]
    return out


def test_scores_over_http_equal_the_model_card(server: RerankdServer, tiny_qwen3_dir: Path) -> None:
    expected = model_card_scores(tiny_qwen3_dir, QUERY, DOCS, max_length=MAX_LENGTH)
    for route in ("/v2/rerank", "/rerank"):
        r = httpx.post(
            server.url + route, json={"model": "tiny", "query": QUERY, "documents": DOCS}, timeout=60
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert_ranked_like([x["index"] for x in body["results"]], expected)
        assert _scores(body, len(DOCS)) == pytest.approx(expected, abs=1e-4)


async def test_fifty_concurrent_http_requests(server: RerankdServer, tiny_qwen3_dir: Path) -> None:
    requests = [
        (f"request {i}: where is {i}?", [f"{i}.{j} {DOCS[(i + 2 * j) % len(DOCS)]}" for j in range(4)])
        for i in range(50)
    ]
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        replies = await asyncio.gather(
            *(
                client.post("/v2/rerank", json={"model": "tiny", "query": q, "documents": d})
                for q, d in requests
            )
        )
    for (query, docs), reply in zip(requests, replies, strict=True):
        assert reply.status_code == 200, reply.text
        expected = model_card_scores(tiny_qwen3_dir, query, docs, max_length=MAX_LENGTH)
        assert _scores(reply.json(), len(docs)) == pytest.approx(expected, abs=1e-4)
        assert_ranked_like([x["index"] for x in reply.json()["results"]], expected)


async def test_health_answers_within_100ms_while_the_engine_is_busy(server: RerankdServer) -> None:
    docs = [f"document {i}: {LONG}" for i in range(300)]
    latencies: list[float] = []
    # This process's own collector must not stall the probe: it would be measured as the server's.
    gc.disable()
    try:
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=300) as load_client,
            httpx.AsyncClient(base_url=server.url, timeout=5) as probe,
        ):
            await probe.get("/health")  # open the probe's connection before the load starts
            load = [
                asyncio.create_task(
                    load_client.post("/v2/rerank", json={"query": f"q{i}", "documents": docs})
                )
                for i in range(4)
            ]
            await asyncio.sleep(0.1)
            while not all(task.done() for task in load):
                started = time.perf_counter()
                r = await probe.get("/health")
                latencies.append(time.perf_counter() - started)
                assert r.status_code == 200
                await asyncio.sleep(0.02)
            replies = await asyncio.gather(*load)
    finally:
        gc.enable()
    assert all(r.status_code == 200 for r in replies)
    assert len(latencies) >= 10, "the engine was not busy long enough to measure"
    assert max(latencies) < 0.1, sorted(latencies)[-5:]


def test_failed_start_exits_with_one_line(tiny_qwen3_dir: Path, vllm_env: dict[str, str]) -> None:
    # More host memory than is free: vLLM's CPU worker refuses to start, as a GPU one does on OOM.
    env = {**os.environ, **vllm_env, "HF_HUB_OFFLINE": "1"}
    env.pop("VLLM_CPU_KVCACHE_SPACE")  # an explicit KV cache size would skip the memory check
    cmd = [sys.executable, "-m", "rerankd", "serve", "--port", str(free_port()), "--engine", "vllm"]
    cmd += ["--model", f"tiny={tiny_qwen3_dir}", "--gpu-memory-utilization", "0.99"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, check=False)
    assert done.returncode == 1, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("rerankd: cannot start:")]
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("rerankd: cannot start: model 'tiny': vLLM engine failed to start: ")


def test_dead_engine_turns_ready_off_and_requests_get_503(server: RerankdServer) -> None:
    """Kills the server's engine: keep this test last in the module."""
    rerankd = psutil.Process(server.process.pid)
    cores = [p for p in rerankd.children(recursive=True) if "EngineCore" in p.name()]
    assert len(cores) == 1, [p.name() for p in rerankd.children(recursive=True)]
    os.kill(cores[0].pid, signal.SIGKILL)
    wait_for(lambda: httpx.get(server.url + "/ready").status_code == 503, 30, "/ready to turn 503")
    r = httpx.post(server.url + "/v2/rerank", json={"query": QUERY, "documents": DOCS}, timeout=30)
    assert r.status_code == 503
    assert int(r.headers["Retry-After"]) >= 1
    assert r.json()["message"] == "scoring engine is unavailable"
    assert httpx.get(server.url + "/health").status_code == 200
    assert server.process.poll() is None, "the server must outlive its engine"
