"""Tests for indexing.vector: filtered top-k on every index type against brute force over the
allowed subset, including the fallbacks (exact blocks after a short HNSW walk, hash-set
selectors for sparse ids)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from indexing import vector as vector_module
from indexing.ann import INDEX_TYPES, build_ann_index, plan_for
from indexing.vector import VectorSearcher
from tests.indexing._helpers import random_unit_vectors

N, D = 2000, 16
SMALL = {
    "flat": {},
    "ivf-flat": {"nprobe": 1},
    "ivf-sq8": {"nprobe": 1},
    "ivf-pq": {"nprobe": 1, "k_factor": 1},
    "hnsw": {"ef_search": 16},
}
VECTORS = random_unit_vectors(N, D, seed=5)  # (N, D)
QUERIES = random_unit_vectors(4, D, seed=6)  # (4, D)


def searcher(kind: str, ids: np.ndarray) -> VectorSearcher:
    index = build_ann_index(plan_for(kind, N, D), ids, VECTORS)
    return VectorSearcher(index, kind, SMALL[kind])


def exact(ids: np.ndarray, allowed: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    keep = np.isin(ids, allowed)  # (N,)
    scores = VECTORS[keep] @ query  # (A,)
    return ids[keep][np.lexsort((ids[keep], -scores))][:k].tolist()


def recall(found: np.ndarray, want: list[int]) -> float:
    return len(set(found.tolist()) & set(want)) / max(1, len(want))


IDS = np.random.default_rng(0).permutation(N).astype(np.int64) * 3 + 5  # sparse, shuffled


@pytest.mark.parametrize("kind", INDEX_TYPES)
@pytest.mark.parametrize("share", [0.005, 0.05, 0.6])
def test_filtered_search_is_complete_and_inside_the_allowed(kind: str, share: float) -> None:
    s = searcher(kind, IDS)
    allowed_ids = np.sort(np.random.default_rng(1).choice(IDS, int(N * share), replace=False))
    allowed = s.allowed(allowed_ids)
    exact_types = ("flat", "ivf-flat", "hnsw")
    for query in QUERIES:
        depth = 50
        found, scores = s.search(query, depth, allowed)
        assert len(found) == min(depth, len(allowed_ids))
        assert np.isin(found, allowed_ids).all()
        assert (np.diff(scores) <= 1e-6).all()
        if share > 0.05:
            continue  # a broad filter is as approximate as the index's own parameters
        # A narrow one is searched whole: every list probed, or exactly (hnsw, small sets).
        want = exact(IDS, allowed_ids, query, depth)
        assert recall(found, want) >= (1.0 if kind in exact_types else 0.6)


def test_hnsw_falls_back_to_exact_blocks_when_the_walk_comes_back_short(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(vector_module, "EXACT_MAX", 0)  # never the cached exact path
    monkeypatch.setattr(vector_module, "MAX_EF_SEARCH", 32)  # a walk too short for 1%
    monkeypatch.setattr(vector_module, "EXACT_BLOCK", 7)  # several blocks to merge
    s = searcher("hnsw", IDS)
    allowed_ids = np.sort(IDS[::100])  # 20 ids
    for query in QUERIES:
        with caplog.at_level(logging.INFO, logger="indexing.vector"):
            found, scores = s.search(query, 15, s.allowed(allowed_ids))
        assert found.tolist() == exact(IDS, allowed_ids, query, 15)
        want = np.sort(VECTORS[np.isin(IDS, found)] @ query)[::-1]
        np.testing.assert_allclose(scores, want, atol=1e-6)
    assert "searching exactly" in caplog.text


def test_sparse_huge_ids_use_a_hash_set_selector() -> None:
    huge = IDS * 10_000_000  # largest id ~6e10: no bitmap
    s = searcher("ivf-flat", huge)
    allowed_ids = np.sort(huge[::50])
    allowed = s.allowed(allowed_ids)
    assert type(allowed.selector).__name__ == "IDSelectorBatch"
    found, _ = s.search(QUERIES[0], 10, allowed)
    assert found.tolist() == exact(huge, allowed_ids, QUERIES[0], 10)


def test_dense_ids_use_a_bitmap_selector() -> None:
    s = searcher("flat", np.arange(N, dtype=np.int64))
    assert type(s.allowed(np.arange(0, N, 3)).selector).__name__ == "IDSelectorBitmap"


def test_stored_vectors_come_back_unit_norm() -> None:
    for kind in INDEX_TYPES:
        s = searcher(kind, IDS)
        got = s.vector(int(IDS[10]))
        assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-5)
        assert float(got @ VECTORS[10]) > 0.99


def test_an_empty_allowed_set_or_depth_finds_nothing() -> None:
    s = searcher("flat", IDS)
    assert len(s.search(QUERIES[0], 10, s.allowed(np.zeros(0, dtype=np.int64)))[0]) == 0
    assert len(s.search(QUERIES[0], 0)[0]) == 0
