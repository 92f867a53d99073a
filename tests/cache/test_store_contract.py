"""The contract every cache store keeps, run against each backend (see conftest.py)."""

from __future__ import annotations

import asyncio
import time

from rerankd.cache import CacheStore


async def test_unknown_keys_are_misses(store: CacheStore) -> None:
    assert await store.get_many([b"a", b"b"]) == [None, None]


async def test_values_come_back_in_key_order_with_misses_in_place(store: CacheStore) -> None:
    await store.set_many([(b"k1", b"v1"), (b"k3", b"v3")], ttl_s=60)
    assert await store.get_many([b"k3", b"k2", b"k1", b"k3"]) == [b"v3", None, b"v1", b"v3"]


async def test_a_later_write_replaces_the_value(store: CacheStore) -> None:
    await store.set_many([(b"k", b"old")], ttl_s=60)
    await store.set_many([(b"k", b"new")], ttl_s=60)
    assert await store.get_many([b"k"]) == [b"new"]


async def test_empty_batches(store: CacheStore) -> None:
    await store.set_many([], ttl_s=60)
    assert await store.get_many([]) == []


async def test_keys_and_values_are_binary_safe(store: CacheStore) -> None:
    key, value = b"\x00key\xff\r\n", bytes(range(256))
    await store.set_many([(key, value)], ttl_s=60)
    assert await store.get_many([key]) == [value]


async def test_thousands_of_keys_in_one_call(store: CacheStore) -> None:
    items = [(f"key-{i}".encode(), f"value-{i}".encode()) for i in range(2500)]
    await store.set_many(items[::2], ttl_s=60)
    got = await store.get_many([k for k, _ in items])
    assert got == [v if i % 2 == 0 else None for i, (_, v) in enumerate(items)]


async def test_values_expire_after_their_ttl(store: CacheStore) -> None:
    await store.set_many([(b"short", b"1")], ttl_s=1)
    await store.set_many([(b"long", b"2")], ttl_s=60)
    assert await store.get_many([b"short", b"long"]) == [b"1", b"2"]
    deadline = time.monotonic() + 5
    while (await store.get_many([b"short"]))[0] is not None:
        assert time.monotonic() < deadline, "a 1 s value still there after 5 s"
        await asyncio.sleep(0.1)
    assert await store.get_many([b"long"]) == [b"2"]


async def test_stats_count_hits_and_misses(store: CacheStore) -> None:
    await store.set_many([(b"h", b"1")], ttl_s=60)
    await store.get_many([b"h", b"m1", b"m2"])
    stats = store.stats()
    assert stats["hits"] == 1
    assert stats["misses"] == 2
