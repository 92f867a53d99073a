"""rerankd's Qwen3-Reranker scores equal the model card's transformers code, truncation included."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from rerankd.adapters.formats import EncodeOptions
from rerankd.adapters.loader import resolve_model
from rerankd.adapters.torch_engine import TorchEngine
from rerankd.config import ModelConfig
from tests.fixtures.qwen3_reference import INSTRUCTION as CARD_INSTRUCTION
from tests.fixtures.qwen3_reference import PREFIX as CARD_PREFIX
from tests.fixtures.qwen3_reference import SUFFIX as CARD_SUFFIX
from tests.fixtures.qwen3_reference import model_card_scores
from tests.ranking import assert_same_ranking

MAX_LENGTH = 120  # small, so that long documents (and one long query) are truncated
QUERIES = ["What is the capital of France?", "yes or no", "bananas " * 40]
DOCS = [
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "Bananas are yellow fruit.",
    "The quick brown fox jumps over the lazy dog.",
    "0123456789 numbers (brackets) [more]",
    "yes",
    "",
    "Photosynthesis makes sugar from light. " * 30,  # truncated
    "no no no " * 50,  # truncated
]


def card_scores(path: Path, query: str, docs: list[str], instruction: str, max_length: int) -> list[float]:
    return model_card_scores(path, query, docs, max_length=max_length, instruction=instruction)


async def engine_scores(
    path: Path, query: str, docs: list[str], opts: EncodeOptions, *, shared_prefix: bool = False
) -> tuple[list[float], Any]:
    source = resolve_model(ModelConfig(name="tiny", path=str(path), max_length=MAX_LENGTH))
    assert source.format == "llm-yes-no"
    # A small batch budget forces several batches that mix lengths: padding must not leak into scores.
    engine = TorchEngine(
        source, device="cpu", dtype="float32", max_batch_tokens=400, shared_prefix=shared_prefix
    )
    await engine.start()
    try:
        result = await engine.score(query, docs, opts)
        encoded = await engine.encode(query, docs, opts)
        # The switch is what it says: the shared pass ran, or never ran.
        assert (engine.stats().get("prefix_batches", 0) > 0) == shared_prefix
        return result.scores, encoded
    finally:
        await engine.close()


@pytest.mark.parametrize("shared_prefix", [False, True], ids=["full-rows", "shared-prefix"])
@pytest.mark.parametrize("query", QUERIES)
def test_scores_match_model_card(tiny_qwen3_dir: Path, query: str, shared_prefix: bool) -> None:
    ours, encoded = asyncio.run(
        engine_scores(tiny_qwen3_dir, query, DOCS, EncodeOptions(), shared_prefix=shared_prefix)
    )
    ref = card_scores(tiny_qwen3_dir, query, DOCS, CARD_INSTRUCTION, MAX_LENGTH)
    assert len(ours) == len(DOCS)
    assert max(abs(a - b) for a, b in zip(ours, ref, strict=True)) < 1e-4
    # The long query truncates every document away: its reference scores are all tied.
    assert_same_ranking(ours, ref)
    assert max(map(len, encoded.ids)) == MAX_LENGTH  # truncation happened


def test_fixture_model_discriminates(tiny_qwen3_dir: Path) -> None:
    """Guards the comparison above: scores spread, and a one-character prompt change moves them."""
    ref = card_scores(tiny_qwen3_dir, QUERIES[0], DOCS, CARD_INSTRUCTION, MAX_LENGTH)
    assert max(ref) - min(ref) > 0.05
    other = card_scores(tiny_qwen3_dir, QUERIES[0], DOCS, CARD_INSTRUCTION + ".", MAX_LENGTH)
    assert max(abs(a - b) for a, b in zip(ref, other, strict=True)) > 1e-3


@pytest.mark.parametrize("shared_prefix", [False, True], ids=["full-rows", "shared-prefix"])
def test_instruction_is_used(tiny_qwen3_dir: Path, shared_prefix: bool) -> None:
    instruction = "Find documents about fruit"
    ours, _ = asyncio.run(
        engine_scores(
            tiny_qwen3_dir,
            QUERIES[0],
            DOCS,
            EncodeOptions(instruction=instruction),
            shared_prefix=shared_prefix,
        )
    )
    ref = card_scores(tiny_qwen3_dir, QUERIES[0], DOCS, instruction, MAX_LENGTH)
    assert max(abs(a - b) for a, b in zip(ours, ref, strict=True)) < 1e-4


def test_suffix_survives_truncation(tiny_qwen3_dir: Path) -> None:
    _, encoded = asyncio.run(engine_scores(tiny_qwen3_dir, QUERIES[2], DOCS, EncodeOptions()))
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen3_dir)
    suffix = tokenizer.encode(CARD_SUFFIX, add_special_tokens=False)
    prefix = tokenizer.encode(CARD_PREFIX, add_special_tokens=False)
    for ids in encoded.ids:
        assert ids[-len(suffix) :] == suffix
        assert ids[: len(prefix)] == prefix
