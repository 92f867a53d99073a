"""The scheduler with several replicas: dispatch, fail-over, and every replica down.

The replicas here are plain runners on their own worker threads (the forward pass of a model is
in tests/test_devices.py, over HTTP); each sleeps a little so that batches overlap in time."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable

import pytest

from rerankd.adapters.scheduler import Finish, Replica, Runner, Scheduler
from rerankd.errors import EngineUnavailable


def _runner(device: str, seen: dict[str, int], *, fail_after: int | None = None) -> Runner:
    """Scores each row by its token sum; from batch ``fail_after + 1`` on, it raises."""
    lock = threading.Lock()

    def run(ids: list[list[int]], _types: list[list[int]] | None) -> Finish:
        with lock:
            seen[device] = seen.get(device, 0) + 1
            n = seen[device]
        if fail_after is not None and n > fail_after:
            raise RuntimeError(f"{device} is broken")
        time.sleep(0.01)
        out = [float(sum(row)) for row in ids]
        return lambda: out

    return run


def _scheduler(replicas: list[Replica]) -> Scheduler:
    return Scheduler(replicas, max_batch_tokens=64, max_batch_size=8, max_queue=100_000, overlap=False)


@pytest.fixture
async def started() -> AsyncIterator[Callable[[Scheduler], Scheduler]]:
    made: list[Scheduler] = []

    def start(s: Scheduler) -> Scheduler:
        s.start()
        made.append(s)
        return s

    yield start
    for s in made:
        await s.close()


def _requests(n: int, rows: int) -> list[list[list[int]]]:
    return [[[i, j, 1, 2] for j in range(rows)] for i in range(n)]


def _expected(request: list[list[int]]) -> list[float]:
    return [float(sum(row)) for row in request]


async def test_batches_spread_over_replicas(started: Callable[[Scheduler], Scheduler]) -> None:
    seen: dict[str, int] = {}
    s = started(_scheduler([Replica(d, _runner(d, seen)) for d in ("cpu:0", "cpu:1")]))
    reqs = _requests(12, 20)
    outs = await asyncio.gather(*(s.submit(r) for r in reqs))
    assert outs == [_expected(r) for r in reqs]
    assert seen.get("cpu:0", 0) > 2, seen
    assert seen.get("cpu:1", 0) > 2, seen
    devices = {d.device: d for d in s.devices()}
    assert devices["cpu:0"].batches + devices["cpu:1"].batches == s.stats.batches
    assert all(d.up for d in devices.values())
    assert s.live_replicas == 2


async def test_a_failing_replica_hands_its_batch_to_the_others(
    started: Callable[[Scheduler], Scheduler],
) -> None:
    seen: dict[str, int] = {}
    s = started(
        _scheduler(
            [
                Replica("cpu:0", _runner("cpu:0", seen)),
                Replica("cpu:1", _runner("cpu:1", seen, fail_after=2)),
            ]
        )
    )
    reqs = _requests(12, 20)
    outs = await asyncio.gather(*(s.submit(r) for r in reqs))  # none fails
    assert outs == [_expected(r) for r in reqs]
    assert seen["cpu:1"] == 3  # two batches done, the third raised and was run again on cpu:0
    assert s.alive
    assert s.live_replicas == 1
    assert [d.up for d in s.devices()] == [True, False]
    assert await s.submit([[5, 5]]) == [10.0]


async def test_every_replica_down_is_unavailable(started: Callable[[Scheduler], Scheduler]) -> None:
    seen: dict[str, int] = {}
    s = started(_scheduler([Replica(d, _runner(d, seen, fail_after=1)) for d in ("cpu:0", "cpu:1")]))
    reqs = _requests(8, 20)
    results = await asyncio.gather(*(s.submit(r) for r in reqs), return_exceptions=True)
    assert any(isinstance(r, EngineUnavailable) for r in results), results
    for request, result in zip(reqs, results, strict=True):  # scored in full, or 503: nothing else
        assert isinstance(result, EngineUnavailable) or result == _expected(request), result
    assert not s.alive
    assert s.live_replicas == 0
    with pytest.raises(EngineUnavailable):
        await s.submit([[1]])


async def test_admission_rate_sums_the_live_replicas(started: Callable[[Scheduler], Scheduler]) -> None:
    seen: dict[str, int] = {}
    replicas = [Replica(d, _runner(d, seen)) for d in ("cpu:0", "cpu:1")]
    s = started(_scheduler(replicas))
    await asyncio.gather(*(s.submit(r) for r in _requests(12, 20)))
    rates = [r.tokens_per_s for r in replicas]
    assert all(rate > 0 for rate in rates), rates
    assert s.stats.tokens_per_s == pytest.approx(sum(rates))
