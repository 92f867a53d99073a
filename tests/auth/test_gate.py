from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rerankd.auth.gate import Gate, check_exposure, is_loopback
from rerankd.auth.keys import KeyRecord, digest_of, generate_key
from rerankd.auth.limits import MemoryLimiter, RedisLimiter
from rerankd.auth.store import FileKeyStore, RedisKeyStore
from rerankd.config import Settings
from rerankd.errors import ConfigError, KeyStoreUnavailable, RateLimited, Unauthorized
from tests.servers import RedisServer, free_port


def new_key(name: str, **kw: object) -> tuple[str, KeyRecord]:
    key = generate_key()
    return key, KeyRecord(name=name, digest=digest_of(key), created=datetime.now(UTC), **kw)  # type: ignore[arg-type]


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.json"
    path.write_text('{"keys": []}')
    return path


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("rerank.internal", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


async def test_auto_on_loopback_turns_on_with_the_first_key(keys_file: Path) -> None:
    store = FileKeyStore(keys_file)
    gate = Gate(mode="auto", loopback=True, store=store)
    await gate.start()
    try:
        assert gate.loaded
        assert not gate.enforced
        key, rec = new_key("first")
        await store.create(rec)
        assert await gate.reload() is True
        assert gate.enforced
        assert gate.identify(key) == rec
        assert await gate.reload() is False  # nothing changed since
    finally:
        await gate.close()


@pytest.mark.parametrize(
    ("mode", "loopback", "enforced"),
    [("auto", False, True), ("on", True, True), ("off", False, False), ("auto", True, False)],
)
async def test_modes_with_no_keys(keys_file: Path, mode: str, loopback: bool, enforced: bool) -> None:
    gate = Gate(mode=mode, loopback=loopback, store=FileKeyStore(keys_file))
    await gate.start()
    try:
        assert gate.enforced is enforced
    finally:
        await gate.close()


async def test_identify_refuses_unknown_revoked_and_expired_keys(keys_file: Path) -> None:
    store = FileKeyStore(keys_file)
    good, good_rec = new_key("good")
    gone, gone_rec = new_key("gone")
    old, old_rec = new_key("old", expires=datetime.now(UTC) - timedelta(seconds=1))
    for rec in (good_rec, gone_rec, old_rec):
        await store.create(rec)
    await store.revoke("gone")
    gate = Gate(mode="on", store=store)
    await gate.start()
    try:
        assert gate.identify(good).name == "good"
        with pytest.raises(Unauthorized, match="invalid API key"):
            gate.identify(generate_key())
        with pytest.raises(Unauthorized, match="invalid API key"):
            gate.identify(good[:-1])
        with pytest.raises(Unauthorized, match="'gone' is revoked"):
            gate.identify(gone)
        with pytest.raises(Unauthorized, match="'old' is expired"):
            gate.identify(old)
    finally:
        await gate.close()


async def test_a_store_never_read_answers_unavailable(tmp_path: Path) -> None:
    gate = Gate(mode="on", store=FileKeyStore(tmp_path / "missing.json"))
    await gate.start()
    try:
        assert not gate.loaded
        assert gate.enforced
        with pytest.raises(KeyStoreUnavailable):
            gate.identify(generate_key())
    finally:
        await gate.close()


async def test_a_broken_file_keeps_the_keys_last_loaded(
    keys_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FileKeyStore(keys_file)
    key, rec = new_key("app")
    await store.create(rec)
    gate = Gate(mode="on", store=store)
    await gate.start()
    try:
        await asyncio.to_thread(keys_file.write_text, "{half a file")
        with caplog.at_level(logging.WARNING):
            await gate._poll()
            await gate._poll()
        assert gate.identify(key).name == "app"
        assert sum("cannot parse" in r.message for r in caplog.records) == 1  # once per outage
    finally:
        await gate.close()


async def test_admit_raises_rate_limited_with_retry_after(keys_file: Path) -> None:
    _, rec = new_key("app", rpm=1)
    gate = Gate(mode="on", store=FileKeyStore(keys_file), limiter=MemoryLimiter())
    await gate.admit(rec)
    with pytest.raises(RateLimited, match="1 requests per minute") as info:
        await gate.admit(rec)
    assert info.value.retry_after is not None
    assert 59 < info.value.retry_after <= 60
    await gate.close()


async def test_limits_fail_open_when_redis_is_down(keys_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, rec = new_key("app", rpm=1)
    limiter = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0")
    gate = Gate(mode="on", store=FileKeyStore(keys_file), limiter=limiter)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            await gate.admit(rec)  # would be refused by a working limiter
            await gate.charge(rec, tokens=10, search_units=1)
    assert sum("not enforced" in r.message for r in caplog.records) == 1
    await gate.close()


# -- refusing to start -------------------------------------------------------------------------


async def test_refuses_an_exposed_address_without_a_key_store() -> None:
    with pytest.raises(ConfigError, match=r"refusing to serve on 0\.0\.0\.0 without API keys.*--no-auth"):
        await check_exposure(Settings(host="0.0.0.0"))
    await check_exposure(Settings(host="0.0.0.0", auth="off"))
    await check_exposure(Settings(host="127.0.0.1"))


async def test_refuses_an_exposed_address_with_an_empty_keys_file(keys_file: Path) -> None:
    with pytest.raises(ConfigError, match="refusing"):
        await check_exposure(Settings(host="0.0.0.0", keys_file=str(keys_file)))
    await check_exposure(Settings(host="127.0.0.1", keys_file=str(keys_file)))
    await FileKeyStore(keys_file).create(new_key("app")[1])
    await check_exposure(Settings(host="0.0.0.0", keys_file=str(keys_file)))


async def test_a_missing_keys_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        await check_exposure(Settings(keys_file=str(tmp_path / "nope.json")))


async def test_auth_on_needs_a_store() -> None:
    with pytest.raises(ConfigError, match="no key store"):
        await check_exposure(Settings(auth="on"))


async def test_exposure_with_redis(clean_redis: RedisServer) -> None:
    with pytest.raises(ConfigError, match="refusing"):
        await check_exposure(Settings(host="0.0.0.0", redis_url=clean_redis.url))
    async with RedisKeyStore(clean_redis.url) as store:
        await store.create(new_key("app")[1])
    await check_exposure(Settings(host="0.0.0.0", redis_url=clean_redis.url))
    # A Redis that does not answer yet is no refusal: guarded routes answer 503 until it does.
    await check_exposure(Settings(host="0.0.0.0", redis_url=f"redis://127.0.0.1:{free_port()}/0"))
