"""Choose and build the engine for a model from the settings."""

from __future__ import annotations

from rerankd.adapters.base import Engine
from rerankd.adapters.loader import ModelSource
from rerankd.config import Settings

__all__ = ["build_engine"]


def build_engine(source: ModelSource, settings: Settings) -> Engine:
    # Imported here: torch is heavy, and other engines must not pay for it.
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
    )
