"""Cross-request batching for engines that run blocking forward passes (the torch engine).

Every request's sequences enter one queue. A single worker thread takes a window of the oldest
pending sequences, sorts it by length so rows of a batch pad little, cuts it into micro-batches
under a padded-token budget, runs them and routes each output back to its request. The event
loop only enqueues and awaits futures, so it never blocks on the model.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rerankd.errors import EngineFailure, EngineUnavailable, Overloaded, Timeout

__all__ = [
    "BATCH_SIZE_BOUNDS",
    "QUEUE_WAIT_BOUNDS",
    "Finish",
    "Histogram",
    "Runner",
    "Scheduler",
    "SchedulerStats",
]

log = logging.getLogger(__name__)

#: Launches a batch (token ids, and token type ids if the model uses them, per row) and returns a
#: function that waits for its outputs. On a GPU the launch only queues kernels, so the worker can
#: prepare and launch the next batch while this one runs.
Finish = Callable[[], Sequence[Any]]
Runner = Callable[[list[list[int]], list[list[int]] | None], Finish]
Item = tuple["_Job", int]

# How many budgets' worth of pending tokens one sort-and-split pass looks at: large enough to
# group similar lengths, small enough that a newly arrived request waits at most a few batches.
_WINDOW_BUDGETS = 8


@dataclass(eq=False, slots=True)
class _Job:
    ids: list[list[int]]
    type_ids: list[list[int]] | None
    future: asyncio.Future[list[Any]]
    loop: asyncio.AbstractEventLoop
    deadline: float | None
    #: ``time.monotonic()`` when queued: a row's queue wait ends when its batch is launched.
    enqueued: float = 0.0
    outputs: list[Any] = field(default_factory=list)
    remaining: int = 0
    failed: bool = False

    def abandoned(self) -> bool:
        return self.failed or self.future.done()


#: Upper bounds of the batch-size and queue-wait histograms (rows; seconds).
BATCH_SIZE_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
QUEUE_WAIT_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    """A fixed-bucket histogram filled by the worker thread and read by a metrics scrape.

    Plain counters, no locks: a scrape may see one observation in ``counts`` but not yet in
    ``total``, which is harmless. Observing costs one bisect, so the worker never waits on a metrics
    library."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        #: Per bucket, not cumulative; the last one counts values above every bound.
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += n
        self.total += value * n


@dataclass(slots=True)
class SchedulerStats:
    batches: int = 0
    sequences: int = 0
    padded_tokens: int = 0
    real_tokens: int = 0
    busy_s: float = 0.0
    last_batch_size: int = 0
    #: Batches that carried rows of more than one request: cross-request batching at work.
    mixed_batches: int = 0
    batch_sizes: Histogram = field(default_factory=lambda: Histogram(BATCH_SIZE_BOUNDS))
    #: Per sequence: from its request's submit to the launch of the batch that carries it.
    queue_wait: Histogram = field(default_factory=lambda: Histogram(QUEUE_WAIT_BOUNDS))


class Scheduler:
    def __init__(
        self,
        runner: Runner,
        *,
        max_batch_tokens: int,
        max_batch_size: int,
        max_queue: int,
        name: str = "engine",
    ) -> None:
        self._runner = runner
        self._max_tokens = max_batch_tokens
        self._max_size = max_batch_size
        self._max_queue = max_queue
        self._pending: deque[tuple[_Job, int]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._dead: BaseException | None = None
        self._in_flight = 0
        self._busy_since = 0.0
        #: Rows of the current window not launched yet (written by the worker thread only).
        self._windowed = 0
        self._thread = threading.Thread(target=self._work, name=f"rerankd-{name}", daemon=True)
        self.stats = SchedulerStats()

    def start(self) -> None:
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        """Sequences not yet launched: queued, or taken into the worker's window and waiting there."""
        return len(self._pending) + self._windowed

    def snapshot(self) -> dict[str, float]:
        """The counters engines report as their stats (read at scrape time)."""
        s = self.stats
        return {
            "batches": s.batches,
            "mixed_batches": s.mixed_batches,
            "sequences": s.sequences,
            "real_tokens": s.real_tokens,
            "padded_tokens": s.padded_tokens,
            "busy_seconds": s.busy_s,
            "queue_depth": self.queue_depth,
        }

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self._dead is None

    async def submit(
        self,
        ids: list[list[int]],
        type_ids: list[list[int]] | None = None,
        *,
        deadline: float | None = None,
    ) -> list[Any]:
        """Queue the sequences of one request and wait for their outputs, in order."""
        if not ids:
            return []
        if not self.alive:
            raise EngineUnavailable()
        loop = asyncio.get_running_loop()
        job = _Job(
            ids, type_ids, loop.create_future(), loop, deadline, time.monotonic(), [None] * len(ids), len(ids)
        )
        with self._cond:
            if self._dead is not None:  # died since the check above: nothing would take these rows
                raise EngineUnavailable()
            # An idle queue admits any request, so one larger than the bound is slow, not refused.
            if self._pending and len(self._pending) + len(ids) > self._max_queue:
                raise Overloaded(f"scoring queue is full ({len(self._pending)} sequences waiting)")
            self._pending.extend((job, i) for i in range(len(ids)))
            self._cond.notify()
        # A cancelled await (client gone) cancels the future; the worker then skips its rows.
        return await job.future

    async def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)

    # -- worker thread ---------------------------------------------------------------------

    def _work(self) -> None:
        window: list[Item] = []
        try:
            while True:
                taken = self._take_window()
                if taken is None:
                    return
                window = taken
                self._windowed = len(window)
                in_flight: tuple[list[Item], Finish] | None = None
                for batch in self._split(window):
                    launched = self._launch(batch)
                    self._windowed -= len(batch)
                    if in_flight is not None:
                        self._complete(*in_flight)
                    in_flight = launched
                if in_flight is not None:
                    self._complete(*in_flight)
        except BaseException as exc:  # the worker must never die silently: fail everything queued
            log.exception("scheduler worker died")
            self._windowed = 0
            with self._cond:
                self._dead = exc
            # Jobs of the window being run are no longer in the queue: fail them too, or they wait
            # for their deadline.
            for job in {job for job, _ in window}:
                if not job.abandoned():
                    self._fail(job, EngineUnavailable())
            self._fail_all(EngineUnavailable())

    def _take_window(self) -> list[Item] | None:
        with self._cond:
            while not self._pending and not self._closing:
                self._cond.wait()
            if self._closing and not self._pending:
                return None
            window: list[Item] = []
            tokens = 0
            now = time.monotonic()
            while self._pending and tokens < self._max_tokens * _WINDOW_BUDGETS:
                job, row = self._pending.popleft()
                if job.abandoned():
                    continue
                if job.deadline is not None and now > job.deadline:
                    self._fail(job, Timeout())
                    continue
                window.append((job, row))
                tokens += len(job.ids[row])
            return window

    def _split(self, window: list[Item]) -> list[list[Item]]:
        window.sort(key=lambda item: len(item[0].ids[item[1]]))
        batches: list[list[Item]] = []
        current: list[Item] = []
        for item in window:
            longest = len(item[0].ids[item[1]])  # sorted: this row is the longest so far
            if current and (
                longest * (len(current) + 1) > self._max_tokens or len(current) >= self._max_size
            ):
                batches.append(current)
                current = []
            current.append(item)
        if current:
            batches.append(current)
        return batches

    def _launch(self, batch: list[Item]) -> tuple[list[Item], Finish] | None:
        batch = [item for item in batch if not item[0].abandoned()]
        if not batch:
            return None
        ids = [job.ids[row] for job, row in batch]
        types = None
        if batch[0][0].type_ids is not None:
            types = [job.type_ids[row] for job, row in batch if job.type_ids is not None]
        self._waited(batch)
        try:
            finish = self._runner(ids, types)
        except Exception:
            self._batch_failed(batch)
            return None
        if self._in_flight == 0:
            self._busy_since = time.perf_counter()
        self._in_flight += 1
        return batch, finish

    def _complete(self, batch: list[Item], finish: Finish) -> None:
        try:
            outputs = finish()
        except Exception:
            self._batch_failed(batch)
            return
        finally:
            self._landed()
        self._record([job.ids[row] for job, row in batch], len({id(job) for job, _ in batch}))
        for (job, row), out in zip(batch, outputs, strict=True):
            if job.abandoned():
                continue
            job.outputs[row] = out
            job.remaining -= 1
            if job.remaining == 0:
                job.loop.call_soon_threadsafe(_resolve, job.future, job.outputs)

    def _batch_failed(self, batch: list[Item]) -> None:
        log.exception("forward pass failed for a batch of %d sequences", len(batch))
        for job in {job for job, _ in batch}:
            self._fail(job, EngineFailure())

    def _waited(self, batch: list[Item]) -> None:
        # Rows of one request share their wait: one observation per request in the batch.
        rows: dict[_Job, int] = {}
        for job, _ in batch:
            rows[job] = rows.get(job, 0) + 1
        now = time.monotonic()
        for job, n in rows.items():
            self.stats.queue_wait.observe(now - job.enqueued, n)

    def _landed(self) -> None:
        # Busy time is wall time with a batch in flight; overlapping batches count once.
        self._in_flight -= 1
        if self._in_flight == 0:
            self.stats.busy_s += time.perf_counter() - self._busy_since

    def _record(self, ids: list[list[int]], n_jobs: int) -> None:
        s = self.stats
        s.batches += 1
        s.mixed_batches += n_jobs > 1
        s.sequences += len(ids)
        s.last_batch_size = len(ids)
        s.batch_sizes.observe(len(ids))
        s.real_tokens += sum(map(len, ids))
        s.padded_tokens += max(map(len, ids)) * len(ids)

    def _fail(self, job: _Job, exc: Exception) -> None:
        job.failed = True
        job.loop.call_soon_threadsafe(_reject, job.future, exc)

    def _fail_all(self, exc: Exception) -> None:
        with self._cond:
            jobs = {job for job, _ in self._pending}
            self._pending.clear()
        for job in jobs:
            self._fail(job, exc)


def _resolve(future: asyncio.Future[list[Any]], outputs: list[Any]) -> None:
    if not future.done():
        future.set_result(outputs)


def _reject(future: asyncio.Future[list[Any]], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
