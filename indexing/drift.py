"""A filled IVF index + its (N, D) vectors -> how well its trained quantizer fits them
(QuantizerFit), and the rule that says when an incremental update must retrain (RebuildRule).

Two measures, both cheap next to an add:

- **residual**: the mean squared L2 distance of a seeded sample of at most FIT_SAMPLE vectors to
  the centroid of the list they belong to. k-means minimises exactly this, so it rises when new
  vectors fall between or outside the trained clusters (drift), and the IVF lists then hold
  vectors that the probed centroids describe badly: recall at a fixed nprobe falls.
- **imbalance**: FAISS's ``invlists.imbalance_factor()``: nlist * sum(size_i^2) / N^2 over the
  lists, 1 when all lists are equally full: the expected scan per probed list, for queries that
  follow the data, over that of a balanced index of the same size.

The rule (RebuildRule.reason; benchmarks/index_incremental.py, docs/benchmarks.md,
"Incremental updates"): retrain when, since the quantizer was trained,

- the collection has more than doubled: nlist was sized as 4*sqrt(N) of the training count, and
  a list's scan grows with N where a rebuild's grows with sqrt(N) (measured at 20k x 128, where
  the coarse search still dominates: even 4x growth searched within 12% of a rebuild, so
  doubling is a conservative bound), or halved (lists sized for twice the data);
- the residual has risen by more than 15%: new vectors from clusters the quantizer never saw
  raised it 13% at 20k x 128 with the same tuned nprobe as a rebuild, 24% with 2x its nprobe
  (1.8x the query time); at 200k x 384, 5% unseen raised it 34% and cost 0.025 recall@10 on
  fresh queries, 10% raised it 63% and cost 3x the query time;
- and, only when asked (max_imbalance_rise; off by default), the imbalance factor has risen by
  more than that share. Measured at 200k x 384, a burst of near-copies of a few captions raised
  it 61-734% and slowed the incremental index's queries up to 1.8x, but a rebuild was slower
  still (1.6-4.5x the incremental index's query time): k-means spreads each blob of near-copies
  over many lists, so the tuner needs 2-16x the nprobe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import faiss
import numpy as np

from indexing.errors import IndexingError

FIT_SAMPLE: Final = 10_000


@dataclass(frozen=True, slots=True)
class QuantizerFit:
    """How an IVF quantizer fits an index's vectors: how many, residual, imbalance."""

    count: int
    residual: float
    imbalance: float


def measure_fit(index: faiss.Index, vectors: np.ndarray, seed: int = 0) -> QuantizerFit:
    """Measure the fit of ``index``'s trained quantizer to ``vectors`` (see the module docstring).

    Args:
        index: a trained IVF index (possibly wrapped: IDMap2, refine) holding ``vectors``.
        vectors: float32 (N, D), the rows the index holds.
        seed: seeds the sample.

    Returns:
        The count (index.ntotal), the mean squared distance to the assigned centroid, and the
        lists' imbalance factor (1.0 for an empty index).
    """
    ivf = faiss.extract_index_ivf(index)
    n = len(vectors)
    if n == 0:
        return QuantizerFit(int(index.ntotal), 0.0, 1.0)
    rows = np.arange(n)
    if n > FIT_SAMPLE:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=FIT_SAMPLE, replace=False))
    sample = np.ascontiguousarray(vectors[rows], dtype=np.float32)  # (N, D) -> (S, D)
    _, assigned = ivf.quantizer.search(sample, 1)  # (S, D) -> (S, 1) list numbers
    centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)  # (nlist, D)
    residual = float(((sample - centroids[assigned[:, 0]]) ** 2).sum(axis=1).mean())  # (S,) -> ()
    invlists = ivf.invlists
    assert invlists is not None  # a trained IVF index always has its lists
    imbalance = float(invlists.imbalance_factor()) if index.ntotal else 1.0
    return QuantizerFit(int(index.ntotal), residual, imbalance)


@dataclass(frozen=True, slots=True)
class RebuildRule:
    """When an incremental update retrains the index instead (see the module docstring).

    Attributes:
        max_growth: retrain when the count exceeds trained count * (1 + max_growth).
        min_shrink: retrain when the count falls below trained count * min_shrink.
        max_residual_rise: retrain when the residual exceeds the training-time residual by
            more than this share.
        max_imbalance_rise: retrain when the imbalance factor exceeds the training-time one by
            more than this share (default: never, see the module docstring).
    """

    max_growth: float = 1.0
    min_shrink: float = 0.5
    max_residual_rise: float = 0.15
    max_imbalance_rise: float = math.inf

    def __post_init__(self) -> None:
        for name in ("max_growth", "max_residual_rise", "max_imbalance_rise"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise IndexingError(f"rebuild rule {name} must be a number >= 0, got {value!r}")
        shrink = self.min_shrink
        if isinstance(shrink, bool) or not isinstance(shrink, int | float) or not 0 <= shrink < 1:
            raise IndexingError(f"rebuild rule min_shrink must be in [0, 1), got {shrink!r}")

    def count_reason(self, trained: int, count: int) -> str | None:
        """Why ``count`` vectors need a retrain of a quantizer trained on ``trained``, or None."""
        if count > trained * (1 + self.max_growth):
            return (
                f"grew from {trained} to {count} vectors since the quantizer was trained "
                f"(more than {1 + self.max_growth:g}x)"
            )
        if count < trained * self.min_shrink:
            return (
                f"shrank from {trained} to {count} vectors since the quantizer was trained "
                f"(below {self.min_shrink:g}x)"
            )
        return None

    def reason(self, trained: QuantizerFit, now: QuantizerFit) -> str | None:
        """Why ``now`` calls for a retrain of the quantizer fitted as ``trained``, or None."""
        if why := self.count_reason(trained.count, now.count):
            return why
        if _rise(trained.residual, now.residual) > self.max_residual_rise:
            return (
                f"drifted: mean squared distance to the nearest centroid {now.residual:.4g}, "
                f"{trained.residual:.4g} when trained (more than +{self.max_residual_rise:.0%})"
            )
        if _rise(trained.imbalance, now.imbalance) > self.max_imbalance_rise:
            return (
                f"lists unbalanced: imbalance factor {now.imbalance:.3g}, {trained.imbalance:.3g} "
                f"when trained (more than +{self.max_imbalance_rise:.0%})"
            )
        return None


def _rise(before: float, after: float) -> float:
    """after / before - 1; a tiny floor keeps a perfect fit (all duplicates) from dividing by 0."""
    if not (math.isfinite(before) and math.isfinite(after)):
        return math.inf
    return after / max(before, 1e-9) - 1 if after > 1e-9 else 0.0
