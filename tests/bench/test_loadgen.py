"""The load generator against a real rerankd, and its request generation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rerankd.bench.loadgen import LevelResult, percentile
from rerankd.bench.workload import Workload, parse_range
from tests.servers import RerankdServer


def test_requests_are_a_function_of_seed_and_number() -> None:
    a, b = Workload(seed=1), Workload(seed=1)
    assert a.request(5) == b.request(5)
    assert a.request(5) != a.request(6)
    assert a.request(5) != Workload(seed=2).request(5)


def test_lengths_and_repeats_follow_the_workload() -> None:
    w = Workload(documents=50, doc_words=(3, 7), repeat=1.0, query_pool=1, doc_pool=4)
    docs = [d for k in range(10) for d in w.request(k)[1]]
    assert all(3 <= len(d.split()) <= 7 for d in docs)
    assert len(set(docs)) <= 4  # every document comes from the one query's pool
    fresh = [d for k in range(10) for d in Workload(documents=50, doc_words=(3, 7)).request(k)[1]]
    assert len(set(fresh)) == len(fresh)


def test_bad_workload_values_are_refused() -> None:
    assert parse_range("150-250") == (150, 250)
    with pytest.raises(ValueError, match="MIN-MAX"):
        parse_range("250-150")
    with pytest.raises(ValueError, match="repeat"):
        Workload(repeat=1.5)


def test_percentile_interpolates() -> None:
    assert percentile([], 50) is None
    assert percentile([10.0], 99) == 10.0
    assert percentile([0.0, 10.0, 20.0, 30.0, 40.0], 50) == 20.0
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)


def test_rates_count_the_share_of_each_request_inside_the_window() -> None:
    # Window 10..20 s: one request wholly inside, one half inside, one ended before it.
    samples = [(11.0, 13.0, 2, 100), (15.0, 25.0, 2, 100), (1.0, 9.0, 2, 100)]
    r = LevelResult.from_samples(2, (10.0, 20.0), samples, {"http 503": 1})
    assert r.requests == 1  # only the first ended inside the window
    assert r.requests_per_s == pytest.approx(1.5 / 10)
    assert r.pairs_per_s == pytest.approx(3 / 10)
    assert r.tokens_per_s == pytest.approx(150 / 10)
    assert r.latency_ms["p50"] == pytest.approx(2000)
    assert (r.errors, r.error_kinds) == (1, {"http 503": 1})


def test_bench_command_reports_json(minilm_server: RerankdServer, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    args = ["--url", minilm_server.url, "--concurrency", "2", "--duration", "2", "--warmup", "0.5"]
    args += ["--documents", "4", "--doc-tokens", "20-40", "--json", str(out)]
    run = subprocess.run(
        [sys.executable, "-m", "rerankd", "bench", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "tokens/s" in run.stdout.splitlines()[0]  # the table
    assert "c=2" in run.stderr  # progress was shown
    report = json.loads(out.read_text())
    assert report["schema"] == "rerankd-bench/1"
    assert report["workload"]["documents"] == 4
    [level] = report["levels"]
    assert level["concurrency"] == 2
    assert level["requests"] > 0
    assert level["errors"] == 0
    assert level["pairs_per_s"] == pytest.approx(4 * level["requests_per_s"])
    # MiniLM's tokens: 20-40 words per document plus special tokens, and the query's own row.
    assert level["tokens_per_request"] > 4 * 20
    assert level["tokens_per_s"] == pytest.approx(level["tokens_per_request"] * level["requests_per_s"])
    lat = level["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]


def test_bench_command_names_a_wrong_route(minilm_server: RerankdServer) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--url", minilm_server.url, "--route", "/v9/rerank", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode != 0
    assert "answered 404" in run.stderr
