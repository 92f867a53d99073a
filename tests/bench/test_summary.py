"""``bench.summary``: the side-by-side table names the engine and what prefix reuse did."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.summary import main, summarize


def _doc(label: str, metrics: dict[str, float]) -> dict[str, Any]:
    level = {"concurrency": 16, "tokens_per_s": 1000.0, "latency_ms": {"p50": 50.0}}
    return {"reports": [{"label": label, "target": {"start_s": 12.5, "metrics": metrics}, "levels": [level]}]}


def test_engine_and_prefix_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rerankd = _doc(
        "rerankd-eager-shared-prefix",
        {
            'rerankd_engine_info{engine="torch:bfloat16",model="m"}': 1.0,
            'rerankd_engine_prefix_saved_tokens_total{model="m"}': 7000.0,
        },
    )
    vllm = _doc(
        "vllm-serve",
        {
            'vllm:prefix_cache_queries_total{engine="0",model_name="m"}': 400.0,
            'vllm:prefix_cache_hits_total{engine="0",model_name="m"}': 100.0,
        },
    )
    rows = summarize([rerankd, vllm])
    assert [r["engine"] for r in rows] == ["torch:bfloat16", "vllm serve"]
    assert rows[0]["prefix_saved_tokens"] == 7000.0
    assert rows[0]["prefix_cache_hit_share"] is None
    assert rows[1]["prefix_cache_hit_share"] == pytest.approx(0.25)
    files = []
    for name, doc in (("a.json", rerankd), ("b.json", vllm)):
        files.append(tmp_path / name)
        files[-1].write_text(json.dumps(doc))
    out = tmp_path / "side.json"
    assert main([*map(str, files), str(tmp_path / "missing.json"), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["rows"] == rows
    assert "torch:bfloat16" in capsys.readouterr().out
