"""Real processes for tests: a rerankd server and private Redis servers, on free loopback ports."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from rerankd.adapters.factory import build_engine
from rerankd.config import Settings
from rerankd.proxy.app import create_app
from rerankd.service import EngineFactory, RerankService

__all__ = [
    "InProcessServer",
    "RedisServer",
    "RerankdServer",
    "VLLMServer",
    "free_port",
    "inprocess_server",
    "redis_server",
    "rerankd_server",
    "vllm_server",
    "wait_for",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if callable(predicate) and predicate():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class RerankdServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


@contextmanager
def rerankd_server(
    args: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
    wait_ready: bool = True,
    timeout: float = 120,
    launcher: Sequence[str] = ("-m", "rerankd"),
) -> Iterator[RerankdServer]:
    """``rerankd serve`` in a subprocess on a free port; waits for ``/ready`` unless told not to.
    ``launcher``: the interpreter's arguments that run rerankd's command line (``-m rerankd``)."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="rerankd-", suffix=".log")[1])
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    cmd = [sys.executable, *launcher, "serve", "--port", str(port), *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env)
    server = RerankdServer(f"http://127.0.0.1:{port}", proc, log)
    try:
        path = "/ready" if wait_ready else "/health"

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"rerankd exited with {proc.returncode}:\n{server.log()}")
            return httpx.get(server.url + path, timeout=2).status_code == 200

        wait_for(up, timeout, f"rerankd {path}")
        yield server
    finally:
        server.stop()
        log.unlink(missing_ok=True)


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]
    dir: Path
    #: Extra ``redis-server`` options (e.g. ``--requirepass``, ``--unixsocket``), kept for restarts.
    args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def start(self) -> None:
        """(Re)start on the same port, e.g. after a test killed it."""
        self.process = _spawn_redis(self.port, self.dir, self.args)


def _spawn_redis(port: int, folder: Path, args: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (scripts/test installs it)")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def accepting() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))  # -NOAUTH: up, with a password

    wait_for(accepting, 10, f"redis on port {port}")
    return proc


@contextmanager
def redis_server(*args: str, port: int | None = None) -> Iterator[RedisServer]:
    """A private Redis on ``port`` (default: a free one); ``args`` are extra ``redis-server`` options."""
    folder = Path(tempfile.mkdtemp(prefix="rerankd-redis-"))
    port = port or free_port()
    server = RedisServer(port, _spawn_redis(port, folder, args), folder, tuple(args))
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class InProcessServer:
    """A real uvicorn server on a thread of this process, so tests can look at the service inside."""

    url: str
    service: RerankService
    server: uvicorn.Server


@contextmanager
def inprocess_server(
    settings: Settings,
    timeout: float = 120,
    *,
    service: RerankService | None = None,
    engine_factory: EngineFactory | None = None,
    wait_ready: bool = True,
) -> Iterator[InProcessServer]:
    """uvicorn on a thread; waits for ``/ready`` (or only ``/health`` when ``wait_ready`` is false).
    ``engine_factory``: e.g. a real engine wrapped to count what it scores."""
    service = service or RerankService(settings, engine_factory=engine_factory or build_engine)
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, service=service), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    path = "/ready" if wait_ready else "/health"
    try:
        wait_for(lambda: httpx.get(url + path, timeout=2).status_code == 200, timeout, f"in-process {path}")
        yield InProcessServer(url, service, server)
    finally:
        server.should_exit = True
        thread.join(30)


@dataclass
class VLLMServer:
    """vLLM's OpenAI-compatible server in its own process group (it spawns engine processes)."""

    port: int
    args: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self, timeout: float = 240) -> None:
        """(Re)start on the same port and wait until it answers ``/health``."""
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), *self.args]
        with self.log_path.open("ab") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        self.process = proc

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {proc.returncode}:\n{self.log()[-5000:]}")
            return httpx.get(self.url + "/health", timeout=2).status_code == 200

        wait_for(up, timeout, "vLLM server /health")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server and its engine processes (SIGKILL: as in a crash)."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # Engine processes share the group: wait until none is left holding memory or ports.
        wait_for(lambda: not _group_alive(proc.pid), 60, "vLLM engine processes to exit")


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (zombies waiting to be reaped do not count)."""
    import psutil

    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


@contextmanager
def vllm_server(args: Sequence[str], *, env: Mapping[str, str] | None = None) -> Iterator[VLLMServer]:
    log = Path(tempfile.mkstemp(prefix="vllm-", suffix=".log")[1])
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    server = VLLMServer(free_port(), list(args), full_env, log)
    try:
        server.start()
        yield server
    finally:
        server.kill(signal.SIGTERM)
        log.unlink(missing_ok=True)
