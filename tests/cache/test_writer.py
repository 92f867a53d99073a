"""The write-behind queue's shutdown: bounded however the store behaves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from rerankd.cache.memory import MemoryStore
from rerankd.cache.writer import WriteBehind


class _Stuck(MemoryStore):
    """A store whose write never finishes and absorbs one cancellation, as a client library that
    shields its I/O would (the real store never does this; the writer must not rely on that)."""

    async def set_many(self, items: Sequence[tuple[bytes, bytes]], ttl_s: int) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(3600)


async def test_close_is_bounded_when_a_write_never_ends() -> None:
    writer = WriteBehind(_Stuck(max_entries=100, max_bytes=1 << 20), ttl_s=60, max_pending=100)
    writer.start()
    assert writer.submit([(b"k", b"v")])
    await asyncio.sleep(0.05)  # the task is inside the stuck write now
    assert writer.submit([(b"k2", b"v")])  # and this one waits behind it
    started = time.monotonic()
    await writer.close(timeout_s=0.2)
    assert time.monotonic() - started < 2


async def test_close_flushes_what_is_queued() -> None:
    store = MemoryStore(max_entries=100, max_bytes=1 << 20)
    await store.open()
    writer = WriteBehind(store, ttl_s=60, max_pending=100)
    writer.start()
    for i in range(5):
        assert writer.submit([(b"k%d" % i, b"v%d" % i)])
    await writer.close()
    assert await store.get_many([b"k%d" % i for i in range(5)]) == [b"v%d" % i for i in range(5)]
    assert writer.pending == 0
