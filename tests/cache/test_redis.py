"""Redis-only behaviour: URL forms, time budget, breaker, reconnects, never raising."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from pathlib import Path

import pytest
import redis as redis_sync

from rerankd.cache.redis import Breaker, RedisStore, describe_url
from tests.servers import RedisServer, free_port, redis_server


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def quick_breaker() -> Breaker:
    """Short back-offs so that recovery tests take a fraction of a second."""
    return Breaker("test redis", threshold=2, backoff_s=0.05, max_backoff_s=0.2)


async def eventually_hit(store: RedisStore, key: bytes) -> None:
    """Write and read back until Redis answers again: the store reconnects by itself."""
    async with asyncio.timeout(15):
        while True:
            await store.set_many([(key, b"v")], ttl_s=60)
            if await store.get_many([key]) == [b"v"]:
                return
            await asyncio.sleep(0.05)


# -- breaker -------------------------------------------------------------------------------


def test_breaker_opens_after_consecutive_faults_and_probes_after_back_off() -> None:
    clock = Clock()
    b = Breaker("x", threshold=3, backoff_s=1.0, max_backoff_s=4.0, clock=clock)
    for _ in range(2):
        assert b.allow()
        b.failure(ConnectionError())
    b.success()  # a success in between resets the count
    for _ in range(3):
        assert b.allow()
        b.failure(ConnectionError())
    assert b.is_open
    assert not b.allow()
    clock.now += 1.0
    assert b.allow()  # the probe
    assert not b.allow()  # only one probe at a time
    b.failure(ConnectionError())  # failed probe: back-off doubles
    clock.now += 1.5
    assert not b.allow()
    clock.now += 0.5
    assert b.allow()
    b.success()
    assert not b.is_open
    assert b.allow()
    assert b.opened == 1


def test_breaker_back_off_is_capped_and_an_abandoned_probe_frees_the_next() -> None:
    clock = Clock()
    b = Breaker("x", threshold=1, backoff_s=1.0, max_backoff_s=2.0, clock=clock)
    b.failure(TimeoutError())
    for _ in range(5):
        clock.now += 2.0
        assert b.allow()
        b.failure(TimeoutError())
    clock.now += 2.0
    assert b.allow()
    b.abandon()  # e.g. the probing request was cancelled
    assert b.allow()


# -- URLs ----------------------------------------------------------------------------------


def test_logged_urls_carry_no_password() -> None:
    assert describe_url("redis://user:secret@cache:6380/2") == "redis://cache:6380/2"
    assert describe_url("rediss://:secret@cache/0") == "rediss://cache/0"
    assert describe_url("unix:///run/redis.sock?db=1") == "unix:///run/redis.sock"


async def test_password_from_the_url() -> None:
    with redis_server("--requirepass", "s3cret") as server:
        async with RedisStore(f"redis://:s3cret@127.0.0.1:{server.port}/0", timeout_s=2) as store:
            await store.set_many([(b"k", b"v")], ttl_s=60)
            assert await store.get_many([b"k"]) == [b"v"]
        async with RedisStore(f"redis://:wrong@127.0.0.1:{server.port}/0", timeout_s=2) as store:
            assert await store.get_many([b"k"]) == [None]  # refused: a fault, not an exception
            assert store.stats()["faults"] >= 1


async def test_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    with redis_server("--unixsocket", str(sock), "--unixsocketperm", "700"):
        async with RedisStore(f"unix://{sock}?db=0", timeout_s=2) as store:
            await store.set_many([(b"k", b"v")], ttl_s=60)
            assert await store.get_many([b"k"]) == [b"v"]


@pytest.fixture
def tls_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls(tls_cert: tuple[Path, Path]) -> None:
    cert, key = tls_cert
    tls_port = free_port()
    args = ["--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    args += ["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
    with redis_server(*args):
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}"
        async with RedisStore(url, timeout_s=2) as store:
            await store.set_many([(b"k", b"v")], ttl_s=60)
            assert await store.get_many([b"k"]) == [b"v"]


# -- faults --------------------------------------------------------------------------------


async def test_down_at_start_then_up_later() -> None:
    port = free_port()
    store = RedisStore(f"redis://127.0.0.1:{port}/0", timeout_s=0.5, breaker=quick_breaker())
    async with store:  # no Redis there: opening must not fail
        assert store.breaker.is_open
        assert await store.get_many([b"k"]) == [None]
        await store.set_many([(b"k", b"v")], ttl_s=60)  # dropped, not raised
        with redis_server() as server:
            assert server.port != port  # another port: the store keeps failing, quietly
            for _ in range(5):
                assert await store.get_many([b"k"]) == [None]
    assert store.stats()["faults"] >= 1


async def test_killed_and_restarted_redis(redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="rerankd.cache.redis")
    async with RedisStore(redis.url, timeout_s=0.5, breaker=quick_breaker()) as store:
        await eventually_hit(store, b"before")
        redis.process.kill()
        redis.process.wait()
        for i in range(50):
            assert await store.get_many([b"before", b"x"]) == [None, None]
            await store.set_many([(b"during-%d" % i, b"v")], ttl_s=60)
        stats = store.stats()
        assert stats["faults"] >= 2
        assert stats["skipped"] >= 1  # the breaker stopped hammering the dead server
        redis.start()
        await eventually_hit(store, b"after")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum("unavailable" in m for m in warnings) == 1, warnings  # once, not once per request
    assert sum("reachable again" in m for m in warnings) == 1, warnings


async def test_slow_redis_costs_one_time_budget(redis: RedisServer) -> None:
    async with RedisStore(redis.url, timeout_s=0.05) as store:
        await store.set_many([(b"k", b"v")], ttl_s=60)
        assert await store.get_many([b"k"]) == [b"v"]
        admin = redis_sync.Redis(port=redis.port)
        admin.client_pause(1500, all=True)  # Redis answers nobody for 1.5 s
        started = time.monotonic()
        assert await store.get_many([b"k"]) == [None]
        # The budget: far less than the pause; served uncached instead of waiting.
        assert time.monotonic() - started < 1.0
        assert store.stats()["timeouts"] == 1
        admin.close()


async def test_a_key_of_another_type_is_a_miss(redis: RedisServer) -> None:
    redis_sync.Redis(port=redis.port).hset("h", "field", "value")
    async with RedisStore(redis.url, timeout_s=2) as store:
        assert await store.get_many([b"h"]) == [None]
        assert store.stats()["faults"] == 0
