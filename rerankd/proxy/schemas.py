"""Wire schemas of the three dialects (Cohere v1, Cohere v2, Jina/vLLM) and their adapters.

One request struct accepts the union of the dialects' fields, unknown fields ignored; the dialects
differ only in defaults and in the response shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import repeat
from operator import attrgetter
from typing import Annotated, Any, cast

import msgspec
from msgspec import UNSET, Meta, UnsetType

from rerankd.adapters.formats import EncodeOptions
from rerankd.errors import BadRequest
from rerankd.service import RerankOutcome, RerankQuery

__all__ = [
    "JINA",
    "V1",
    "V2",
    "ApiVersion",
    "BilledUnits",
    "CohereMeta",
    "CohereResponse",
    "Dialect",
    "JinaResponse",
    "RerankRequest",
    "Result",
    "Tokens",
    "Usage",
    "document_text",
]

Document = str | dict[str, Any]

_INDEX = attrgetter("index")
_SCORE = attrgetter("score")


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


class CohereResponse(msgspec.Struct):
    id: str
    results: list[Result]
    meta: CohereMeta


class Usage(msgspec.Struct):
    total_tokens: int


class JinaResponse(msgspec.Struct):
    id: str
    model: str
    usage: Usage
    results: list[Result]


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


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    return_documents: bool
    #: Windows per long document when the request sets no ``max_chunks_per_doc``.
    default_max_chunks: int
    api_version: str = ""

    def to_query(self, req: RerankRequest) -> RerankQuery:
        docs = req.documents
        texts: list[str]
        if all(map(isinstance, docs, repeat(str))):  # plain strings, the common case: used as they are
            texts = cast(list[str], docs)
        else:
            texts = [document_text(d, req.rank_fields, i) for i, d in enumerate(docs)]
        opts = EncodeOptions(
            instruction=req.instruction,
            max_tokens_per_doc=req.max_tokens_per_doc,
            max_chunks=req.max_chunks_per_doc or self.default_max_chunks,
        )
        return RerankQuery(
            req.query, texts, model=req.model, top_n=req.top_n, options=opts, priority=req.priority or 0
        )

    def results(self, req: RerankRequest, outcome: RerankOutcome) -> list[Result]:
        show = self.return_documents if req.return_documents is None else req.return_documents
        ranked = outcome.results
        if not show:
            return list(map(Result, map(_INDEX, ranked), map(_SCORE, ranked)))
        out = []
        for r in outcome.results:
            doc = req.documents[r.index]
            document: dict[str, Any] | UnsetType = UNSET
            if show:
                document = {"text": doc} if isinstance(doc, str) else doc
            out.append(Result(index=r.index, relevance_score=r.score, document=document))
        return out

    def cohere(self, req: RerankRequest, outcome: RerankOutcome, request_id: str) -> CohereResponse:
        meta = CohereMeta(
            api_version=ApiVersion(self.api_version),
            billed_units=BilledUnits(outcome.search_units),
            tokens=Tokens(outcome.input_tokens),
            cached_tokens=outcome.cached_tokens or UNSET,
        )
        return CohereResponse(id=request_id, results=self.results(req, outcome), meta=meta)

    def jina(self, req: RerankRequest, outcome: RerankOutcome, request_id: str) -> JinaResponse:
        return JinaResponse(
            id=request_id,
            model=outcome.model,
            usage=Usage(outcome.input_tokens),
            results=self.results(req, outcome),
        )


# Cohere v1 chunks long documents by default (max_chunks_per_doc=10); v2 and Jina truncate.
V1 = Dialect("v1", return_documents=False, default_max_chunks=10, api_version="1")
V2 = Dialect("v2", return_documents=False, default_max_chunks=1, api_version="2")
JINA = Dialect("jina", return_documents=True, default_max_chunks=1)
