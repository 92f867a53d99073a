"""The command line: bad settings and bad models exit at once with a one-line reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def rerankd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rerankd", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_version() -> None:
    out = rerankd("--version")
    assert out.returncode == 0
    assert out.stdout.startswith("rerankd ")


def test_missing_model_folder_exits_2(tmp_path: Path) -> None:
    out = rerankd("serve", "--model", f"m={tmp_path / 'missing'}", "--port", "0")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "is not a folder and not a hub id" in out.stderr


def test_folder_without_config_exits_2(tmp_path: Path) -> None:
    out = rerankd("serve", "--model", str(tmp_path), "--port", "0")
    assert out.returncode == 2
    assert "no readable config.json" in out.stderr


def test_bad_setting_exits_2() -> None:
    out = rerankd("serve", "--device", "tpu")
    assert out.returncode == 2
    assert "device" in out.stderr


def test_bad_alias_flag_exits_2() -> None:
    out = rerankd("serve", "--alias", "no-equals-sign")
    assert out.returncode == 2
    assert "ALIAS=MODEL" in out.stderr


def test_serve_settings_are_what_serve_would_run_with() -> None:
    from rerankd.cli import serve_settings

    settings = serve_settings(["--max-batch-tokens", "4096", "--device", "cpu"])
    assert (settings.max_batch_tokens, settings.device) == (4096, "cpu")


def test_bench_subcommand_reaches_the_load_generator() -> None:
    out = rerankd("bench", "--help")
    assert out.returncode == 0
    assert "--concurrency" in out.stdout


def _never_accepts(port: int, proc: subprocess.Popen[str]) -> bool:
    """Poll the port until the process exits; whether it ever accepted a connection."""
    import socket
    import time

    while proc.poll() is None:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return False
        time.sleep(0.05)
    return True


def test_cuda_on_a_host_without_cuda_exits_before_binding() -> None:
    from tests.servers import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rerankd", "serve", "--device", "cuda", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},  # also on a GPU host
    )
    try:
        assert _never_accepts(port, proc)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("rerankd: device cuda asked for, but torch sees no CUDA device")
    assert not any("Uvicorn running" in line for line in lines)


def test_devices_with_the_vllm_engine_exits_2() -> None:
    out = rerankd("serve", "--engine", "vllm", "--devices", "cpu,cpu", "--port", "0")
    assert out.returncode == 2
    assert "not supported yet with --engine vllm" in out.stderr
