"""vLLM's score API: ``POST /score`` and ``/v1/score``.

Two inputs, each a string or a list: ``text_1``/``text_2`` (also named ``queries``/``documents``,
``queries``/``items`` or ``data_1``/``data_2``). One first input is scored against every second
one; two lists of one length are scored pairwise. Scores come back in input order, as
``{id, object, created, model, data[{index, object, score}], usage}``. A query longer than the
model's context is refused, as vLLM does, unless ``truncate_prompt_tokens`` is set.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from itertools import groupby
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from rerankd.adapters.formats import EncodeOptions
from rerankd.errors import BadRequest
from rerankd.proxy.dialects.base import Dialect, LongQuery, Reply
from rerankd.service import RerankOutcome, RerankQuery

__all__ = ["SCORE", "Score", "ScoreRequest", "ScoreResponse"]

Inputs = str | list[str]
#: The names vLLM accepts for the two inputs, in the order it tries them.
_PAIRS = (("text_1", "text_2"), ("queries", "documents"), ("queries", "items"), ("data_1", "data_2"))


class ScoreRequest(msgspec.Struct, kw_only=True):
    model: str | None = None
    text_1: Inputs | UnsetType = UNSET
    text_2: Inputs | UnsetType = UNSET
    queries: Inputs | UnsetType = UNSET
    documents: Inputs | UnsetType = UNSET
    items: Inputs | UnsetType = UNSET
    data_1: Inputs | UnsetType = UNSET
    data_2: Inputs | UnsetType = UNSET
    #: False returns raw scores (logits, cosines).
    use_activation: bool | None = None
    #: Set, an over-long query is cut instead of refused (the count itself is not applied).
    truncate_prompt_tokens: Annotated[int, Meta(ge=-1)] | None = None
    truncation_side: Literal["left", "right"] | None = None
    user: str | None = None

    def inputs(self) -> tuple[list[str], list[str]]:
        for first, second in _PAIRS:
            a, b = getattr(self, first), getattr(self, second)
            if a is not UNSET and b is not UNSET:
                return ([a] if isinstance(a, str) else a), ([b] if isinstance(b, str) else b)
        raise BadRequest("give the two inputs as text_1 and text_2 (or queries and documents)")


class ScoreData(msgspec.Struct):
    index: int
    score: float
    object: str = "score"


class ScoreUsage(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0


class ScoreResponse(msgspec.Struct):
    id: str
    created: int
    model: str
    data: list[ScoreData]
    usage: ScoreUsage
    object: str = "list"


def pairs(firsts: list[str], seconds: list[str]) -> list[tuple[str, str]]:
    """vLLM's pairing: one first input against all second ones, or two lists pairwise."""
    if not firsts or not seconds:
        raise BadRequest("the inputs must not be empty")
    if len(firsts) == 1:
        return [(firsts[0], s) for s in seconds]
    if len(firsts) != len(seconds):
        raise BadRequest(
            f"the first input has {len(firsts)} items and the second {len(seconds)}: "
            "give one first item, or as many as second items"
        )
    return list(zip(firsts, seconds, strict=True))


class Score(Dialect[ScoreRequest]):
    name = "score"
    paths = ("/score", "/v1/score")
    summary = "Score pairs (vLLM)"
    request_type = ScoreRequest
    response_type = ScoreResponse
    long_query = "reject"

    def queries(self, req: ScoreRequest) -> list[RerankQuery]:
        opts = EncodeOptions(raw=req.use_activation is False, truncation_side=req.truncation_side or "right")
        # Consecutive pairs of one query are one rerank query: the engine batches them together.
        return [
            RerankQuery(query, [d for _, d in group], model=req.model, options=opts)
            for query, group in groupby(pairs(*req.inputs()), key=lambda p: p[0])
        ]

    def long_query_rule(self, req: ScoreRequest) -> LongQuery:
        return "truncate" if req.truncate_prompt_tokens is not None else "reject"

    def respond(self, req: ScoreRequest, outcomes: Sequence[RerankOutcome], reply: Reply) -> ScoreResponse:
        data: list[ScoreData] = []
        for outcome in outcomes:
            start = len(data)
            # Outcomes are ranked: put each score back at its pair's position.
            scores = sorted(outcome.results, key=lambda r: r.index)
            data += [ScoreData(index=start + r.index, score=r.score) for r in scores]
        tokens = sum(o.input_tokens for o in outcomes)
        return ScoreResponse(
            id=reply.request_id,
            created=int(time.time()),
            model=outcomes[0].model,
            data=data,
            usage=ScoreUsage(prompt_tokens=tokens, total_tokens=tokens),
        )


SCORE = Score()
