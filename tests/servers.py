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
    "RedisCluster",
    "RedisSentinel",
    "RedisServer",
    "RerankdServer",
    "VLLMServer",
    "free_port",
    "inprocess_server",
    "redis_cluster",
    "redis_sentinel",
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
    direct: bool = True,
) -> Iterator[InProcessServer]:
    """uvicorn on a thread; waits for ``/ready`` (or only ``/health`` when ``wait_ready`` is false).
    ``engine_factory``: e.g. a real engine wrapped to count what it scores. ``direct=False``:
    scoring requests go through Litestar's handler, not the direct routes."""
    service = service or RerankService(settings, engine_factory=engine_factory or build_engine)
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, service=service, direct=direct), host="127.0.0.1", port=port, log_level="warning"
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


# -- Redis Cluster and Sentinel ------------------------------------------------------------------


def _redis_info(port: int, section: str) -> dict[str, str]:
    """``INFO section`` (or ``CLUSTER INFO`` for ``"cluster"``) as a mapping, via a raw socket."""
    import redis as redis_sync

    with redis_sync.Redis(port=port, socket_timeout=2) as client:
        if section == "cluster":
            raw = client.execute_command("CLUSTER", "INFO")
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            return dict(line.strip().split(":", 1) for line in text.splitlines() if ":" in line)
        return {k: str(v) for k, v in client.info(section).items()}


@dataclass
class RedisCluster:
    """Three primaries (no replicas) owning all 16384 slots, on loopback ports."""

    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def flush(self) -> None:
        import redis as redis_sync

        for node in self.nodes:
            if node.process.poll() is None:
                with redis_sync.Redis(port=node.port) as client:
                    client.flushall()

    def wait_ok(self, timeout: float = 30) -> None:
        live = [n for n in self.nodes if n.process.poll() is None]
        wait_for(
            lambda: all(_redis_info(n.port, "cluster").get("cluster_state") == "ok" for n in live),
            timeout,
            "cluster_state:ok on every node",
        )


@contextmanager
def redis_cluster(size: int = 3) -> Iterator[RedisCluster]:
    """``size`` ``redis-server --cluster-enabled yes`` joined by ``redis-cli --cluster create``."""
    folder = Path(tempfile.mkdtemp(prefix="rerankd-cluster-"))
    nodes: list[RedisServer] = []
    try:
        for _ in range(size):
            port = free_port()
            args: tuple[str, ...] = (
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
            )
            # The bus port defaults to port + 10000, which may be out of range or taken.
            args += ("--cluster-node-timeout", "2000", "--cluster-port", str(free_port()))
            nodes.append(RedisServer(port, _spawn_redis(port, folder, args), folder, args))
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed (it comes with redis-server)")
        addresses = [f"127.0.0.1:{n.port}" for n in nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        cluster = RedisCluster(nodes)
        cluster.wait_ok()
        yield cluster
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class RedisSentinel:
    """A master, its replica and Sentinels watching them (quorum 1), on loopback ports."""

    master_name: str
    servers: list[RedisServer]
    sentinels: list[subprocess.Popen[bytes]]
    sentinel_ports: list[int]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.master_name}/0"

    def master_port(self) -> int:
        import redis as redis_sync

        with redis_sync.Redis(port=self.sentinel_ports[0], socket_timeout=2) as s:
            _, port = s.sentinel_get_master_addr_by_name(self.master_name)
        return int(port)

    def flush(self) -> None:
        import redis as redis_sync

        with redis_sync.Redis(port=self.master_port()) as client:
            client.flushall()

    def wait_replicated(self, timeout: float = 30) -> None:
        """Until the replica is in sync and the Sentinels know it (a failover needs both)."""
        import redis as redis_sync

        master = self.master_port()
        replicas = [s.port for s in self.servers if s.port != master]

        def ready() -> bool:
            if any(_redis_info(p, "replication").get("master_link_status") != "up" for p in replicas):
                return False
            for port in self.sentinel_ports:
                with redis_sync.Redis(port=port, socket_timeout=2) as s:
                    known = s.sentinel_slaves(self.master_name)
                if not known or any(r.get("is_sdown") or r.get("is_disconnected") for r in known):
                    return False
            return True

        wait_for(ready, timeout, "the replica in sync and known to the Sentinels")

    def failover(self, timeout: float = 30) -> int:
        """``SENTINEL FAILOVER``; waits until the replica is the master; returns its port."""
        import redis as redis_sync

        old = self.master_port()
        with redis_sync.Redis(port=self.sentinel_ports[0], socket_timeout=5) as s:
            s.sentinel_failover(self.master_name)
        wait_for(
            lambda: (
                self.master_port() != old
                and _redis_info(self.master_port(), "replication")["role"] == "master"
            ),
            timeout,
            "the failover to finish",
        )
        return self.master_port()

    def stop(self) -> None:
        for proc in self.sentinels:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        for server in self.servers:
            server.stop()


@contextmanager
def redis_sentinel(n_sentinels: int = 1, master_name: str = "rerankd-master") -> Iterator[RedisSentinel]:
    folder = Path(tempfile.mkdtemp(prefix="rerankd-sentinel-"))
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (scripts/test installs it)")
    setup = RedisSentinel(master_name, [], [], [])
    try:
        master_port, replica_port = free_port(), free_port()
        setup.servers.append(RedisServer(master_port, _spawn_redis(master_port, folder), folder))
        replica_args = ("--replicaof", "127.0.0.1", str(master_port))
        replica = RedisServer(
            replica_port, _spawn_redis(replica_port, folder, replica_args), folder, replica_args
        )
        setup.servers.append(replica)
        for i in range(n_sentinels):
            port = free_port()
            conf = folder / f"sentinel-{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                f"sentinel monitor {master_name} 127.0.0.1 {master_port} 1\n"
                f"sentinel down-after-milliseconds {master_name} 1000\n"
                f"sentinel failover-timeout {master_name} 10000\n"
            )
            proc = subprocess.Popen(
                [binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            setup.sentinels.append(proc)
            setup.sentinel_ports.append(port)

            def accepting(p: int = port) -> bool:
                with socket.create_connection(("127.0.0.1", p), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")

            wait_for(accepting, 10, f"sentinel on port {port}")
        setup.wait_replicated()
        yield setup
    finally:
        setup.stop()
        shutil.rmtree(folder, ignore_errors=True)
