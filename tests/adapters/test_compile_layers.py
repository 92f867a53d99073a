"""``--compile`` compiles the stack of layers as one graph (the default scope): found in each model
family, equal to the model card's scores, and nothing left to compile once the engine is ready."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import AutoModel, AutoModelForCausalLM

from rerankd.adapters.formats import EncodeOptions
from rerankd.adapters.loader import embedded_model, resolve_model
from rerankd.adapters.torch_engine import TorchEngine, repeated_blocks
from rerankd.config import ModelConfig
from tests.fixtures.qwen3_reference import model_card_scores

QUERY = "What is the capital of France?"
DOCS = ["Paris is the capital of France.", "Bananas are yellow fruit.", "no", "The quick brown fox jumps."]


def test_the_layer_stack_of_each_family_is_found(tiny_qwen3_dir: Path) -> None:
    llm = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir)
    assert repeated_blocks(llm) == list(llm.model.layers)
    bert = AutoModel.from_pretrained(resolve_model(embedded_model()).path)
    assert repeated_blocks(bert) == list(bert.encoder.layer)
    assert repeated_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2))) == []


@pytest.mark.parametrize("scope", ["layers", "model"])
def test_compiled_scores_equal_the_model_card_and_nothing_compiles_after_start(
    tiny_qwen3_dir: Path, tmp_path: Path, scope: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="rerankd.adapters.torch_engine")

    async def run() -> tuple[list[list[float]], int, int, TorchEngine]:
        source = resolve_model(ModelConfig(name="tiny", path=str(tiny_qwen3_dir), max_length=120))
        engine = TorchEngine(
            source,
            device="cpu",
            dtype="float32",
            compile=True,
            compile_scope=scope,
            compile_cache_dir=str(tmp_path),
        )
        before = counters["stats"]["unique_graphs"]
        await engine.start()
        try:
            ready = counters["stats"]["unique_graphs"]
            # One document (a row alone), a request's pairs (shared prefix), other sizes and lengths.
            scores = [(await engine.score(QUERY, DOCS[:k], EncodeOptions())).scores for k in (1, 4, 3, 2)]
            scores.append((await engine.score("fruit " * 9, DOCS, EncodeOptions())).scores)
            return scores, ready - before, counters["stats"]["unique_graphs"] - ready, engine
        finally:
            await engine.close()

    scores, at_start, after_start, engine = asyncio.run(run())
    assert after_start == 0  # a compile while serving stalls every request behind it
    # One graph per path (a row alone, full rows, packed rows), not one per layer: two layers here.
    assert 1 <= at_start <= 3
    assert engine.compile_scope == scope
    layered = "compiling 2 repeated Qwen3DecoderLayer layers as one graph" in caplog.text
    assert layered == (scope == "layers")
    for k, got in zip((1, 4, 3, 2), scores, strict=False):
        ref = model_card_scores(tiny_qwen3_dir, QUERY, DOCS[:k], max_length=120)
        assert max(abs(a - b) for a, b in zip(got, ref, strict=True)) < 1e-4
    ref = model_card_scores(tiny_qwen3_dir, "fruit " * 9, DOCS, max_length=120)
    assert max(abs(a - b) for a, b in zip(scores[-1], ref, strict=True)) < 1e-4
