"""Assertions on scores and rankings that hold whatever the batch shape.

Floating point is not batch-size invariant: one pair scored in a batch of 2 and in a batch of 8 may
differ in the last bits. Scores are compared within a tolerance, and rankings only where the
reference separates two documents by more than float noise: the order of ties is not a property.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["TIE", "assert_ranked_like", "assert_same_ranking", "assert_same_results", "ranked_scores"]

#: Reference scores closer than this are a tie: their relative order is not checked.
TIE = 1e-5


def assert_ranked_like(order: Sequence[int], reference: Sequence[float], *, tie: float = TIE) -> None:
    """``order`` (document indexes, best first) never puts a document before one that the
    reference scores higher by more than ``tie``."""
    assert sorted(order) == sorted(set(order)), f"repeated indexes in {list(order)}"
    for pos, earlier in enumerate(order):
        for later in order[pos + 1 :]:
            assert reference[later] <= reference[earlier] + tie, (
                f"document {later} (reference {reference[later]!r}) is ranked after "
                f"document {earlier} (reference {reference[earlier]!r}) in {list(order)}"
            )


def assert_same_ranking(scores: Sequence[float], reference: Sequence[float], *, tie: float = TIE) -> None:
    """Ranking by ``scores`` agrees with ranking by ``reference`` wherever the reference has no tie."""
    assert len(scores) == len(reference)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    assert_ranked_like(order, reference, tie=tie)


def ranked_scores(results: Sequence[Mapping[str, Any]]) -> dict[int, float]:
    """``{index: relevance_score}`` of an API answer's results."""
    return {int(r["index"]): float(r["relevance_score"]) for r in results}


def assert_same_results(
    got: Sequence[Mapping[str, Any]], want: Sequence[Mapping[str, Any]], *, abs_tol: float = 1e-6
) -> None:
    """Two API answers rank the same documents, with the same scores within ``abs_tol``, in an
    order that agrees wherever the scores are not tied."""
    a, b = ranked_scores(got), ranked_scores(want)
    assert a.keys() == b.keys(), f"indexes differ: {sorted(a)} vs {sorted(b)}"
    worst = max((abs(a[i] - b[i]) for i in a), default=0.0)
    assert worst <= abs_tol, f"scores differ by up to {worst}"
    assert_ranked_like([int(r["index"]) for r in got], [b.get(i, 0.0) for i in range(max(b) + 1)])
