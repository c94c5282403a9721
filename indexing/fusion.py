"""Several rankings of ids (best first) -> one ranking by weighted reciprocal rank fusion (RRF).

An id at 1-based rank r on side s adds ``weight_s / (k + r)`` to its fused score (Cormack et al.,
2009; k = 60); an id a side did not return adds nothing there. RRF needs no score calibration
between BM25 and cosine, which live on different scales. Ties are broken by ascending id, so the
fused order is a pure function of the inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RRF_K = 60


@dataclass(frozen=True, slots=True, eq=False)  # eq=False: ndarray == is elementwise
class Ranking:
    """One side's result, best first: int64 (n,) unique ids and float32 (n,) their scores."""

    ids: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        if self.ids.shape != self.scores.shape or self.ids.ndim != 1:
            raise ValueError(f"ids {self.ids.shape} and scores {self.scores.shape} must be (n,)")
        if len(np.unique(self.ids)) != len(self.ids):
            raise ValueError("a ranking repeats an id")


@dataclass(frozen=True, slots=True, eq=False)
class Fused:
    """The fused ranking, best first.

    Attributes:
        ids: int64 (M,) every id any side returned, once.
        scores: float64 (M,) fused RRF scores, descending.
        ranks: per side, int64 (M,) the id's 1-based rank on that side, 0 where it was absent.
        side_scores: per side, float32 (M,) the id's score on that side, NaN where absent.
    """

    ids: np.ndarray
    scores: np.ndarray
    ranks: tuple[np.ndarray, ...]
    side_scores: tuple[np.ndarray, ...]


def rrf(sides: Sequence[Ranking], weights: Sequence[float], k: int = RRF_K) -> Fused:
    """Fuse ``sides`` by weighted reciprocal rank (see the module docstring).

    Args:
        sides: each side's ranking, best first.
        weights: one non-negative weight per side.
        k: the RRF constant; larger flattens the difference between top and lower ranks.

    Raises:
        ValueError: weights and sides differ in number, a weight is negative, or k < 1.
    """
    if len(weights) != len(sides):
        raise ValueError(f"{len(sides)} sides but {len(weights)} weights")
    if any(w < 0 for w in weights) or k < 1:
        raise ValueError(f"weights must be >= 0 and k >= 1, got {list(weights)} and {k}")
    all_ids = np.concatenate([s.ids.astype(np.int64) for s in sides] or [np.zeros(0, np.int64)])
    ids, inverse = np.unique(all_ids, return_inverse=True)  # (M,), (sum n,) -> positions
    scores = np.zeros(len(ids), dtype=np.float64)  # (M,)
    ranks: list[np.ndarray] = []
    side_scores: list[np.ndarray] = []
    start = 0
    for side, weight in zip(sides, weights, strict=True):
        at = inverse[start : start + len(side.ids)]  # (n,) positions in ids
        start += len(side.ids)
        rank = np.arange(1, len(side.ids) + 1)  # (n,)
        scores[at] += weight / (k + rank)  # ids are unique per side: no lost updates
        side_rank = np.zeros(len(ids), dtype=np.int64)
        side_rank[at] = rank
        side_score = np.full(len(ids), np.nan, dtype=np.float32)
        side_score[at] = side.scores
        ranks.append(side_rank)
        side_scores.append(side_score)
    order = np.lexsort((ids, -scores))  # score descending, then id ascending
    return Fused(
        ids[order],
        scores[order],
        tuple(r[order] for r in ranks),
        tuple(s[order] for s in side_scores),
    )
