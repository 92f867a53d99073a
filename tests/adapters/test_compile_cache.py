"""The compile cache's keying and persistence (the GPU run measures the warm start itself)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from rerankd.adapters.compile_cache import CompileCache, default_cache_dir


def _cache(base: Path, **changes: object) -> CompileCache:
    args: dict[str, object] = {
        "fingerprint": "abc",
        "device": torch.device("cpu"),
        "dtype": torch.float32,
        "shapes": "batch<=1024x256",
    }
    args.update(changes)
    return CompileCache.for_engine(base, **args)  # type: ignore[arg-type]


def test_one_folder_per_setting_that_changes_compiled_code(tmp_path: Path) -> None:
    same = _cache(tmp_path)
    assert same.folder == _cache(tmp_path).folder
    assert same.folder.parent == tmp_path
    others = [
        _cache(tmp_path, fingerprint="abd"),
        _cache(tmp_path, dtype=torch.bfloat16),
        _cache(tmp_path, device=torch.device("meta")),
        _cache(tmp_path, shapes="batch<=2048x256"),
    ]
    assert len({c.folder for c in [same, *others]}) == 5
    assert torch.__version__ in same.described


def test_first_start_compiles_and_a_bad_file_never_fails_a_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # activate() sets it for this process: let the test restore it.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "before"))
    cache = _cache(tmp_path)
    assert "nothing saved yet" in cache.activate()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache.folder / "inductor")
    (cache.folder / "artifacts.bin").write_bytes(b"not a cache")
    assert "nothing reusable" in cache.activate()


def test_default_folder_is_beside_the_model(tmp_path: Path) -> None:
    model = tmp_path / "models" / "qwen3"
    model.mkdir(parents=True)
    assert default_cache_dir(model) == tmp_path / "models" / "compile-cache"
