"""Tests for indexing.tuning's query sets: held-out rows and their "between" midpoints."""

from __future__ import annotations

import faiss
import numpy as np

from indexing.ann import build_ann_index, plan_for
from indexing.tuning import between_queries, search_with, tune

D = 32


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def repeated_collection(captions: int, copies: int, seed: int) -> np.ndarray:
    """(captions * copies, D): each "caption" vector with tight near-copies, like a world
    whose captions repeat (the 1M benchmark's shape, scaled down)."""
    rng = np.random.default_rng(seed)
    base = unit(rng.standard_normal((captions, D)))  # (C, D)
    noisy = np.repeat(base, copies, axis=0) + 0.03 * rng.standard_normal((captions * copies, D))
    return unit(noisy)  # (C * copies, D)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return sum(len(np.intersect1d(f, t)) for f, t in zip(found, truth, strict=True)) / truth.size


def test_between_queries_are_unit_midpoints_of_two_different_rows() -> None:
    rows = unit(np.random.default_rng(1).standard_normal((50, D)))
    mids = between_queries(rows)
    assert mids.shape == rows.shape and mids.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(mids, axis=1), 1.0, atol=1e-5)
    # Each midpoint is equally close to its row and to one other row, and is none of them.
    sims = mids @ rows.T  # (Q, Q)
    top2 = np.sort(sims, axis=1)[:, -2:]  # (Q, 2)
    np.testing.assert_allclose(top2[:, 0], top2[:, 1], atol=1e-5)
    assert (top2[:, 1] < 0.9999).all()
    np.testing.assert_array_equal(mids, between_queries(rows))  # seeded


def test_between_queries_of_one_row_or_opposite_rows_stay_finite() -> None:
    one = unit(np.ones((1, D)))
    np.testing.assert_array_equal(between_queries(one), one)
    pair = np.concatenate([one, -one])
    assert np.isfinite(between_queries(pair)).all()


def test_tuned_parameters_hold_for_queries_that_are_new_to_the_collection() -> None:
    """The tuner's recall must hold for fresh queries between clusters, not only for held-out
    rows that find their own near-copies in their own IVF cell."""
    vectors = repeated_collection(captions=400, copies=25, seed=2)  # (10000, D)
    ids = np.arange(len(vectors), dtype=np.int64)
    held = np.random.default_rng(3).choice(len(vectors), 500, replace=False)
    rest = np.setdiff1d(ids, held)
    plan = plan_for("ivf-flat", len(rest), D)
    index = build_ann_index(plan, rest, vectors[rest], seed=0)
    tuned = tune(index, "ivf-flat", plan.nlist, rest, vectors[rest], vectors[held], 0.95)

    # Fresh queries: midpoints of captions the tuner never saw paired (another seed).
    fresh = between_queries(repeated_collection(400, 1, seed=2), seed=9)  # (400, D)
    exact = faiss.IndexFlatIP(D)
    exact.add(vectors[rest])
    _, truth = exact.search(fresh, 10)
    _, found = search_with(index, "ivf-flat", tuned.params, fresh, 10)
    assert recall(found, rest[truth]) >= 0.9  # a margin below the 0.95 target: new sample
    # ... and held-out rows alone would have tuned to a cheaper, too-optimistic point.
    _, found_rows = search_with(index, "ivf-flat", {"nprobe": 1}, vectors[held], 10)
    _, truth_rows = exact.search(vectors[held], 10)
    assert recall(found_rows, rest[truth_rows]) >= 0.95
    assert tuned.params["nprobe"] > 1
