"""Hugging Face Text Embeddings Inference (TEI): ``POST /rerank {query, texts, ...}`` answered with
a bare list ``[{index, score, text?}]``.

TEI shares ``/rerank`` with the Jina/vLLM body; the rerank dialect recognises a TEI body by its
``texts`` field and hands it here.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import UNSET, UnsetType

from rerankd.adapters.formats import EncodeOptions
from rerankd.service import RerankOutcome, RerankQuery

__all__ = ["TeiResult", "tei_query", "tei_results"]


class TeiResult(msgspec.Struct, omit_defaults=True):
    index: int
    score: float
    #: With ``return_text``.
    text: str | UnsetType = UNSET


def tei_query(
    query: str,
    texts: list[str],
    *,
    model: str | None,
    raw_scores: bool,
    truncation_direction: Literal["Left", "Right"] | None,
) -> RerankQuery:
    opts = EncodeOptions(
        raw=raw_scores, truncation_side="left" if truncation_direction == "Left" else "right"
    )
    return RerankQuery(query, texts, model=model, options=opts)


def tei_results(texts: list[str], outcome: RerankOutcome, *, return_text: bool) -> list[TeiResult]:
    return [
        TeiResult(index=r.index, score=r.score, text=texts[r.index] if return_text else UNSET)
        for r in outcome.results
    ]
