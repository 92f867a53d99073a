"""``POST /rerank``: vLLM's and Jina's body, or TEI's (recognised by ``texts``).

The Jina/vLLM body is answered as vLLM answers it: ``{id, model, usage, results}`` with each
result's ``document`` as ``{"text": ...}`` (vLLM's schema requires it; Jina's clients accept it),
documents returned unless ``return_documents`` is false. Like vLLM, a query longer than the
model's context is refused unless ``truncate_prompt_tokens`` is set. ``use_activation: false``
(vLLM) or ``raw_scores: true`` (Infinity, TEI) returns raw scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from rerankd.adapters.formats import EncodeOptions
from rerankd.errors import BadRequest
from rerankd.proxy.dialects.base import Dialect, LongQuery, Reply
from rerankd.proxy.dialects.cohere import document_texts, results
from rerankd.proxy.dialects.tei import TeiResult, tei_query, tei_results
from rerankd.proxy.schemas import Document, RerankRequest, Result, Usage
from rerankd.service import RerankOutcome, RerankQuery

__all__ = ["RERANK", "RerankBody", "RerankResponse", "VllmRerank"]


class RerankBody(msgspec.Struct, kw_only=True):
    query: str
    #: Jina / vLLM / Infinity documents; TEI sends ``texts`` instead.
    documents: list[Document] | UnsetType = UNSET
    model: str | None = None
    #: Results to return; larger than the number of documents is clamped; 0 means all.
    top_n: Annotated[int, Meta(ge=0)] | None = None
    rank_fields: list[str] | None = None
    return_documents: bool | None = None
    max_chunks_per_doc: Annotated[int, Meta(ge=1)] | None = None
    max_tokens_per_doc: Annotated[int, Meta(ge=1)] | None = None
    instruction: str | None = None
    priority: Annotated[int, Meta(ge=0, le=999)] | None = None
    #: vLLM: false returns raw scores (logits, cosines).
    use_activation: bool | None = None
    #: vLLM: set, an over-long query is cut instead of refused (the count itself is not applied).
    truncate_prompt_tokens: Annotated[int, Meta(ge=-1)] | None = None
    truncation_side: Literal["left", "right"] | None = None
    #: Infinity and TEI: true returns raw scores.
    raw_scores: bool | None = None
    #: TEI: the texts to rank.
    texts: list[str] | UnsetType = UNSET
    #: TEI: include each text in its result.
    return_text: bool | None = None
    #: TEI: false (its default) refuses a query longer than the context; true cuts it.
    truncate: bool | None = None
    truncation_direction: Literal["Left", "Right"] | None = None


class RerankResponse(msgspec.Struct):
    id: str
    model: str
    usage: Usage
    results: list[Result]


def _as_cohere(req: RerankBody, documents: list[Document]) -> RerankRequest:
    return RerankRequest(
        query=req.query,
        documents=documents,
        model=req.model,
        top_n=req.top_n,
        rank_fields=req.rank_fields,
        return_documents=req.return_documents,
    )


class VllmRerank(Dialect[RerankBody]):
    name = "rerank"
    paths = ("/rerank",)
    summary = "Rerank (vLLM / Jina; TEI with texts)"
    request_type = RerankBody
    response_type = RerankResponse | list[TeiResult]
    long_query = "reject"

    def queries(self, req: RerankBody) -> list[RerankQuery]:
        if isinstance(req.texts, list):
            if isinstance(req.documents, list):
                raise BadRequest("give documents (Jina/vLLM) or texts (TEI), not both")
            raw = bool(req.raw_scores)
            return [
                tei_query(
                    req.query,
                    req.texts,
                    model=req.model,
                    raw_scores=raw,
                    truncation_direction=req.truncation_direction,
                )
            ]
        if not isinstance(req.documents, list):
            raise BadRequest("missing required field 'documents' (or 'texts' for the TEI shape)")
        texts = document_texts(req.documents, req.rank_fields)
        opts = EncodeOptions(
            instruction=req.instruction,
            max_tokens_per_doc=req.max_tokens_per_doc,
            max_chunks=req.max_chunks_per_doc or 1,
            raw=req.use_activation is False or bool(req.raw_scores),
            truncation_side=req.truncation_side or "right",
        )
        query = RerankQuery(
            req.query, texts, model=req.model, top_n=req.top_n, options=opts, priority=req.priority or 0
        )
        return [query]

    def long_query_rule(self, req: RerankBody) -> LongQuery:
        if isinstance(req.texts, list):
            return "truncate" if req.truncate else "reject"
        return "truncate" if req.truncate_prompt_tokens is not None else "reject"

    def respond(
        self, req: RerankBody, outcomes: Sequence[RerankOutcome], reply: Reply
    ) -> RerankResponse | list[TeiResult]:
        (outcome,) = outcomes
        if isinstance(req.texts, list):
            return tei_results(req.texts, outcome, return_text=bool(req.return_text))
        assert isinstance(req.documents, list)
        tokens = outcome.input_tokens
        return RerankResponse(
            id=reply.request_id,
            model=outcome.model,
            usage=Usage(total_tokens=tokens, prompt_tokens=tokens),
            results=results(_as_cohere(req, req.documents), outcome, return_documents=True),
        )


RERANK = VllmRerank()
