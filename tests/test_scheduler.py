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
    busy = asyncio.ensure_future(engine.scheduler.submit(rows(40)))
    await asyncio.sleep(0)  # the worker is now busy with the first request
    small = [engine.scheduler.submit(rows(1, start=7 + i)) for i in range(8)]
    await asyncio.gather(busy, *small)
    assert engine.scheduler.stats.mixed_batches > 0


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
