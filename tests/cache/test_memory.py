from __future__ import annotations

import pytest

from rerankd.cache.memory import ENTRY_OVERHEAD, MemoryStore


class Clock:
    """A clock the test moves by hand: expiry without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_least_recently_used_entry_goes_first_at_the_entry_bound() -> None:
    store = MemoryStore(max_entries=3, max_bytes=10**9)
    await store.set_many([(b"a", b"1"), (b"b", b"2"), (b"c", b"3")], ttl_s=60)
    await store.get_many([b"a"])  # a is now the most recently used
    await store.set_many([(b"d", b"4")], ttl_s=60)
    assert await store.get_many([b"a", b"b", b"c", b"d"]) == [b"1", None, b"3", b"4"]
    assert len(store) == 3
    assert store.stats()["evictions"] == 1


async def test_byte_bound_evicts_and_accounts_for_every_entry() -> None:
    per_entry = 1 + 10 + ENTRY_OVERHEAD
    store = MemoryStore(max_entries=1000, max_bytes=per_entry * 2)
    await store.set_many([(b"a", b"x" * 10), (b"b", b"y" * 10)], ttl_s=60)
    assert store.size_bytes == per_entry * 2
    await store.set_many([(b"c", b"z" * 10)], ttl_s=60)
    assert await store.get_many([b"a", b"b", b"c"]) == [None, b"y" * 10, b"z" * 10]
    assert store.size_bytes == per_entry * 2
    await store.set_many([(b"c", b"w" * 10)], ttl_s=60)  # replacing does not double-count
    assert store.size_bytes == per_entry * 2


async def test_a_value_larger_than_the_whole_cache_is_not_stored() -> None:
    store = MemoryStore(max_entries=10, max_bytes=ENTRY_OVERHEAD + 10)
    await store.set_many([(b"small", b"1"), (b"big", b"x" * 100)], ttl_s=60)
    assert await store.get_many([b"small", b"big"]) == [b"1", None]


async def test_expired_entries_are_misses_and_free_their_bytes() -> None:
    clock = Clock()
    store = MemoryStore(max_entries=10, max_bytes=10**6, clock=clock)
    await store.set_many([(b"k", b"v")], ttl_s=5)
    clock.now += 4.9
    assert await store.get_many([b"k"]) == [b"v"]
    clock.now += 0.2
    assert await store.get_many([b"k"]) == [None]
    assert store.size_bytes == 0
    assert store.stats()["expired"] == 1


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        MemoryStore(max_entries=0, max_bytes=1)
