"""vLLM's synchronous LLM in one worker thread: merged batches, each request its own results."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from rerankd.adapters.formats import EncodeOptions
from rerankd.adapters.vllm_engine import VLLMOptions
from rerankd.adapters.vllm_sync import VLLMSyncEngine
from tests.adapters.test_vllm_engine import DOCS, MAX_LENGTH, QUERY, qwen_source
from tests.fixtures.qwen3_reference import model_card_scores
from tests.ranking import assert_same_ranking

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine(tiny_qwen3_dir: Path, vllm_env: dict[str, str]) -> AsyncIterator[VLLMSyncEngine]:
    eng = VLLMSyncEngine(qwen_source(tiny_qwen3_dir), VLLMOptions(dtype="float32", enforce_eager=True))
    try:
        await eng.start()
        yield eng
    finally:
        await eng.close()


async def test_scores_equal_the_model_card(engine: VLLMSyncEngine, tiny_qwen3_dir: Path) -> None:
    result = await engine.score(QUERY, DOCS, EncodeOptions())
    expected = model_card_scores(tiny_qwen3_dir, QUERY, DOCS, max_length=MAX_LENGTH)
    assert result.scores == pytest.approx(expected, abs=1e-4)
    assert_same_ranking(result.scores, expected)


async def test_concurrent_requests_are_merged_and_split_back(
    engine: VLLMSyncEngine, tiny_qwen3_dir: Path
) -> None:
    requests = [
        (f"query {i}", [f"doc {i}-{j}: {DOCS[(i * 3 + j) % len(DOCS)]}" for j in range(4)]) for i in range(50)
    ]
    before = engine.scheduler.stats.mixed_batches
    results = await asyncio.gather(*(engine.score(q, docs, EncodeOptions()) for q, docs in requests))
    # Batches that carried rows of several requests: one LLM call served them together.
    assert engine.scheduler.stats.mixed_batches > before
    for (query, docs), result in zip(requests, results, strict=True):
        expected = model_card_scores(tiny_qwen3_dir, query, docs, max_length=MAX_LENGTH)
        assert result.scores == pytest.approx(expected, abs=1e-4)
    assert engine.healthy
