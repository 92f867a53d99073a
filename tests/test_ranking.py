"""The ranking assertions other tests rely on: they fail on a real swap, never on a tie."""

from __future__ import annotations

import pytest

from tests.ranking import assert_ranked_like, assert_same_ranking, assert_same_results


def test_a_swap_of_clearly_ordered_documents_fails() -> None:
    with pytest.raises(AssertionError, match="ranked after"):
        assert_same_ranking([0.2, 0.9, 0.5], [0.9, 0.2, 0.5])


def test_tied_reference_scores_may_come_in_any_order() -> None:
    ref = [0.8412755727767944] * 4
    assert_same_ranking([0.84127545, 0.84127551, 0.8412754, 0.84127549], ref)
    assert_ranked_like([3, 1, 0, 2], ref)


def test_ties_do_not_hide_a_swap_elsewhere() -> None:
    with pytest.raises(AssertionError):
        assert_ranked_like([0, 1, 2], [0.5, 0.5, 0.9])


def test_results_compare_scores_within_tolerance() -> None:
    want = [{"index": 1, "relevance_score": 0.7341537624597549}, {"index": 0, "relevance_score": 0.2}]
    got = [{"index": 1, "relevance_score": 0.7341537177562714}, {"index": 0, "relevance_score": 0.2}]
    assert_same_results(got, want)
    with pytest.raises(AssertionError, match="scores differ"):
        assert_same_results([{"index": 1, "relevance_score": 0.74}, got[1]], want)
    with pytest.raises(AssertionError, match="indexes differ"):
        assert_same_results([got[0], {"index": 2, "relevance_score": 0.2}], want)
    with pytest.raises(AssertionError, match="ranked after"):
        assert_same_results(list(reversed(got)), want)
