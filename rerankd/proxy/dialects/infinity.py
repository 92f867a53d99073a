"""Infinity's rerank API under the prefix ``/infinity`` (``POST /infinity/rerank``).

Infinity answers each ``document`` as a plain string, where vLLM's schema (on ``/rerank``) needs
an object: the clients of the two cannot share one path, so Infinity's clients (its own
``infinity_client``, LiteLLM's ``infinity/`` provider) take ``/infinity`` as their base URL.
Documents are returned only when asked for, as Infinity does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from rerankd.adapters.formats import EncodeOptions
from rerankd.proxy.dialects.base import Dialect, Reply
from rerankd.proxy.schemas import Usage
from rerankd.service import RerankOutcome, RerankQuery

__all__ = ["INFINITY", "Infinity", "InfinityRequest", "InfinityResponse"]


class InfinityRequest(msgspec.Struct, kw_only=True):
    query: str
    documents: list[str]
    return_documents: bool = False
    #: True: raw scores (logits, cosines) instead of 0..1 relevance.
    raw_scores: bool = False
    model: str | None = None
    top_n: Annotated[int, Meta(ge=0)] | None = None


class InfinityResult(msgspec.Struct, omit_defaults=True):
    relevance_score: float
    index: int
    document: str | UnsetType = UNSET


class InfinityResponse(msgspec.Struct):
    results: list[InfinityResult]
    model: str
    usage: Usage
    id: str
    created: int
    object: Literal["rerank"] = "rerank"


class Infinity(Dialect[InfinityRequest]):
    name = "infinity"
    paths = ("/infinity/rerank",)
    summary = "Rerank (Infinity)"
    request_type = InfinityRequest
    response_type = InfinityResponse

    def queries(self, req: InfinityRequest) -> list[RerankQuery]:
        # Infinity's clients send the placeholder "default/not-specified" when no model is named.
        model = None if req.model == "default/not-specified" else req.model
        opts = EncodeOptions(raw=req.raw_scores)
        return [RerankQuery(req.query, req.documents, model=model, top_n=req.top_n, options=opts)]

    def respond(
        self, req: InfinityRequest, outcomes: Sequence[RerankOutcome], reply: Reply
    ) -> InfinityResponse:
        (outcome,) = outcomes
        tokens = outcome.input_tokens
        return InfinityResponse(
            results=[
                InfinityResult(
                    relevance_score=r.score,
                    index=r.index,
                    document=req.documents[r.index] if req.return_documents else UNSET,
                )
                for r in outcome.results
            ],
            model=outcome.model,
            usage=Usage(total_tokens=tokens, prompt_tokens=tokens),
            id=reply.request_id,
            created=int(time.time()),
        )


INFINITY = Infinity()
