"""Cohere's rerank API: ``/v2/rerank``, and ``/v1/rerank``, which Jina's clients call too.

Jina's API lives on the same path as Cohere v1 (``/v1/rerank``) with the same request, so that
route answers a superset both families accept: Cohere's ``id``, ``results`` and ``meta`` plus
Jina's ``model`` and ``usage``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from operator import attrgetter
from typing import Any, ClassVar, cast

import msgspec
from msgspec import UNSET, UnsetType

from rerankd.adapters.formats import EncodeOptions
from rerankd.proxy.dialects.base import Dialect, Reply
from rerankd.proxy.schemas import (
    ApiVersion,
    BilledUnits,
    CohereMeta,
    CohereResponse,
    Document,
    RerankRequest,
    Result,
    Tokens,
    document_text,
    result_document,
)
from rerankd.service import RerankOutcome, RerankQuery

__all__ = [
    "COHERE_V1",
    "COHERE_V2",
    "CohereV1",
    "CohereV1Response",
    "CohereV2",
    "cohere_meta",
    "rerank_query",
]


class JinaUsage(msgspec.Struct):
    """Jina's usage, with the search units LiteLLM's Jina provider reads from it."""

    total_tokens: int
    prompt_tokens: int
    search_units: int


class CohereV1Response(msgspec.Struct):
    id: str
    #: Jina's fields: a Jina client reads ``model`` and ``usage``, a Cohere one ignores them.
    model: str
    usage: JinaUsage
    results: list[Result]
    meta: CohereMeta


def document_texts(documents: list[Document], rank_fields: list[str] | None) -> list[str]:
    if all(map(isinstance, documents, repeat(str))):  # plain strings, the common case: used as they are
        return cast(list[str], documents)
    return [document_text(d, rank_fields, i) for i, d in enumerate(documents)]


def rerank_query(req: RerankRequest, *, max_chunks: int) -> RerankQuery:
    opts = EncodeOptions(
        instruction=req.instruction,
        max_tokens_per_doc=req.max_tokens_per_doc,
        max_chunks=req.max_chunks_per_doc or max_chunks,
    )
    return RerankQuery(
        req.query,
        document_texts(req.documents, req.rank_fields),
        model=req.model,
        top_n=req.top_n,
        options=opts,
        priority=req.priority or 0,
    )


_INDEX = attrgetter("index")
_SCORE = attrgetter("score")


def results(req: RerankRequest, outcome: RerankOutcome, *, return_documents: bool) -> list[Result]:
    show = return_documents if req.return_documents is None else req.return_documents
    if not show:  # one C-level pass, no Python step per document (the cached path's cost)
        ranked = outcome.results
        return list(map(Result, map(_INDEX, ranked), map(_SCORE, ranked)))
    out = []
    for r in outcome.results:
        document: dict[str, Any] | UnsetType = result_document(req.documents[r.index]) if show else UNSET
        out.append(Result(index=r.index, relevance_score=r.score, document=document))
    return out


def cohere_meta(version: str, outcome: RerankOutcome, reply: Reply) -> CohereMeta:
    return CohereMeta(
        api_version=ApiVersion(version),
        billed_units=BilledUnits(outcome.search_units),
        tokens=Tokens(outcome.input_tokens),
        cached_tokens=outcome.cached_tokens or UNSET,
        warnings=list(reply.warnings) or UNSET,
    )


class CohereV2(Dialect[RerankRequest]):
    name = "cohere-v2"
    paths = ("/v2/rerank",)
    summary = "Rerank (Cohere v2)"
    request_type = RerankRequest
    response_type = CohereResponse
    #: Cohere v2 truncates long documents (max_chunks 1) unless told otherwise.
    max_chunks: ClassVar[int] = 1

    def queries(self, req: RerankRequest) -> list[RerankQuery]:
        return [rerank_query(req, max_chunks=self.max_chunks)]

    def respond(self, req: RerankRequest, outcomes: Sequence[RerankOutcome], reply: Reply) -> CohereResponse:
        (outcome,) = outcomes
        return CohereResponse(
            id=reply.request_id,
            results=results(req, outcome, return_documents=False),
            meta=cohere_meta("2", outcome, reply),
        )


class CohereV1(Dialect[RerankRequest]):
    name = "cohere-v1"
    paths = ("/v1/rerank",)
    summary = "Rerank (Cohere v1; Jina)"
    request_type = RerankRequest
    response_type = CohereV1Response
    #: Cohere v1 splits long documents into up to 10 windows by default.
    max_chunks: ClassVar[int] = 10

    def queries(self, req: RerankRequest) -> list[RerankQuery]:
        return [rerank_query(req, max_chunks=self.max_chunks)]

    def respond(
        self, req: RerankRequest, outcomes: Sequence[RerankOutcome], reply: Reply
    ) -> CohereV1Response:
        (outcome,) = outcomes
        tokens = outcome.input_tokens
        return CohereV1Response(
            id=reply.request_id,
            model=outcome.model,
            usage=JinaUsage(total_tokens=tokens, prompt_tokens=tokens, search_units=outcome.search_units),
            # Cohere's default (no documents) wins over Jina's: Jina's clients read only index and
            # score, and those that want the documents ask for them.
            results=results(req, outcome, return_documents=False),
            meta=cohere_meta("1", outcome, reply),
        )


COHERE_V1 = CohereV1()
COHERE_V2 = CohereV2()
