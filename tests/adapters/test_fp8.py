"""FP8 projections (``--quantize fp8``): their numerics against full precision on the CPU (torch's
``_scaled_mm`` runs there too; the speed is the GPU's, docs/benchmarks.md), and the settings that
refuse it where it cannot run."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest
import torch

from rerankd.adapters.factory import check_engine, pick_engine
from rerankd.adapters.fp8 import FP8Linear, fp8_supported, quantize_linears
from rerankd.adapters.loader import embedded_model, resolve_model
from rerankd.adapters.registry import engine_spec
from rerankd.adapters.torch_engine import TorchEngine
from rerankd.config import Settings
from rerankd.errors import ConfigError
from tests.fixtures.qwen3_reference import _load

QUERY = "What is the capital of France?"
DOCS = [
    "Paris is the capital of France.",
    "Bananas are yellow fruit.",
    "The Eiffel Tower stands in Paris.",
    "no",
    "Berlin is the capital of Germany, and Paris the capital of France.",
    "A recipe for banana bread.",
    "France is a country in Europe.",
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_fp8_linear_is_close_to_its_linear(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(256, 512).to(dtype)
    x = torch.randn(4, 7, 256, generator=gen).to(dtype)
    x[0, 0, 3] = 40.0  # an outlier costs its own row's precision only (per-token scales)
    fp8 = FP8Linear(linear)
    assert fp8.weight.dtype == torch.float8_e4m3fn
    with torch.inference_mode():
        ref, out = linear(x).float(), fp8(x).float()
    assert out.dtype == torch.float32
    rel = ((out - ref).norm(dim=-1) / ref.norm(dim=-1)).flatten()
    # e4m3 keeps 3 mantissa bits: a few percent per row, and never exact.
    assert float(rel.max()) < 0.08
    assert float(rel.min()) > 0


def test_the_projections_are_replaced_and_the_heads_kept(tiny_qwen3_dir: Path) -> None:
    _, ref = _load(str(tiny_qwen3_dir))
    model = copy.deepcopy(ref)
    layers = model.config.num_hidden_layers
    assert quantize_linears(model) == 7 * layers  # q, k, v, o, gate, up, down
    assert isinstance(model.lm_head, torch.nn.Linear)
    assert not isinstance(model.lm_head, FP8Linear)
    assert quantize_linears(model) == 0  # nothing left to replace


def test_fp8_scores_of_a_trained_model_stay_near_full_precision() -> None:
    # The packaged MiniLM has trained weights (a random tiny model's logits say nothing about
    # fidelity): the query-document cosines of its mean-pooled embeddings, fp8 against fp32.
    from transformers import AutoModel, AutoTokenizer

    src = resolve_model(embedded_model())
    tok = AutoTokenizer.from_pretrained(src.path)
    ref = AutoModel.from_pretrained(src.path, dtype=torch.float32).eval()
    model = copy.deepcopy(ref)
    assert quantize_linears(model) > 0
    enc = tok([QUERY, *DOCS], padding=True, return_tensors="pt")

    def cosines(m: torch.nn.Module) -> list[float]:
        with torch.inference_mode():
            hidden = m(**enc).last_hidden_state
            weights = enc["attention_mask"].unsqueeze(-1).float()
            pooled = torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)
        return (pooled[1:] @ pooled[0]).tolist()

    full, fp8 = cosines(ref), cosines(model)
    worst = max(abs(a - b) for a, b in zip(full, fp8, strict=True))
    print(f"fp8 vs fp32 (MiniLM): max cosine deviation {worst:.5f}")
    assert 0 < worst < 0.02
    # Documents whose full-precision scores are clearly apart keep their order.
    for i, j in itertools.permutations(range(len(DOCS)), 2):
        if full[i] > full[j] + 0.05:
            assert fp8[i] > fp8[j], (DOCS[i], DOCS[j])


def test_fp8_needs_a_cuda_gpu() -> None:
    assert fp8_supported(torch.device("cpu")) is not None
    # Before the server binds (exit 2, one line), for the CPU named or found.
    with pytest.raises(ConfigError, match="CUDA GPU"):
        check_engine(Settings(quantize="fp8", device="cpu"))
    with pytest.raises(ConfigError, match="CUDA"):
        TorchEngine(resolve_model(embedded_model()), device="cpu", quantize="fp8")
    with pytest.raises(ConfigError, match="onnx engine"):
        TorchEngine(resolve_model(embedded_model()), device="cpu", quantize="int8")


def test_fp8_is_the_torch_engines() -> None:
    assert pick_engine(Settings(quantize="fp8")) == "torch"
    for name in ("onnx", "vllm", "vllm-sync"):
        with pytest.raises(ConfigError, match="--engine torch"):
            engine_spec(name).check(Settings(engine=name, quantize="fp8"))
    with pytest.raises(ConfigError, match="--engine onnx"):
        engine_spec("torch").check(Settings(engine="torch", quantize="int8"))
