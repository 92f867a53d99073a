"""Wire structs the dialects share (Cohere's request and meta, results, usage) and how a
document becomes the text a model sees. Each dialect's own structs live in its module under
``rerankd/proxy/dialects/``."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

from rerankd.errors import BadRequest

__all__ = [
    "ApiVersion",
    "BilledUnits",
    "CohereMeta",
    "CohereResponse",
    "Document",
    "RerankRequest",
    "Result",
    "Tokens",
    "Usage",
    "document_text",
    "result_document",
]

Document = str | dict[str, Any]


class RerankRequest(msgspec.Struct, kw_only=True):
    query: str
    documents: list[Document]
    model: str | None = None
    #: Results to return; larger than the number of documents is clamped; 0 means all.
    top_n: Annotated[int, Meta(ge=0)] | None = None
    #: Object fields to rank on, rendered as ``field: value`` lines in this order.
    rank_fields: list[str] | None = None
    return_documents: bool | None = None
    max_chunks_per_doc: Annotated[int, Meta(ge=1)] | None = None
    max_tokens_per_doc: Annotated[int, Meta(ge=1)] | None = None
    #: Task instruction for instruction-aware models (Qwen3-Reranker).
    instruction: str | None = None
    priority: Annotated[int, Meta(ge=0, le=999)] | None = None


class Result(msgspec.Struct, omit_defaults=True):
    index: int
    relevance_score: float
    #: Present only when ``return_documents`` is true; several clients reject ``null``.
    document: dict[str, Any] | UnsetType = UNSET


class ApiVersion(msgspec.Struct):
    version: str


class BilledUnits(msgspec.Struct):
    search_units: int


class Tokens(msgspec.Struct):
    input_tokens: int


class CohereMeta(msgspec.Struct, omit_defaults=True):
    api_version: ApiVersion
    billed_units: BilledUnits
    tokens: Tokens
    #: Cohere's own field: input tokens of pairs served from the cache; absent when none were.
    cached_tokens: int | UnsetType = UNSET
    #: Cohere's own field: what the server did differently from what was asked; absent when nothing.
    warnings: list[str] | UnsetType = UNSET


class CohereResponse(msgspec.Struct):
    id: str
    results: list[Result]
    meta: CohereMeta


class Usage(msgspec.Struct):
    """Jina's ``total_tokens`` and vLLM's ``prompt_tokens`` (the same number: reranking generates
    nothing)."""

    total_tokens: int
    prompt_tokens: int


def result_document(doc: Document) -> dict[str, Any]:
    """A result's ``document``: ``{"text": ...}`` for a string, the object as sent for an object."""
    return {"text": doc} if isinstance(doc, str) else doc


def _render_value(value: Any) -> str:
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()


def document_text(doc: Document, rank_fields: list[str] | None, index: int) -> str:
    """The text a model sees for one document."""
    if isinstance(doc, str):
        return doc
    if rank_fields:
        missing = [f for f in rank_fields if f not in doc]
        if missing:
            raise BadRequest(f"documents[{index}] has no field {missing[0]!r} named in rank_fields")
        return "\n".join(f"{f}: {_render_value(doc[f])}" for f in rank_fields)
    if "text" in doc:
        return _render_value(doc["text"])
    return "\n".join(f"{k}: {_render_value(v)}" for k, v in doc.items())
