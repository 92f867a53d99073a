"""Choose, check and build the engine for a model from the settings and the engine table
(:mod:`rerankd.adapters.registry`)."""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import sys

import msgspec

from rerankd.adapters.base import Engine
from rerankd.adapters.devices import check_device, check_devices
from rerankd.adapters.loader import ModelSource, remote_model, resolve_model
from rerankd.adapters.registry import AUTO, engine_spec
from rerankd.config import ModelConfig, Settings
from rerankd.errors import ConfigError

__all__ = ["build_engine", "check_device", "check_engine", "pick_engine", "resolve_source"]


def pick_engine(settings: Settings, source: ModelSource | None = None) -> str:
    """``auto``: vLLM where it is installed and a CUDA device is there; on the CPU, ONNX Runtime for
    the encoder formats it runs (measured 2.6x the torch engine, docs/benchmarks.md); torch otherwise."""
    if settings.engine != "auto":
        return settings.engine
    if settings.devices or settings.quantize == "fp8":
        # Replicas per device and FP8 projections are the torch engine's (vLLM has its own
        # parallelism).
        return "torch"
    if settings.device != "cpu" and importlib.util.find_spec("vllm") is not None:
        import torch

        if torch.cuda.is_available():
            return "vllm"
    if _on_cpu(settings) and source is not None and _onnx_fits(source, settings):
        return "onnx"
    return "torch"


def _on_cpu(settings: Settings) -> bool:
    """Whether the model runs on the CPU: named, or ``auto`` on a host without a GPU."""
    return settings.device == "cpu" or (
        settings.device == "auto" and not settings.devices and not _accelerator()
    )


def _accelerator() -> bool:
    """Whether ``device auto`` will find a GPU. Without NVIDIA device nodes (and off macOS) the
    answer is no without importing torch, which the onnx engine's warm starts never need."""
    if sys.platform == "darwin":
        return True  # MPS: torch decides
    if not (os.path.exists("/dev/nvidiactl") or glob.glob("/dev/nvidia[0-9]*")):
        return False
    import torch

    return bool(torch.cuda.is_available())


def _onnx_fits(source: ModelSource, settings: Settings) -> bool:
    """Options only the torch engine has (compile, half precision) keep it; so does a missing
    onnxruntime."""
    onnx = engine_spec("onnx")
    return (
        onnx.runs(source.format)
        and onnx.installed
        and not settings.compile
        and settings.dtype in ("auto", "float32")
        and settings.quantize in ("none", *onnx.quantize)
    )


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
    on_cpu = _on_cpu(settings)
    if settings.quantize == "fp8" and on_cpu:
        # The GPU's compute capability is checked when the engine is built (it needs torch).
        raise ConfigError(
            "quantize fp8 needs a CUDA GPU of compute capability 8.9 or later; device is the CPU"
        )
    if settings.compile and on_cpu and settings.engine in (AUTO, "torch"):
        # torch.compile's CPU code is C++ that inductor builds at the first forward pass: without
        # a compiler the warm-up would fail after the port opened.
        cxx = os.environ.get("CXX") or "g++"
        if shutil.which(cxx) is None:
            raise ConfigError(
                f"compile on the CPU needs a C++ compiler ({cxx}, or set CXX) for torch inductor; "
                "install one (apt-get install g++) or serve without --compile"
            )


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
