"""Bounded write-behind: responses never wait for cache writes, and a slow store cannot make
pending writes grow without bound (beyond the bound they are dropped and counted)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence

from rerankd.cache.base import CacheStore

__all__ = ["WriteBehind"]

log = logging.getLogger(__name__)

Items = Sequence[tuple[bytes, bytes]]


class WriteBehind:
    """One task drains queued writes into the store, merging queued batches into one call of
    up to ``batch_size`` pairs. ``on_written`` gets every submitted key once its write is done,
    failed or dropped."""

    def __init__(
        self,
        store: CacheStore,
        *,
        ttl_s: int,
        max_pending: int,
        on_written: Callable[[list[bytes]], None] = lambda keys: None,
        batch_size: int = 2000,
    ) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self.batch_size = batch_size
        self._on_written = on_written
        self._queue: deque[Items] = deque()
        self._pending = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    @property
    def pending(self) -> int:
        return self._pending

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rerankd-cache-writer")

    def submit(self, items: Items) -> bool:
        """Queue ``items``; ``False`` when the queue is full and they were dropped."""
        if not items:
            return True
        if self._task is None or self._pending + len(items) > self.max_pending:
            if self.dropped == 0:
                log.warning("cache write queue is full (%d pairs); dropping writes", self._pending)
            self.dropped += len(items)
            self._on_written([k for k, _ in items])
            return False
        self._queue.append(items)
        self._pending += len(items)
        self._wake.set()
        return True

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await self._write(self._take())

    def _take(self) -> list[tuple[bytes, bytes]]:
        batch: list[tuple[bytes, bytes]] = list(self._queue.popleft())
        while self._queue and len(batch) + len(self._queue[0]) <= self.batch_size:
            batch.extend(self._queue.popleft())
        return batch

    async def _write(self, batch: list[tuple[bytes, bytes]]) -> None:
        try:
            await self.store.set_many(batch, self.ttl_s)
        except Exception:  # stores swallow their faults; this is a bug, and the writer must live on
            log.exception("cache write of %d pairs failed", len(batch))
        finally:
            self._pending -= len(batch)
            self._on_written([k for k, _ in batch])

    async def close(self, timeout_s: float = 2.0) -> None:
        """Flush what is queued, for at most ``timeout_s``, then stop. Bounded whatever the store
        does: a store call that ignored its cancellation is left behind (logged), not awaited."""
        task, self._task = self._task, None
        if task is None:
            return
        flusher = asyncio.ensure_future(self._flush())
        await asyncio.wait([flusher], timeout=timeout_s)
        flusher.cancel()
        task.cancel()
        _, stuck = await asyncio.wait([flusher, task], timeout=timeout_s)
        if stuck:
            log.warning("cache writes still running after shutdown; %d pairs not written", self._pending)

    async def _flush(self) -> None:
        while self._queue:
            await self._write(self._take())
