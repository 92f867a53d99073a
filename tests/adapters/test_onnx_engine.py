"""The ONNX Runtime engine against the torch engine: same inputs, same scores (fp32 within 1e-4);
int8 keeps the ranking of a fixed set; exports are cached on disk and written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rerankd.adapters.base import BatchedEngine
from rerankd.adapters.factory import resolve_source
from rerankd.adapters.formats import EncodeOptions
from rerankd.adapters.loader import ModelSource, embedded_model, resolve_model
from rerankd.adapters.onnx_engine import OnnxEngine, export_path
from rerankd.adapters.torch_engine import TorchEngine
from rerankd.config import ModelConfig, Settings
from rerankd.errors import ConfigError
from tests.fixtures.tiny_cross_encoder import build as build_cross_encoder
from tests.ranking import assert_same_ranking

QUERY = "What is the capital of France?"
#: A fixed set with clear gaps between relevant and irrelevant documents, and short and long rows
#: in one batch (padding must not change a score).
DOCS = [
    "Paris is the capital and largest city of France.",
    "Berlin is the capital of Germany.",
    "I like bananas.",
    "France is a country in Western Europe; its capital, Paris, lies on the Seine.",
    "The Eiffel Tower stands in Paris. " * 12,
    "Madrid is the capital of Spain, and Lisbon that of Portugal.",
    "Quarterly earnings rose by four percent.",
    "A recipe for bread: flour, water, salt and yeast.",
]
FP32_TOL = 1e-4


@pytest.fixture(scope="module")
def minilm() -> ModelSource:
    return resolve_model(embedded_model())


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> ModelSource:
    path = build_cross_encoder(tmp_path_factory.mktemp("models") / "tiny-cross")
    return resolve_model(ModelConfig(name="tiny-cross", path=str(path)))


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


async def scores(engine: BatchedEngine, *, raw: bool = False) -> list[float]:
    await engine.start()
    try:
        return (await engine.score(QUERY, DOCS, EncodeOptions(raw=raw))).scores
    finally:
        await engine.close()


@pytest.mark.parametrize("model", ["minilm", "cross_encoder"])
async def test_fp32_matches_the_torch_engine(
    model: str, onnx_dir: Path, request: pytest.FixtureRequest
) -> None:
    source: ModelSource = request.getfixturevalue(model)
    want = await scores(TorchEngine(source, device="cpu", dtype="float32"), raw=True)
    got = await scores(OnnxEngine(source, cache_dir=onnx_dir), raw=True)
    worst = max(abs(a - b) for a, b in zip(got, want, strict=True))
    assert worst <= FP32_TOL, f"raw outputs differ by up to {worst}"
    assert_same_ranking(got, want)


async def test_int8_keeps_the_ranking(minilm: ModelSource, onnx_dir: Path) -> None:
    want = await scores(TorchEngine(minilm, device="cpu", dtype="float32"))
    engine = OnnxEngine(minilm, cache_dir=onnx_dir, quantize="int8")
    got = await scores(engine)
    assert engine.cache_tag == "onnx:int8"
    worst = max(abs(a - b) for a, b in zip(got, want, strict=True))
    print(f"int8 vs torch fp32: max score deviation {worst:.5f}")
    assert worst < 0.05
    # The fixed set's gaps are far wider than int8's error: the order must be the reference's.
    assert_same_ranking(got, want, tie=2 * worst)
    assert sorted(range(len(got)), key=lambda i: -got[i])[:2] == [0, 3]


async def test_exports_are_cached_by_fingerprint(minilm: ModelSource, tmp_path: Path) -> None:
    engine = OnnxEngine(minilm, cache_dir=tmp_path)
    first = await scores(engine)
    path = export_path(minilm, tmp_path, "none")
    assert engine.model_path == path
    assert path.exists()
    assert os.listdir(tmp_path) == [path.name]  # no temporary file left behind
    stamp = path.stat().st_mtime_ns
    again = OnnxEngine(minilm, cache_dir=tmp_path)
    assert await scores(again) == first
    assert path.stat().st_mtime_ns == stamp  # loaded, not exported again
    assert export_path(minilm, tmp_path, "int8") != path


def test_llm_format_is_refused_at_start_up(tiny_qwen3_dir: Path) -> None:
    settings = Settings(engine="onnx", models=(ModelConfig(name="q", path=str(tiny_qwen3_dir)),))
    with pytest.raises(ConfigError, match="onnx engine runs cross-encoders and bi-encoders"):
        resolve_source(settings.models[0], settings)
