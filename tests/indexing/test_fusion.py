"""Tests for indexing.fusion: reciprocal rank fusion's properties, checked on generated rankings."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexing.fusion import RRF_K, Ranking, rrf


def ranking(ids: list[int]) -> Ranking:
    scores = np.linspace(1.0, 0.0, num=len(ids), dtype=np.float32) if ids else np.zeros(0)
    return Ranking(np.array(ids, dtype=np.int64), scores.astype(np.float32))


unique_ids = st.lists(st.integers(0, 60), unique=True, max_size=30)


@settings(max_examples=200, deadline=None)
@given(unique_ids, unique_ids)
def test_output_is_every_input_id_once_scores_descending(a: list[int], b: list[int]) -> None:
    fused = rrf([ranking(a), ranking(b)], (1.0, 1.0))
    assert sorted(fused.ids.tolist()) == sorted(set(a) | set(b))
    assert (np.diff(fused.scores) <= 0).all()
    # Equal scores are ordered by id.
    for i in range(len(fused.ids) - 1):
        if fused.scores[i] == fused.scores[i + 1]:
            assert fused.ids[i] < fused.ids[i + 1]


@settings(max_examples=200, deadline=None)
@given(unique_ids, unique_ids)
def test_equal_weights_are_symmetric(a: list[int], b: list[int]) -> None:
    ab = rrf([ranking(a), ranking(b)], (1.0, 1.0))
    ba = rrf([ranking(b), ranking(a)], (1.0, 1.0))
    np.testing.assert_array_equal(ab.ids, ba.ids)
    np.testing.assert_array_equal(ab.scores, ba.scores)
    np.testing.assert_array_equal(ab.ranks[0], ba.ranks[1])


@settings(max_examples=200, deadline=None)
@given(unique_ids.filter(bool), unique_ids)
def test_first_on_both_sides_is_first(a: list[int], b: list[int]) -> None:
    top = a[0]
    b = [top, *(i for i in b if i != top)]
    fused = rrf([ranking(a), ranking(b)], (1.0, 1.0))
    assert fused.ids[0] == top
    assert fused.scores[0] == pytest.approx(2 / (RRF_K + 1))


@settings(max_examples=200, deadline=None)
@given(unique_ids, unique_ids, st.floats(0.0, 3.0), st.floats(0.0, 3.0))
def test_scores_and_side_ranks_follow_the_formula(
    a: list[int], b: list[int], wa: float, wb: float
) -> None:
    fused = rrf([ranking(a), ranking(b)], (wa, wb))
    for i, entry_id in enumerate(fused.ids.tolist()):
        rank_a = a.index(entry_id) + 1 if entry_id in a else 0
        rank_b = b.index(entry_id) + 1 if entry_id in b else 0
        assert (fused.ranks[0][i], fused.ranks[1][i]) == (rank_a, rank_b)
        want = (wa / (RRF_K + rank_a) if rank_a else 0) + (wb / (RRF_K + rank_b) if rank_b else 0)
        assert fused.scores[i] == pytest.approx(want)
        assert np.isnan(fused.side_scores[0][i]) == (rank_a == 0)


def test_a_zero_weight_side_only_breaks_no_order_of_the_other() -> None:
    fused = rrf([ranking([3, 1, 2]), ranking([2, 9])], (1.0, 0.0))
    assert fused.ids[:3].tolist() == [3, 1, 2]
    assert fused.ids[-1] == 9  # present, with score 0


def test_empty_sides_fuse_to_nothing() -> None:
    fused = rrf([ranking([]), ranking([])], (1.0, 1.0))
    assert len(fused.ids) == len(fused.scores) == 0


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="weights"):
        rrf([ranking([1])], (1.0, 1.0))
    with pytest.raises(ValueError, match=">= 0"):
        rrf([ranking([1])], (-1.0,))
    with pytest.raises(ValueError, match="repeats"):
        ranking([1, 1])
