"""Choose, check and build the engine for a model from the settings and the engine table
(:mod:`rerankd.adapters.registry`)."""

from __future__ import annotations

import importlib.util

import msgspec

from rerankd.adapters.base import Engine
from rerankd.adapters.devices import check_device, check_devices
from rerankd.adapters.loader import ModelSource, remote_model, resolve_model
from rerankd.adapters.registry import AUTO, engine_spec
from rerankd.config import ModelConfig, Settings

__all__ = ["build_engine", "check_device", "check_engine", "pick_engine", "resolve_source"]


def pick_engine(settings: Settings, source: ModelSource | None = None) -> str:
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


def check_engine(settings: Settings) -> None:
    """Called before the server binds: a missing engine or device fails here, with the
    bad-settings exit code and one line, instead of after the port opened."""
    spec = None if settings.engine == AUTO else engine_spec(settings.engine)
    if spec is not None:
        spec.check(settings)
    if spec is None or spec.local:
        check_device(settings.device)
        if settings.devices:
            check_devices(settings.devices)


def resolve_source(cfg: ModelConfig, settings: Settings) -> ModelSource:
    """Local engines need the model's files (a hub id is downloaded); the remote engine only its
    upstream name."""
    spec = None if settings.engine == AUTO else engine_spec(settings.engine)
    if spec is not None and not spec.local:
        return remote_model(cfg, settings.upstream_kind)
    check_engine(settings)
    if cfg.name in settings.model_formats:
        cfg = msgspec.structs.replace(cfg, format=settings.model_formats[cfg.name])
    source = resolve_model(cfg, settings.model_cache_dir)
    if spec is not None:
        spec.check_source(source)
    return source


def build_engine(source: ModelSource, settings: Settings) -> Engine:
    return engine_spec(pick_engine(settings, source)).build(source, settings)
