"""Native sequence-classification rerankers on vLLM score exactly as on the torch engine."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from rerankd.adapters.formats import EncodeOptions
from rerankd.adapters.loader import ModelSource, resolve_model
from rerankd.adapters.torch_engine import TorchEngine
from rerankd.adapters.vllm_engine import VLLMEngine, VLLMOptions
from rerankd.config import ModelConfig
from tests.fixtures.tiny_cross_encoder import build as build_cross_encoder
from tests.ranking import assert_same_ranking

pytestmark = pytest.mark.asyncio(loop_scope="session")

QUERY = "What is the capital of France?"
DOCS = [
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "I like bananas.",
    "The quick brown fox jumps over the lazy dog. " * 12,  # truncated at max_length
]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> ModelSource:
    folder = build_cross_encoder(tmp_path_factory.mktemp("models") / "tiny-cross-encoder")
    return resolve_model(ModelConfig(name="tiny-ce", path=str(folder), max_length=64))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def vllm_engine(source: ModelSource, vllm_env: dict[str, str]) -> AsyncIterator[VLLMEngine]:
    engine = VLLMEngine(source, VLLMOptions(dtype="float32", enforce_eager=True))
    try:
        await engine.start()
        yield engine
    finally:
        await engine.close()


async def test_cross_encoder_scores_equal_the_torch_engine(
    vllm_engine: VLLMEngine, source: ModelSource
) -> None:
    assert source.format == "cross-encoder"
    torch_engine = TorchEngine(source, device="cpu", dtype="float32")
    await torch_engine.start()
    try:
        expected = await torch_engine.score(QUERY, DOCS, EncodeOptions())
    finally:
        await torch_engine.close()
    encoded = vllm_engine.format.encode(QUERY, DOCS, EncodeOptions())
    assert encoded.type_ids is not None
    assert any(1 in row for row in encoded.type_ids)
    result = await vllm_engine.score(QUERY, DOCS, EncodeOptions())
    assert result.scores == pytest.approx(expected.scores, abs=1e-4)
    assert_same_ranking(result.scores, expected.scores)
    assert max(expected.scores) - min(expected.scores) > 0.05
