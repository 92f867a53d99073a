"""The API dialects rerankd speaks, one module each; routes are built from :data:`DIALECTS`."""

from __future__ import annotations

from typing import Any

from rerankd.proxy.dialects.base import Dialect, Reply, UnknownFields
from rerankd.proxy.dialects.cohere import COHERE_V1, COHERE_V2
from rerankd.proxy.dialects.infinity import INFINITY
from rerankd.proxy.dialects.rerank import RERANK
from rerankd.proxy.dialects.score import SCORE

__all__ = ["DIALECTS", "Dialect", "Reply", "UnknownFields"]

DIALECTS: tuple[Dialect[Any], ...] = (COHERE_V1, COHERE_V2, RERANK, INFINITY, SCORE)
