"""Cross-request batching for engines that run blocking forward passes (the torch engine).

Every request's sequences enter one scheduler. A single worker thread forms one batch at a time
from the requests waiting, launches it, and routes each output back to its request. The event loop
only enqueues and awaits futures, so it never blocks on the model.

Which rows go into the next batch decides who waits. Requests are ranked, best first, by:

1. priority (Cohere's ``priority``: 0 is served first, 999 last), aged so that a waiting request
   gains a level every ``1 / PRIORITY_AGEING_PER_S`` seconds and is never starved;
2. the tenant (API key, or client address) that has been served the fewest tokens lately, so one
   key's flood cannot starve another key's requests;
3. shortest remaining work first, aged by arrival: a request's rank is its arrival time plus the
   seconds its remaining rows take at the measured rate. A 2-document request that arrives behind an
   800-document one is ranked ahead of it and rides in the next batch; the large request keeps
   its place against newcomers that would finish later than it, so it is never starved.

A batch takes rows from the best-ranked request first (each request's rows sorted by length, so
its batches pad little), then fills the rest of the padded-token budget from the next ones.

Several replicas of one model (``--devices``) sit behind the one scheduler: each
:class:`Replica` has its own worker thread, which takes the next batch when its replica has room,
so a batch lands on the least-loaded live replica and up to one batch per replica is in flight
(two with ``overlap``). The queues, fairness and admission rules stay those above; admission's
rate is the sum of the live replicas' rates. A replica whose forward pass raises or whose thread
dies is taken out: its batches in flight go back to the head of the queue for the others, so no
work is lost and no client sees the fault while one replica lives.

Admission is bounded by time, not only by count: from the measured rate, a request whose work
and the work ranked ahead of it could not finish before its deadline is refused at once with
:class:`Overloaded` and a ``Retry-After`` of the time that queue takes to drain, instead of waiting
until its client gives up. Lower-priority requests are refused first.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rerankd.errors import EngineFailure, EngineUnavailable, Overloaded, Timeout
from rerankd.requester import Requester, requested_by
from rerankd.stages import StageTimes

__all__ = [
    "BATCH_SIZE_BOUNDS",
    "BATCH_TOKENS_BOUNDS",
    "QUEUE_WAIT_BOUNDS",
    "DeviceStats",
    "Finish",
    "Histogram",
    "Replica",
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

#: Priority levels a waiting request gains per second (999 reaches 0 after about 10 s).
PRIORITY_AGEING_PER_S = 100.0
MAX_PRIORITY = 999
#: Of the time left before its deadline, the share a request's estimated wait may take when it is
#: admitted: the estimate is an average, and the request's own rows take time too.
_ADMIT_SHARE = 0.8
#: Requests looked at when filling one batch: enough to fill it with small requests' rows.
_FILL_SCAN = 64
#: Tokens per second assumed for ranking until a full batch has been measured.
_DEFAULT_RATE = 10_000.0
#: The weight of the newest full batch in the measured rate.
_RATE_WEIGHT = 0.3


@dataclass(eq=False, slots=True)
class _Tenant:
    name: str
    #: Tokens launched for this tenant while it had work waiting (its virtual time).
    served: float = 0.0
    jobs: int = 0


@dataclass(eq=False, slots=True)
class _Job:
    ids: list[list[int]]
    type_ids: list[list[int]] | None
    future: asyncio.Future[list[Any]]
    loop: asyncio.AbstractEventLoop
    deadline: float | None
    priority: int
    tenant: _Tenant
    #: ``time.monotonic()`` when queued: a row's queue wait ends when its batch is launched.
    enqueued: float
    #: Row indexes by length, shortest first; ``next`` is the position of the next one to launch.
    order: list[int]
    next: int = 0
    #: Tokens of the rows not launched yet.
    queued_tokens: int = 0
    outputs: list[Any] = field(default_factory=list)
    remaining: int = 0
    failed: bool = False
    #: Whether the job still has rows waiting (it is in the scheduler's list).
    queued: bool = True
    #: The request's stage times, and ``time.monotonic()`` at the launch of its first batch.
    stages: StageTimes | None = None
    launched: float = 0.0

    def abandoned(self) -> bool:
        return self.failed or self.future.done()

    def aged_priority(self, now: float) -> int:
        return max(0, self.priority - int((now - self.enqueued) * PRIORITY_AGEING_PER_S))


@dataclass(eq=False, slots=True)
class Replica:
    """One engine replica: the device it runs on and the runner that launches batches there.
    The counters are written by its worker thread and read by a metrics scrape."""

    #: The device label in metrics and ``/ready`` (``cuda:1``, ``cpu:0``).
    device: str
    runner: Runner
    #: Called on the replica's worker thread before its first batch (e.g. select its CUDA device,
    #: which is per thread).
    setup: Callable[[], None] | None = None
    #: Bytes of device memory the replica holds now; None where it is not measured (CPU).
    memory: Callable[[], float | None] | None = None
    up: bool = True
    batches: int = 0
    real_tokens: int = 0
    busy_s: float = 0.0
    #: Measured real tokens per busy second of this replica (0 until measured).
    tokens_per_s: float = 0.0
    # Worker-thread state: batches in flight, since when, when the last one landed.
    in_flight: int = 0
    busy_since: float = 0.0
    last_landed: float = 0.0


@dataclass(frozen=True, slots=True)
class DeviceStats:
    """One replica's counters, as a metrics scrape reads them."""

    device: str
    up: bool
    batches: int
    real_tokens: int
    busy_seconds: float
    memory_bytes: float | None


@dataclass(slots=True)
class _Launched:
    batch: list[Item]
    finish: Finish
    #: ``time.perf_counter()`` at launch.
    at: float
    replica: Replica
    #: The batch already failed on another replica once.
    retried: bool = False


#: Upper bounds of the batch-size and queue-wait histograms (rows; seconds).
BATCH_SIZE_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: Upper bounds of the batch-tokens histogram (real tokens per forward pass).
BATCH_TOKENS_BOUNDS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
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
    #: Batches that carried rows of more than one request: cross-request batching at work.
    mixed_batches: int = 0
    #: Requests refused at admission because they could not finish before their deadline.
    refused: int = 0
    #: Measured real tokens per busy second (0 until measured).
    tokens_per_s: float = 0.0
    batch_sizes: Histogram = field(default_factory=lambda: Histogram(BATCH_SIZE_BOUNDS))
    #: Real tokens per forward pass.
    batch_tokens: Histogram = field(default_factory=lambda: Histogram(BATCH_TOKENS_BOUNDS))
    #: Sequences in the forward passes in flight now.
    running: int = 0
    #: Per sequence: from its request's submit to the launch of the batch that carries it.
    queue_wait: Histogram = field(default_factory=lambda: Histogram(QUEUE_WAIT_BOUNDS))


class Scheduler:
    def __init__(
        self,
        runner: Runner | Sequence[Replica],
        *,
        max_batch_tokens: int,
        max_batch_size: int,
        max_queue: int,
        name: str = "engine",
        overlap: bool = True,
    ) -> None:
        """``overlap``: launch the next batch before waiting for the one in flight. Right where a
        launch only queues work (CUDA); where the runner computes as it launches (CPU), it would
        make a request that just arrived wait for one more batch than it must.

        ``runner``: one runner, or the replicas of a model (one worker thread each)."""
        self.replicas: list[Replica] = (
            list(runner) if isinstance(runner, Sequence) else [Replica(name, runner)]
        )
        if not self.replicas:
            raise ValueError("a scheduler needs at least one replica")
        #: Several replicas: the dispatch and fail-over paths below; one keeps the plain worker loop.
        self._multi = len(self.replicas) > 1
        self._overlap = overlap
        self._max_tokens = max_batch_tokens
        self._max_size = max_batch_size
        self._max_queue = max_queue
        self._jobs: list[_Job] = []
        self._tenants: dict[str, _Tenant] = {}
        self._queued_rows = 0
        self._queued_tokens = 0
        self._cond = threading.Condition()
        self._closing = False
        self._dead: BaseException | None = None
        #: Batches that failed on a replica now taken out, to run first on the others.
        self._retry: list[list[Item]] = []
        #: Worker threads waiting for work (several replicas only).
        self._idle = 0
        #: Guards the stats that several replicas' threads update; one replica's single worker
        #: needs no lock.
        self._stats_lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if self._multi else contextlib.nullcontext()
        )
        if self._multi:
            self._threads = [
                threading.Thread(
                    target=self._serve, args=(r,), name=f"rerankd-{name}-{r.device}", daemon=True
                )
                for r in self.replicas
            ]
        else:
            self._threads = [threading.Thread(target=self._work, name=f"rerankd-{name}", daemon=True)]
        self._thread = self._threads[0]
        self.stats = SchedulerStats()

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    @property
    def queue_depth(self) -> int:
        """Sequences not yet launched."""
        return self._queued_rows

    @property
    def alive(self) -> bool:
        if self._multi:
            return self._dead is None and any(
                r.up and t.is_alive() for r, t in zip(self.replicas, self._threads, strict=True)
            )
        return self._thread.is_alive() and self._dead is None

    @property
    def live_replicas(self) -> int:
        if not self.alive:
            return 0
        return sum(r.up and t.is_alive() for r, t in zip(self.replicas, self._threads, strict=True))

    def devices(self) -> list[DeviceStats]:
        """Per replica: its counters and whether it serves (read at scrape time)."""
        alive = self.alive
        return [
            DeviceStats(
                r.device,
                alive and r.up and t.is_alive(),
                r.batches,
                r.real_tokens,
                r.busy_s,
                r.memory() if r.memory is not None else None,
            )
            for r, t in zip(self.replicas, self._threads, strict=True)
        ]

    async def submit(
        self,
        ids: list[list[int]],
        type_ids: list[list[int]] | None = None,
        *,
        deadline: float | None = None,
        requester: Requester | None = None,
    ) -> list[Any]:
        """Queue the sequences of one request and wait for their outputs, in order. ``requester``
        (default: the one the service set for this request) decides where it ranks."""
        if not ids:
            return []
        who = requester or requested_by.get()
        tenant = who.tenant
        if not self.alive:
            raise EngineUnavailable()
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        lengths = [len(row) for row in ids]
        priority = min(max(who.priority, 0), MAX_PRIORITY)
        with self._cond:
            if self._dead is not None:  # died since the check above: nothing would take these rows
                raise EngineUnavailable()
            member = self._tenants.get(tenant)
            if member is None:
                # A tenant that (re)turns starts level with the least-served one: no credit saved up.
                floor = min((t.served for t in self._tenants.values()), default=0.0)
                member = _Tenant(tenant, served=floor)
            self._admit(len(ids), sum(lengths), deadline, (priority, member.served, now), now)
            self._tenants[tenant] = member
            member.jobs += 1
            job = _Job(
                ids,
                type_ids,
                loop.create_future(),
                loop,
                deadline,
                priority,
                member,
                now,
                sorted(range(len(ids)), key=lengths.__getitem__),
                queued_tokens=sum(lengths),
                outputs=[None] * len(ids),
                remaining=len(ids),
                stages=who.stages,
            )
            self._jobs.append(job)
            self._queued_rows += len(ids)
            self._queued_tokens += job.queued_tokens
            self._cond.notify()
        # A cancelled await (client gone, deadline passed) cancels the future: its rows leave the
        # queue at once, so they neither run nor count against the admission of others.
        job.future.add_done_callback(lambda _: self._withdraw(job))
        outputs = await job.future
        if job.stages is not None:  # see rerankd.stages: queue until the first launch, then inference
            job.stages.queue += job.launched - job.enqueued
            job.stages.inference += time.monotonic() - job.launched
        return outputs

    def _admit(
        self, rows: int, tokens: int, deadline: float | None, place: tuple[int, float, float], now: float
    ) -> None:
        """Refuse (:class:`Overloaded`) work that would wait past its deadline. Caller holds the lock.
        ``place``: the new request's rank, but for its own work (added here).

        An idle queue admits any request, so one larger than the bounds is slow, not refused."""
        if not self._queued_rows:
            return
        if self._queued_rows + rows > self._max_queue:
            self._refuse(f"scoring queue is full ({self._queued_rows} sequences waiting)")
        rate = self.stats.tokens_per_s
        if deadline is None or rate <= 0:
            return
        priority, served, arrival = place
        mine = (priority, served, arrival + tokens / rate)
        # The work ranked ahead of this request is what it waits for (see the module's rules).
        ahead = sum(j.queued_tokens for j in self._jobs if _rank(j, now, rate) < mine)
        # Lower priorities get a smaller share of their time: they are the first refused.
        share = _ADMIT_SHARE * (1 - 0.5 * priority / MAX_PRIORITY)
        if (ahead + tokens) / rate > (deadline - now) * share:
            self._refuse(
                f"scoring queue is too long to finish this request in time "
                f"({self._queued_rows} sequences waiting, about {ahead / rate:.1f} s of work ahead)",
                drain_s=ahead / rate,
            )

    def _refuse(self, detail: str, drain_s: float | None = None) -> None:
        self.stats.refused += 1
        if drain_s is None:
            rate = self.stats.tokens_per_s
            drain_s = self._queued_tokens / rate if rate > 0 else 1.0
        raise Overloaded(detail, retry_after=min(60.0, max(1.0, math.ceil(drain_s))))

    def _withdraw(self, job: _Job) -> None:
        """Take a finished, failed or cancelled job's unlaunched rows out of the queue."""
        with self._cond:
            self._drop(job)

    def _drop(self, job: _Job) -> None:
        """Forget a job's unlaunched rows. Caller holds the lock; a no-op once all are launched."""
        self._queued_rows -= len(job.order) - job.next
        self._queued_tokens -= job.queued_tokens
        job.next, job.queued_tokens = len(job.order), 0
        self._detach(job)

    def _detach(self, job: _Job) -> None:
        if not job.queued:
            return
        job.queued = False
        self._jobs.remove(job)
        job.tenant.jobs -= 1
        if job.tenant.jobs == 0:
            del self._tenants[job.tenant.name]

    async def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                await asyncio.to_thread(thread.join)

    # -- worker thread ---------------------------------------------------------------------

    def _work(self) -> None:
        replica = self.replicas[0]
        in_flight: _Launched | None = None
        batch: list[Item] = []
        try:
            if replica.setup is not None:
                replica.setup()
            while True:
                # Block for work only with nothing in flight; else launch what is there, then
                # wait for the batch in flight.
                if in_flight is not None and not self._overlap:
                    self._complete(in_flight)
                    in_flight = None
                batch = self._take_batch(block=in_flight is None)
                launched = self._launch(batch, replica) if batch else None
                if in_flight is not None:
                    self._complete(in_flight)
                in_flight = launched
                if in_flight is None and not batch and self._closing and not self._jobs:
                    return
        except BaseException as exc:  # the worker must never die silently: fail everything queued
            log.exception("scheduler worker died")
            with self._cond:
                self._dead = exc
            # Rows in hand are no longer queued: fail their jobs too, or they wait for their deadline.
            held = batch + (in_flight.batch if in_flight is not None else [])
            for job in {job for job, _ in held}:
                if not job.abandoned():
                    self._fail(job, EngineUnavailable())
            self._fail_all(EngineUnavailable())

    def _take_batch(self, *, block: bool) -> list[Item]:
        with self._cond:
            while block and not self._jobs and not self._closing:
                self._cond.wait()
            return self._form_batch()

    def _form_batch(self) -> list[Item]:
        """The next batch by the ranking rules. Caller holds the lock."""
        now = time.monotonic()
        self._expire(now)
        rate = self.stats.tokens_per_s or _DEFAULT_RATE
        batch: list[Item] = []
        for job in sorted(self._jobs, key=lambda j: _rank(j, now, rate))[:_FILL_SCAN]:
            self._fill(batch, job)
            if len(batch) >= self._max_size:
                break
        return batch

    def _expire(self, now: float) -> None:
        for job in list(self._jobs):
            if job.abandoned() or (job.deadline is not None and now > job.deadline):
                if not job.abandoned():
                    self._fail(job, Timeout())
                self._drop(job)

    def _fill(self, batch: list[Item], job: _Job) -> None:
        """Add the job's next rows (shortest first) while the batch stays within its budgets."""
        longest = max((len(j.ids[r]) for j, r in batch), default=0)
        taken = rows = 0
        while job.next < len(job.order) and len(batch) < self._max_size:
            row = job.order[job.next]
            n = len(job.ids[row])
            if batch and max(longest, n) * (len(batch) + 1) > self._max_tokens:
                break
            longest = max(longest, n)
            batch.append((job, row))
            job.next += 1
            taken += n
            rows += 1
        job.queued_tokens -= taken
        self._queued_rows -= rows
        self._queued_tokens -= taken
        job.tenant.served += taken
        if job.next == len(job.order):
            self._detach(job)  # every row is in hand; they still complete

    def _launch(self, batch: list[Item], replica: Replica, retried: bool = False) -> _Launched | None:
        batch = [item for item in batch if not item[0].abandoned()]
        if not batch:
            return None
        ids = [job.ids[row] for job, row in batch]
        types = None
        if batch[0][0].type_ids is not None:
            types = [job.type_ids[row] for job, row in batch if job.type_ids is not None]
        if not retried:  # a retried batch's rows waited once already
            self._waited(batch)
        # Timed from before the launch: on CPU the runner computes the whole batch as it launches.
        launched = time.perf_counter()
        if replica.in_flight == 0:
            replica.busy_since = launched
        replica.in_flight += 1
        with self._stats_lock:
            self.stats.running += len(batch)
        try:
            finish = replica.runner(ids, types)
        except Exception:
            self._landed(replica, len(batch))
            self._batch_failed(batch, replica, retried)
            return None
        return _Launched(batch, finish, launched, replica, retried)

    def _complete(self, launched: _Launched) -> None:
        batch, replica = launched.batch, launched.replica
        try:
            outputs = launched.finish()
        except Exception:
            self._batch_failed(batch, replica, launched.retried)
            return
        finally:
            self._landed(replica, len(batch))
        now = time.perf_counter()
        # The batch's own time: overlapped batches start being served when the one before lands.
        self._record(
            [job.ids[row] for job, row in batch],
            len({id(job) for job, _ in batch}),
            now - max(launched.at, replica.last_landed),
            replica,
        )
        replica.last_landed = now
        for (job, row), out in zip(batch, outputs, strict=True):
            if job.abandoned():
                continue
            job.outputs[row] = out
            job.remaining -= 1
            if job.remaining == 0:
                job.loop.call_soon_threadsafe(_resolve, job.future, job.outputs)

    def _batch_failed(self, batch: list[Item], replica: Replica, retried: bool) -> None:
        if self._multi:
            self._replica_failed(replica, batch, retried)
            return
        log.exception("forward pass failed for a batch of %d sequences", len(batch))
        for job in {job for job, _ in batch}:
            self._fail(job, EngineFailure())

    def _waited(self, batch: list[Item]) -> None:
        # Rows of one request share their wait: one observation per request in the batch.
        rows: dict[_Job, int] = {}
        for job, _ in batch:
            rows[job] = rows.get(job, 0) + 1
        now = time.monotonic()
        for job in rows:
            if not job.launched:
                job.launched = now
        with self._stats_lock:
            for job, n in rows.items():
                self.stats.queue_wait.observe(now - job.enqueued, n)

    def _landed(self, replica: Replica, rows: int) -> None:
        # Busy time is wall time with a batch in flight; overlapping batches count once. With
        # several replicas the engine's busy seconds are the sum of its devices'.
        replica.in_flight -= 1
        busy = 0.0
        if replica.in_flight == 0:
            busy = time.perf_counter() - replica.busy_since
            replica.busy_s += busy
        with self._stats_lock:
            self.stats.busy_s += busy
            self.stats.running -= rows

    def _record(self, ids: list[list[int]], n_jobs: int, seconds: float, replica: Replica) -> None:
        real = sum(map(len, ids))
        replica.batches += 1
        replica.real_tokens += real
        with self._stats_lock:
            self._record_stats(ids, real, n_jobs, seconds, replica)

    def _record_stats(
        self, ids: list[list[int]], real: int, n_jobs: int, seconds: float, replica: Replica
    ) -> None:
        s = self.stats
        padded = max(map(len, ids)) * len(ids)
        s.batches += 1
        s.mixed_batches += n_jobs > 1
        s.sequences += len(ids)
        s.batch_sizes.observe(len(ids))
        s.batch_tokens.observe(real)
        s.real_tokens += real
        s.padded_tokens += padded
        # The rate that matters is the one under load, when batches are full: a small batch costs
        # its fixed overheads over few tokens and would make a long queue look far slower to drain.
        full = padded * 2 >= self._max_tokens or len(ids) >= self._max_size
        if full and seconds > 0:
            measured = real / seconds
            if not self._multi:
                old = s.tokens_per_s or measured
                s.tokens_per_s = (1 - _RATE_WEIGHT) * old + _RATE_WEIGHT * measured
                return
            old = replica.tokens_per_s or measured
            replica.tokens_per_s = (1 - _RATE_WEIGHT) * old + _RATE_WEIGHT * measured
            self._sum_rates()

    def _sum_rates(self) -> None:
        """The engine's rate is the sum of its live replicas' (admission and ranking use it); a
        replica not measured yet counts as the mean of those that are."""
        live = [r for r in self.replicas if r.up]
        measured = [r.tokens_per_s for r in live if r.tokens_per_s > 0]
        self.stats.tokens_per_s = sum(measured) / len(measured) * len(live) if measured else 0.0

    def _fail(self, job: _Job, exc: Exception) -> None:
        job.failed = True
        job.loop.call_soon_threadsafe(_reject, job.future, exc)

    def _fail_all(self, exc: Exception) -> None:
        with self._cond:
            jobs = list(self._jobs)
            for job in jobs:
                self._drop(job)
        for job in jobs:
            self._fail(job, exc)

    # -- several replicas: one worker thread each ---------------------------------------------

    def _serve(self, replica: Replica) -> None:
        """One replica's worker loop: the single loop above, plus dispatch and fail-over."""
        in_flight: _Launched | None = None
        batch: list[Item] = []
        try:
            if replica.setup is not None:
                replica.setup()
            while replica.up:
                if in_flight is not None and not self._overlap:
                    self._complete(in_flight)
                    in_flight = None
                batch, retried = self._take_for(replica, block=in_flight is None)
                launched = self._launch(batch, replica, retried) if batch else None
                batch = []
                if in_flight is not None:
                    self._complete(in_flight)
                in_flight = launched
                if in_flight is None and self._closing and not self._jobs and not self._retry:
                    return
            if in_flight is not None:  # taken out with a batch in flight: its outputs may still come
                self._complete(in_flight)
        except BaseException:  # a dying thread takes its replica out; the others take its work
            log.exception("worker of replica %s died", replica.device)
            held = batch + (in_flight.batch if in_flight is not None else [])
            self._replica_failed(replica, held, retried=False, logged=True)

    def _take_for(self, replica: Replica, *, block: bool) -> tuple[list[Item], bool]:
        """The next batch for ``replica`` and whether it is a retry. Batches of a replica taken
        out go first. A replica with a batch in flight leaves new work to an idle one, so each
        batch goes to the least-loaded live replica."""
        with self._cond:
            while True:
                if not replica.up:
                    return [], False
                if self._retry:
                    return self._retry.pop(0), True
                if self._jobs and (block or not self._idle):
                    break
                if not block or self._closing:
                    return [], False
                self._idle += 1
                try:
                    self._cond.wait()
                finally:
                    self._idle -= 1
            batch = self._form_batch()
            if self._jobs and self._idle:
                self._cond.notify()  # more work than this batch: wake another idle replica
            return batch, False

    def _replica_failed(
        self, replica: Replica, batch: list[Item], retried: bool, *, logged: bool = False
    ) -> None:
        """Take ``replica`` out and give its batch to the others. A batch that fails on a second
        replica too is judged at fault itself, so one bad batch cannot take every replica down:
        that replica serves on, and the batch's requests get :class:`EngineUnavailable` (503, to
        retry), since which of the two was at fault cannot be told."""
        if not logged:
            log.exception(
                "forward pass failed on replica %s (a batch of %d sequences)", replica.device, len(batch)
            )
        with self._cond:
            if retried and batch:
                for job in {job for job, _ in batch}:
                    if not job.abandoned():
                        self._fail(job, EngineUnavailable())
                log.error(
                    "a batch failed on two replicas: its requests fail, replica %s serves on", replica.device
                )
                return
            if replica.up:
                replica.up = False
                live = sum(r.up for r in self.replicas)
                log.error(
                    "replica %s is taken out: %d of %d replicas serve on",
                    replica.device,
                    live,
                    len(self.replicas),
                )
                with self._stats_lock:
                    self._sum_rates()
            live_any = any(r.up for r in self.replicas)
            if live_any:
                if batch:
                    self._retry.append(batch)
                self._cond.notify_all()
                return
            self._dead = RuntimeError("every replica is down")
            retry, self._retry = self._retry, []
        log.error("every replica is down: the engine is unavailable")
        for job in {job for job, _ in batch + [item for held in retry for item in held]}:
            if not job.abandoned():
                self._fail(job, EngineUnavailable())
        self._fail_all(EngineUnavailable())


def _rank(job: _Job, now: float, rate: float) -> tuple[int, float, float]:
    """Best first: aged priority, least-served tenant, then arrival plus remaining work in seconds."""
    return (job.aged_priority(now), job.tenant.served, job.enqueued + job.queued_tokens / rate)


def _resolve(future: asyncio.Future[list[Any]], outputs: list[Any]) -> None:
    if not future.done():
        future.set_result(outputs)


def _reject(future: asyncio.Future[list[Any]], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
