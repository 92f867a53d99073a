"""vLLM's CPU build gets a KV cache sized from the model and the batch settings, not 92 % of RAM."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from rerankd.adapters.formats import EncodeOptions
from rerankd.adapters.loader import resolve_model
from rerankd.adapters.vllm_engine import MIN_CPU_KV_CACHE_BYTES, VLLMEngine, VLLMOptions, cpu_kv_cache_bytes
from rerankd.config import ModelConfig

#: Tokens per step large enough that the rule's product, not its floor, decides.
STEP_TOKENS = 40960
# The tiny Qwen3: 2 layers, 2 KV heads of 32, float32 -> 2 * 2 * 2 * 32 * 4 bytes per token.
PER_TOKEN = 2 * 2 * 2 * 32 * 4


def test_the_rule_on_the_tiny_qwen3(tiny_qwen3_dir: Path) -> None:
    source = resolve_model(ModelConfig(name="tiny", path=str(tiny_qwen3_dir), max_length=128))
    big = VLLMOptions(dtype="float32", max_num_batched_tokens=STEP_TOKENS)
    assert cpu_kv_cache_bytes(source, 128, big) == 2 * STEP_TOKENS * PER_TOKEN
    # vLLM's default step (8192 tokens) needs 16 MiB here: the floor applies.
    assert cpu_kv_cache_bytes(source, 128, VLLMOptions(dtype="float32")) == MIN_CPU_KV_CACHE_BYTES
    # A context longer than the step sizes it instead; bfloat16 halves it.
    long = VLLMOptions(dtype="bfloat16", max_num_batched_tokens=1024)
    assert cpu_kv_cache_bytes(source, 65536, long) == 2 * 65536 * PER_TOKEN // 2


@pytest_asyncio.fixture(loop_scope="session")
async def default_share_engine(
    tiny_qwen3_dir: Path, vllm_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[VLLMEngine]:
    # The suite's fixed KV size (VLLM_CPU_KVCACHE_SPACE) would win over rerankd's default: drop it.
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE")
    source = resolve_model(ModelConfig(name="tiny", path=str(tiny_qwen3_dir), max_length=128))
    options = VLLMOptions(dtype="float32", enforce_eager=True, max_num_batched_tokens=STEP_TOKENS)
    engine = VLLMEngine(source, options)
    try:
        await engine.start()
        yield engine
    finally:
        await engine.close()


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.timeout(900)  # one vLLM start: 10-30 s on a quiet machine, minutes on a busy one
async def test_engine_starts_with_the_default_share(default_share_engine: VLLMEngine) -> None:
    cache = default_share_engine.vllm_config.cache_config
    assert cache.kv_cache_memory_bytes == 2 * STEP_TOKENS * PER_TOKEN
    scores = await default_share_engine.score("capital of France?", ["Paris", "bananas"], EncodeOptions())
    assert len(scores.scores) == 2
