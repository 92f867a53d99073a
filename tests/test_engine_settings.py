"""Settings of the vLLM and remote engines: env, file and flag forms, and the mistakes that stop start-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rerankd.adapters.factory import pick_engine
from rerankd.adapters.loader import embedded_model, resolve_model
from rerankd.config import ModelConfig, load_settings
from rerankd.errors import ConfigError


def test_env_forms() -> None:
    env = {
        "RERANKD_ENGINE": "remote",
        "RERANKD_MODEL": "qwen3=Qwen/Qwen3-Reranker-0.6B",
        "RERANKD_UPSTREAM": "http://a:8000, https://b.example/api",
        "RERANKD_UPSTREAM_KIND": "vllm-score",
        "RERANKD_UPSTREAM_API_KEY": "secret",
        "RERANKD_ENFORCE_EAGER": "true",
        "RERANKD_ENABLE_PREFIX_CACHING": "false",
        "RERANKD_GPU_MEMORY_UTILIZATION": "0.5",
    }
    s = load_settings({}, env=env)
    assert s.upstreams == ("http://a:8000", "https://b.example/api")
    assert (s.upstream_kind, s.upstream_api_key) == ("vllm-score", "secret")
    assert (s.enforce_eager, s.enable_prefix_caching, s.gpu_memory_utilization) == (True, False, 0.5)
    assert s.models[0].path == "Qwen/Qwen3-Reranker-0.6B"


def test_file_keys_as_the_helm_chart_writes_them(tmp_path: Path) -> None:
    path = tmp_path / "rerankd.yaml"
    path.write_text(
        "engine: vllm\ntensor_parallel_size: 2\ngpu_memory_utilization: 0.9\nmax_model_len: 8192\n"
        "max_num_seqs: 128\nquantization: fp8\n"
    )
    s = load_settings({}, env={}, config_file=path)
    assert (s.engine, s.tensor_parallel_size, s.max_model_len, s.quantization) == ("vllm", 2, 8192, "fp8")
    assert pick_engine(s) == "vllm"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"engine": "remote", "models": [{"name": "m", "path": "m"}]}, "engine remote needs upstreams"),
        ({"engine": "remote", "upstreams": ["http://a:1"]}, "engine remote needs upstreams"),
        ({"upstreams": ["ftp://a"]}, "upstreams"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
    ],
)
def test_mistakes(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(flags, env={})


def test_auto_is_torch_without_cuda() -> None:
    assert pick_engine(load_settings({"device": "cpu"}, env={})) == "torch"


def test_auto_on_cpu_is_onnx_for_encoders(tiny_qwen3_dir: Path) -> None:
    """On the CPU the encoder formats go to ONNX Runtime; what only torch has keeps torch."""
    minilm = resolve_model(embedded_model())
    qwen3 = resolve_model(ModelConfig(name="tiny", path=str(tiny_qwen3_dir)))
    for device in ("auto", "cpu"):
        assert pick_engine(load_settings({"device": device}, env={}), minilm) == "onnx"
        assert pick_engine(load_settings({"device": device}, env={}), qwen3) == "torch"
    assert pick_engine(load_settings({"compile": True}, env={}), minilm) == "torch"
    assert pick_engine(load_settings({"dtype": "bfloat16"}, env={}), minilm) == "torch"
    assert pick_engine(load_settings({"engine": "torch"}, env={}), minilm) == "torch"


def test_remote_without_upstream_exits_2_with_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rerankd", "serve", "--engine", "remote", "--model", "m=up", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "engine remote needs upstreams (--upstream URL)" in out.stderr


def test_compile_on_the_cpu_without_a_compiler_exits_2_with_one_line(tmp_path: Path) -> None:
    # torch inductor builds C++ at the first forward pass: the check runs before the port opens.
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler")}
    out = subprocess.run(
        [sys.executable, "-m", "rerankd", "serve", "--compile", "--device", "cpu", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "compile on the CPU needs a C++ compiler" in out.stderr
    assert "Uvicorn running" not in out.stderr
