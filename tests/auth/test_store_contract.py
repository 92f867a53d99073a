"""One contract, every key store: the keys file, and Redis as one server, a Cluster and Sentinel."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rerankd.auth.keys import KeyRecord, digest_of, generate_key
from rerankd.auth.store import FileKeyStore, KeyStore, RedisKeyStore
from rerankd.errors import KeyExists, KeyNotFound, KeyStoreUnavailable
from tests.servers import RedisServer, free_port

StoreFactory = Callable[[], KeyStore]


@pytest.fixture(params=["file", "redis", "cluster", "sentinel"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opens stores over one backing, like a CLI and a server (or two replicas) do."""
    opened: list[KeyStore] = []
    if request.param == "file":
        path = tmp_path / "keys.json"
        path.write_text('{"keys": []}')

        def factory() -> KeyStore:
            opened.append(FileKeyStore(path))
            return opened[-1]
    else:
        fixture = "clean_redis" if request.param == "redis" else request.param
        url: str = request.getfixturevalue(fixture).url

        def factory() -> KeyStore:
            opened.append(RedisKeyStore(url))
            return opened[-1]

    yield factory
    for store in opened:
        await store.close()


def record(name: str, **kw: object) -> KeyRecord:
    now = datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=UTC)
    return KeyRecord(name=name, digest=digest_of(generate_key()), created=now, **kw)  # type: ignore[arg-type]


async def test_a_fresh_store_is_empty(make_store: StoreFactory) -> None:
    store = make_store()
    assert await store.records() == []
    assert await store.get("nobody") is None


async def test_records_round_trip_every_field(make_store: StoreFactory) -> None:
    store = make_store()
    full = record("full", expires=datetime(2027, 1, 1, tzinfo=UTC), rpm=60, tpm=10_000)
    bare = record("bare")
    await store.create(full)
    await store.create(bare)
    assert await store.get("full") == full
    assert await store.get("bare") == bare
    assert sorted(await store.records(), key=lambda r: r.name) == [bare, full]


async def test_names_are_unique_even_after_revocation(make_store: StoreFactory) -> None:
    store = make_store()
    await store.create(record("app"))
    with pytest.raises(KeyExists, match="'app'"):
        await store.create(record("app"))
    await store.revoke("app")
    with pytest.raises(KeyExists):
        await store.create(record("app"))
    assert len(await store.records()) == 1


async def test_revoke_keeps_the_record_and_the_first_time(make_store: StoreFactory) -> None:
    store = make_store()
    original = record("app", rpm=5)
    await store.create(original)
    first = datetime(2026, 12, 1, tzinfo=UTC)
    revoked = await store.revoke("app", when=first)
    assert revoked.revoked == first
    assert revoked.digest == original.digest
    assert revoked.rpm == 5
    again = await store.revoke("app", when=first + timedelta(days=1))
    assert again.revoked == first
    assert await store.get("app") == revoked
    assert revoked.status() == "revoked"


async def test_revoking_an_unknown_name_fails(make_store: StoreFactory) -> None:
    store = make_store()
    with pytest.raises(KeyNotFound, match="'ghost'"):
        await store.revoke("ghost")


async def test_another_instance_sees_changes_through_the_version(make_store: StoreFactory) -> None:
    writer, reader = make_store(), make_store()
    v0 = await reader.version()
    assert await reader.version() == v0
    await writer.create(record("a"))
    v1 = await reader.version()
    assert v1 != v0
    assert [r.name for r in await reader.records()] == ["a"]
    await writer.revoke("a")
    v2 = await reader.version()
    assert v2 not in (v0, v1)
    assert (await reader.records())[0].revoked is not None


@pytest.fixture(params=["file", "redis", "cluster", "sentinel"])
def broken_store(request: pytest.FixtureRequest, tmp_path: Path) -> KeyStore:
    if request.param == "file":
        path = tmp_path / "keys.json"
        path.write_text("{not json")
        return FileKeyStore(path)
    return RedisKeyStore(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there


async def test_an_unreadable_store_raises_unavailable(broken_store: KeyStore) -> None:
    async with broken_store as store:
        with pytest.raises(KeyStoreUnavailable):
            await store.records()
        with pytest.raises(KeyStoreUnavailable):
            await store.create(record("x"))


# -- specific to one store ---------------------------------------------------------------------


async def test_keys_file_is_created_on_first_key_and_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "keys.json"
    store = FileKeyStore(path)
    assert await store.version() is None
    with pytest.raises(KeyStoreUnavailable, match="does not exist"):
        await store.records()
    await store.create(record("a"))
    assert path.stat().st_mode & 0o777 == 0o600
    assert [r.name for r in await store.records()] == ["a"]
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


async def test_keys_file_holds_no_key_only_digests(tmp_path: Path) -> None:
    key = generate_key()
    store = FileKeyStore(tmp_path / "keys.json")
    now = datetime.now(UTC)
    await store.create(KeyRecord(name="a", digest=digest_of(key), created=now))
    text = (tmp_path / "keys.json").read_text()
    assert key not in text
    assert key[3:] not in text
    assert digest_of(key) in text


async def test_redis_store_skips_a_corrupt_record(clean_redis: RedisServer) -> None:
    async with RedisKeyStore(clean_redis.url) as store:
        await store.create(record("good"))
        await store.redis.hset("rerankd:auth:keys", "bad", b"{oops")
        assert [r.name for r in await store.records()] == ["good"]


async def test_update_sets_and_clears_limits_and_changes_the_version(make_store: StoreFactory) -> None:
    writer, reader = make_store(), make_store()
    await writer.create(record("app", rpm=10))
    before = await reader.version()
    updated = await writer.update("app", {"tpm": 5000})
    assert (updated.rpm, updated.tpm) == (10, 5000)  # a limit not named is kept
    got = await reader.get("app")
    assert got is not None
    assert (got.rpm, got.tpm, got.digest) == (10, 5000, updated.digest)
    assert await reader.version() != before
    cleared = await writer.update("app", {"rpm": None})
    assert (cleared.rpm, cleared.tpm) == (None, 5000)
    got = await reader.get("app")
    assert got is not None
    assert got.rpm is None
    with pytest.raises(KeyNotFound):
        await writer.update("ghost", {"rpm": 1})
