"""The seed's baseline servers answer like rerankd with its scores: one load generator drives all."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import httpx
import pytest

from bench.compare import median_ratios, ratios
from bench.overhead import cpu_split, summarize, thread_cpu
from bench.servers import ModelChoice, baseline_command, spawn, split_args
from tests.servers import RerankdServer

DOCS = ["Berlin is the capital of Germany.", "I like bananas.", "Paris is the capital of France."]
BODY = {"query": "What is the capital of France?", "documents": DOCS}


@pytest.fixture(scope="module")
def naive_url() -> Iterator[str]:
    with spawn("naive", baseline_command("naive", ModelChoice()), start_timeout=120) as server:
        yield server.url


def test_naive_baseline_scores_like_rerankd(naive_url: str, minilm_server: RerankdServer) -> None:
    ours = httpx.post(naive_url + "/v2/rerank", json=BODY, timeout=30)
    ref = httpx.post(minilm_server.url + "/v2/rerank", json=BODY, timeout=30)
    assert ours.status_code == 200, ours.text
    a, b = ours.json(), ref.json()
    assert [r["index"] for r in a["results"]] == [r["index"] for r in b["results"]] == [2, 0, 1]
    for x, y in zip(a["results"], b["results"], strict=True):
        assert x["relevance_score"] == pytest.approx(y["relevance_score"], abs=1e-5)
    assert a["meta"] == b["meta"]  # same token count and billing


def test_naive_baseline_speaks_jina_and_rejects_bad_bodies(naive_url: str) -> None:
    jina = httpx.post(naive_url + "/rerank", json={**BODY, "top_n": 1}, timeout=30).json()
    assert jina["usage"]["total_tokens"] > 0
    assert [r["document"]["text"] for r in jina["results"]] == [DOCS[2]]
    bad = httpx.post(naive_url + "/v2/rerank", json={"query": "q"}, timeout=30)
    assert bad.status_code == 400
    assert set(bad.json()) == {"message", "detail", "id"}
    assert "documents" in bad.json()["detail"]
    assert httpx.get(naive_url + "/nowhere", timeout=30).status_code == 404


def test_commands_carry_model_and_extra_arguments() -> None:
    model = ModelChoice(path="/models/q", format="llm-yes-no", device="cuda", dtype="bfloat16")
    cmd = baseline_command("executor", model, split_args(["--workers 8", "--scorer=card"]))
    assert cmd[:4] == [sys.executable, "-m", "bench.baselines", "executor"]
    assert cmd[4:] == [
        *("--format", "llm-yes-no", "--model", "/models/q", "--device", "cuda", "--dtype", "bfloat16"),
        *("--workers", "8", "--scorer=card"),
    ]


def _report(label: str, c: int, tokens: float, p50: float) -> dict[str, object]:
    return {
        "label": label,
        "levels": [{"concurrency": c, "tokens_per_s": tokens, "latency_ms": {"p50": p50}}],
    }


def test_ratios_are_against_naive_of_the_same_round() -> None:
    reports = [_report("naive", 10, 1000, 2000), _report("rerankd", 10, 12000, 200)]
    reports += [
        {**_report("naive", 10, 500, 4000), "round": 2},
        {**_report("rerankd", 10, 7000, 300), "round": 2},
    ]
    entries = ratios(reports)
    assert [(e["server"], e["throughput_ratio"], e["p50_ratio"]) for e in entries] == [
        ("naive", 1.0, 1.0),
        ("rerankd", 12.0, 0.1),
        ("naive", 1.0, 1.0),
        ("rerankd", 14.0, 0.075),
    ]
    medians = {m["server"]: m for m in median_ratios(entries)}
    assert medians["rerankd"]["throughput_ratio"] == 13.0
    assert medians["rerankd"]["p50_ratio"] == pytest.approx(0.0875)
    assert medians["rerankd"]["rounds"] == 2


def test_overhead_summary_takes_the_median_round() -> None:
    reports = []
    for inproc, http in ((100, 96), (110, 150), (120, 108)):
        reports += [_report("in-process", 16, inproc, 1), _report("http", 16, http, 1)]
    [s] = summarize(reports)
    assert s["round_ratios"] == pytest.approx([0.96, 150 / 110, 0.9])
    assert s["http_vs_in_process"] == pytest.approx(0.96)  # the disturbed second round does not count
    assert s["in_process_tokens_per_s"] == 110


def test_cpu_split_reads_this_process_threads() -> None:
    pid = os.getpid()
    before = thread_cpu(pid)
    sum(i * i for i in range(2_000_000))  # burn a little CPU on the main thread
    split = cpu_split(before, thread_cpu(pid), pid)
    assert split["total_s"] > 0
    assert 0 < split["event_loop_s"] <= split["total_s"]
