"""The scheduler on a real engine (the tiny Qwen3): batching across requests, bounds, deadlines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rerankd.adapters.loader import resolve_model
from rerankd.adapters.torch_engine import TorchEngine
from rerankd.config import ModelConfig
from rerankd.errors import Overloaded, Timeout
from rerankd.requester import Requester
from tests.fixtures.held_worker import queued_behind


@pytest.fixture
async def engine(tiny_qwen3_dir: Path) -> AsyncIterator[TorchEngine]:
    source = resolve_model(ModelConfig(name="tiny", path=str(tiny_qwen3_dir)))
    eng = TorchEngine(source, device="cpu", max_batch_tokens=256, max_batch_size=4, max_queue=220)
    await eng.start()
    yield eng
    await eng.close()


def rows(n: int, length: int = 12, start: int = 3) -> list[list[int]]:
    return [[start + (i % 50)] * length for i in range(n)]


async def test_outputs_return_in_order_to_their_request(engine: TorchEngine) -> None:
    a, b = rows(7, 10, start=3), rows(5, 30, start=60)
    alone_a = await engine.scheduler.submit(a)
    alone_b = await engine.scheduler.submit(b)
    both = await asyncio.gather(engine.scheduler.submit(a), engine.scheduler.submit(b))
    assert both[0] == pytest.approx(alone_a, abs=1e-5)
    assert both[1] == pytest.approx(alone_b, abs=1e-5)


async def test_concurrent_requests_share_batches(engine: TorchEngine) -> None:
    before = engine.scheduler.stats.mixed_batches
    await queued_behind(
        engine.scheduler,
        engine.scheduler.submit(rows(40)),
        lambda: asyncio.gather(*(engine.scheduler.submit(rows(1, start=7 + i)) for i in range(8))),
        rows=8,
    )
    assert engine.scheduler.stats.mixed_batches > before


async def test_full_queue_answers_overloaded(engine: TorchEngine) -> None:
    first = asyncio.ensure_future(engine.scheduler.submit(rows(200)))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded) as err:
        await engine.scheduler.submit(rows(100))
    assert err.value.status_code == 503
    assert err.value.retry_after is not None
    assert len(await first) == 200


async def test_expired_deadline_times_out(engine: TorchEngine) -> None:
    with pytest.raises(Timeout):
        await engine.scheduler.submit(rows(3), deadline=time.monotonic() - 1)


async def test_cancelled_request_is_dropped(engine: TorchEngine) -> None:
    before = engine.scheduler.stats.sequences
    task = asyncio.ensure_future(engine.scheduler.submit(rows(200)))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await engine.scheduler.submit(rows(1))  # runs after whatever the worker still had in hand
    assert engine.scheduler.stats.sequences - before < 150


async def test_closed_engine_is_unhealthy(tiny_qwen3_dir: Path) -> None:
    source = resolve_model(ModelConfig(name="tiny", path=str(tiny_qwen3_dir)))
    eng = TorchEngine(source, device="cpu")
    await eng.start()
    assert eng.healthy
    await eng.close()
    assert not eng.healthy


async def finish_order(engine: TorchEngine, jobs: dict[str, tuple[list[list[int]], Requester]]) -> list[str]:
    """Submit the jobs in this order, all at once; the names in the order they finish."""
    done: list[str] = []

    async def run(name: str, ids: list[list[int]], who: Requester) -> None:
        await engine.scheduler.submit(ids, requester=who)
        done.append(name)

    await asyncio.gather(*(run(name, ids, who) for name, (ids, who) in jobs.items()))
    return done


async def test_a_small_request_overtakes_a_large_one(engine: TorchEngine) -> None:
    big = Requester(tenant="batch")
    order = await finish_order(
        engine, {"large": (rows(120), big), "small": (rows(2, start=70), Requester(tenant="chat"))}
    )
    assert order == ["small", "large"]


async def test_one_tenants_flood_does_not_starve_another(engine: TorchEngine) -> None:
    flood = Requester(tenant="flood")
    jobs = {f"flood-{i}": (rows(20, start=3 + i), flood) for i in range(8)}
    jobs["other"] = (rows(20, start=60), Requester(tenant="other"))
    order = await finish_order(engine, jobs)
    # Served in turn with the flooding tenant, not after all of its requests.
    assert order.index("other") <= 2, order


async def test_lower_priority_numbers_go_first(engine: TorchEngine) -> None:
    jobs = {f"late-{i}": (rows(20, start=3 + i), Requester(tenant=f"t{i}", priority=900)) for i in range(6)}
    jobs["urgent"] = (rows(20, start=60), Requester(tenant="u", priority=0))
    order = await finish_order(engine, jobs)
    assert order.index("urgent") <= 1, order


async def test_aged_requests_are_not_starved(engine: TorchEngine) -> None:
    # A priority-999 request waiting behind a stream of priority-0 ones still finishes: it gains a
    # level per 10 ms and overtakes the newcomers once it has waited about ten seconds of levels.
    who = Requester(tenant="low", priority=999)
    low = asyncio.ensure_future(engine.scheduler.submit(rows(8, start=9), requester=who))
    stream = Requester(tenant="high", priority=0)
    deadline = time.monotonic() + 60
    while not low.done():
        assert time.monotonic() < deadline, "the low-priority request starved"
        await asyncio.gather(
            *(engine.scheduler.submit(rows(4, start=20 + i), requester=stream) for i in range(4))
        )
    assert len(await low) == 8


async def test_work_that_cannot_finish_in_time_is_refused_at_once(engine: TorchEngine) -> None:
    await engine.scheduler.submit(rows(60))  # full batches: measures the engine's rate
    rate = engine.scheduler.stats.tokens_per_s
    assert rate > 0
    backlog = asyncio.ensure_future(engine.scheduler.submit(rows(200)))
    await asyncio.sleep(0)
    drain_s = 200 * 12 / rate
    # As large as the backlog, so ranked behind it, with a deadline long before the backlog is
    # done: refused at once rather than left to time out.
    with pytest.raises(Overloaded) as err:
        await engine.scheduler.submit(rows(200, start=60), deadline=time.monotonic() + drain_s / 20)
    assert err.value.retry_after is not None
    assert err.value.retry_after >= 1
    assert engine.scheduler.stats.refused == 1
    # A small request ranks ahead of the backlog: admitted with the same deadline.
    assert len(await engine.scheduler.submit(rows(2, start=70), deadline=time.monotonic() + drain_s)) == 2
    assert len(await backlog) == 200
