"""An ANN index + held-out query vectors -> the cheapest search parameters reaching a recall@10.

Tuning holds out min(MAX_QUERIES, N // 10) seeded rows of the collection (holdout_rows): the
index is built and tuned without them, their exact neighbours among the rest come from
IndexFlatIP, and only then are they added (write_index does this; no second build). Queries that
sat in the index would find themselves and their own IVF cell for free, which measured 0.96 where
fresh queries got 0.92 on the test collection. The parameter ladder is walked in increasing
cost: nprobe (IVF types: 1, 2, 4, ... nlist), efSearch (hnsw: 16, 32, ... 4096), and for ivf-pq
the re-rank depth k_factor (1, 2, 4, ... 64) at each nprobe. The first point with recall@10 >=
the target wins; its batched single-thread ms/query is measured and recorded.

Held-out rows alone are too kind when the collection repeats itself: a row with near-copies in
the index finds them in its own IVF cell, so nprobe=1 measured recall@10 0.977 on held-out rows
of the 1M benchmark collection (each caption ~50 near-copies) while queries that were new
captions got 0.689 at that nprobe. So the tuner also asks "between" queries, the normalised
midpoints of random pairs of held-out rows (between_queries): they sit between clusters, as new
text does, and have no copy of their own in the index. A point must reach the target on both
sets; the recall recorded is the lower of the two.

When even the most expensive point misses the target, tuning raises TargetRecallError instead of
writing an index that silently answers worse than asked: the message gives the best recall
reached so the user can lower --target-recall or pick a more exact --index-type.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import faiss
import numpy as np

from indexing.ann import FLAT, HNSW, IVF_FLAT, IVF_PQ, IVF_SQ8
from indexing.errors import IndexingError

logger = logging.getLogger(__name__)

MAX_QUERIES = 1000
RECALL_K = 10
EF_SEARCH_LADDER = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# A found neighbour within this of the k-th exact score ties with it (float rounding differs
# between the exact and the approximate kernels).
TIE_TOLERANCE = 1e-5
K_FACTOR_LADDER = (1, 2, 4, 8, 16, 32, 64)
# The search-parameter names each index type accepts.
PARAM_NAMES: dict[str, tuple[str, ...]] = {
    FLAT: (),
    IVF_FLAT: ("nprobe",),
    IVF_SQ8: ("nprobe",),
    IVF_PQ: ("nprobe", "k_factor"),
    HNSW: ("ef_search",),
}


class TargetRecallError(IndexingError):
    """No search parameters of the chosen index reach the target recall."""


@dataclass(frozen=True, slots=True)
class TuningResult:
    """The chosen search parameters, their recall@10 against exact search, and ms per query."""

    params: dict[str, int]
    recall_at_10: float
    query_ms: float | None


class _Params:
    """A faiss.SearchParameters for an index type, keeping its nested parts alive.

    ``sel`` restricts the search to the ids it holds: on the IVF parameters for IVF types (for
    ivf-pq, whose IDMap2 would translate a top-level selector into the wrong id space, the
    selector holds row positions of the IDMap2; see indexing.vector), on the top level otherwise.
    """

    def __init__(
        self, index_type: str, params: Mapping[str, int], sel: faiss.IDSelector | None = None
    ) -> None:
        self.parts: list[object] = [] if sel is None else [sel]
        self.value: faiss.SearchParameters | None = None
        if index_type in (IVF_FLAT, IVF_SQ8):
            self.value = _ivf(params, sel)
        elif index_type == IVF_PQ:
            base = _ivf(params, sel)
            refine = faiss.IndexRefineSearchParameters()
            refine.k_factor = float(params["k_factor"])
            refine.base_index_params = base
            self.parts.append(base)
            self.value = refine
        elif index_type == HNSW:
            hnsw = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # missing in stubs
            hnsw.efSearch = int(params["ef_search"])
            if sel is not None:
                hnsw.sel = sel
            self.value = hnsw
        elif sel is not None:  # flat
            self.value = faiss.SearchParameters()
            self.value.sel = sel


def _ivf(params: Mapping[str, int], sel: faiss.IDSelector | None) -> faiss.SearchParametersIVF:
    ivf = faiss.SearchParametersIVF()
    ivf.nprobe = int(params["nprobe"])
    if sel is not None:
        ivf.sel = sel
    return ivf


def check_params(index_type: str, params: Mapping[str, int], nlist: int | None) -> None:
    """Raise IndexingError unless ``params`` are exactly the names index_type takes, in range."""
    names = PARAM_NAMES[index_type]
    if sorted(params) != sorted(names):
        raise IndexingError(
            f"a {index_type} index takes search parameters {list(names) or 'none'}, got "
            f"{sorted(params) or 'none'}"
        )
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise IndexingError(f"search parameter {name} must be a positive int, got {value!r}")
    if nlist is not None and "nprobe" in params and params["nprobe"] > nlist:
        raise IndexingError(f"nprobe {params['nprobe']} exceeds the index's nlist {nlist}")


def search_with(
    index: faiss.Index,
    index_type: str,
    params: Mapping[str, int],
    queries: np.ndarray,
    k: int,
    sel: faiss.IDSelector | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """index.search with ``params`` passed per call (thread-safe; the index is not changed).

    Args:
        sel: search only the ids this selector holds (entry ids; row positions of the IDMap2
            for ivf-pq, see _Params); None searches everything.

    Returns:
        scores float32 (Q, k) and ids int64 (Q, k), -1 where fewer than k were found.
    """
    holder = _Params(index_type, params, sel)
    if holder.value is None:
        return index.search(queries, k)  # (Q, D) -> (Q, k), (Q, k)
    return index.search(queries, k, params=holder.value)  # (Q, D) -> (Q, k), (Q, k)


def _ladder(index_type: str, nlist: int | None) -> Iterator[dict[str, int]]:
    if index_type == HNSW:
        for ef in EF_SEARCH_LADDER:
            yield {"ef_search": ef}
        return
    nprobes = [1 << i for i in range((nlist or 1).bit_length()) if 1 << i < (nlist or 1)]
    for nprobe in [*nprobes, nlist or 1]:
        if index_type == IVF_PQ:
            for k_factor in K_FACTOR_LADDER:
                yield {"nprobe": nprobe, "k_factor": k_factor}
        else:
            yield {"nprobe": nprobe}


def _recall(
    found: np.ndarray, truth: np.ndarray, scores: np.ndarray | None = None,
    kth: np.ndarray | None = None,
) -> float:  # fmt: skip
    """Share of the exact top-k (Q, k) found (Q, k). Given the found scores (Q, k) and each
    query's k-th exact score (Q,), a found id scoring as high as the k-th counts too: among equal
    vectors (a repeated caption) which ones the exact search listed is arbitrary."""
    valid = found >= 0  # (Q, k)
    hit = valid & (found[:, :, None] == truth[:, None, :]).any(axis=2)  # (Q, k, k) -> (Q, k)
    if scores is not None and kth is not None:
        hit |= valid & (scores >= kth[:, None] - TIE_TOLERANCE)  # (Q, k)
    return float(hit.sum()) / truth.size


def holdout_rows(n: int, seed: int = 0) -> np.ndarray:
    """Sorted int64 rows of an n-row collection to hold out as tuning queries (seeded)."""
    size = min(MAX_QUERIES, n // 10)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def between_queries(rows: np.ndarray, seed: int = 0) -> np.ndarray:
    """(Q, D) unit rows -> (Q, D) unit midpoints of each row and a seeded random other row.

    A pair of identical rows (a repeated caption) would give the row back; such a midpoint is
    still a valid query, just an easy one.
    """
    if len(rows) < 2:
        return rows.copy()
    rng = np.random.default_rng(seed)
    shift = rng.integers(1, len(rows), size=len(rows))  # (Q,) never 0: a row is not its own pair
    partner = rows[(np.arange(len(rows)) + shift) % len(rows)]  # (Q, D)
    mid = rows + partner  # (Q, D)
    norms = np.linalg.norm(mid, axis=1, keepdims=True)  # (Q, 1)
    # Opposite rows sum to ~0: keep the row itself rather than divide by ~0.
    return np.where(norms > 1e-6, mid / np.maximum(norms, 1e-6), rows).astype(np.float32)


def _timed(
    index: faiss.Index, index_type: str, params: Mapping[str, int], queries: np.ndarray, k: int
) -> float:
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # ms/query on one core; restored below
    try:
        start = time.perf_counter()
        search_with(index, index_type, params, queries, k)  # (Q, D) -> (Q, k)
        return (time.perf_counter() - start) * 1000 / len(queries)
    finally:
        faiss.omp_set_num_threads(threads)


def tune(
    index: faiss.Index,
    index_type: str,
    nlist: int | None,
    base_ids: np.ndarray,
    base: np.ndarray,
    queries: np.ndarray,
    target_recall: float,
) -> TuningResult:
    """Find the cheapest search parameters of ``index`` with recall@10 >= target_recall.

    Args:
        index: holds exactly the vectors of ``base``, under ``base_ids``.
        index_type: its type (indexing.ann.INDEX_TYPES).
        nlist: its nlist (IVF types) or None.
        base_ids: int64 (N,) the ids of base's rows.
        base: float32 (N, D) the indexed vectors, for the exact neighbours.
        queries: float32 (Q, D) held-out vectors, not in the index; their midpoints are added.
        target_recall: in (0, 1].

    Returns:
        The parameters, the recall@10 they measured and the ms/query at one thread.

    Raises:
        TargetRecallError: the most expensive parameters miss the target.
    """
    k = min(RECALL_K, len(base))
    if index_type == FLAT or k == 0 or len(queries) == 0:
        ms = _timed(index, FLAT, {}, queries, k) if k and len(queries) else 0.0
        return TuningResult({}, 1.0, ms)
    queries = tuning_queries(queries)  # (Q, D) -> (2Q, D)
    exact = faiss.IndexFlatIP(base.shape[1])
    exact.add(base)  # (N, D)
    truth_scores, truth_rows = exact.search(queries, k)  # (2Q, D) -> (2Q, k) x2
    truth_ids = base_ids[truth_rows]  # (2Q, k) rows -> ids
    return tune_to_truth(index, index_type, nlist, queries, truth_ids, target_recall,
                         kth_scores=truth_scores[:, -1])  # fmt: skip


def tuning_queries(queries: np.ndarray) -> np.ndarray:
    """Held-out rows (Q, D) -> the queries tune asks: the rows, then their midpoints (2Q, D)."""
    return np.concatenate([queries, between_queries(queries)])  # (Q, D) -> (2Q, D)


def tune_to_truth(
    index: faiss.Index,
    index_type: str,
    nlist: int | None,
    queries: np.ndarray,
    truth_ids: np.ndarray,
    target_recall: float,
    kth_scores: np.ndarray | None = None,
) -> TuningResult:
    """tune's parameter search, given the exact neighbours (for a caller that computed them
    without holding every indexed vector, e.g. indexing.sharded from Parquet partitions).

    Args:
        queries: float32 (2Q, D) from tuning_queries.
        truth_ids: int64 (2Q, k) ids of each query's k exact nearest indexed vectors.
        kth_scores: float32 (2Q,) the k-th exact score of each query, if known: a found vector
            that scores as high is a tie and counts as found (see _recall).
    """
    k = truth_ids.shape[1]
    half = len(queries) // 2
    best = 0.0
    last: dict[str, int] = {}
    for params in _ladder(index_type, nlist):
        scores, found = search_with(index, index_type, params, queries, k)  # (2Q, k) x2
        kth = (None, None) if kth_scores is None else (kth_scores[:half], kth_scores[half:])
        recall = min(  # held-out rows, then their midpoints
            _recall(found[:half], truth_ids[:half], scores[:half], kth[0]),
            _recall(found[half:], truth_ids[half:], scores[half:], kth[1]),
        )
        logger.debug("%s %s: recall@10 %.4f", index_type, params, recall)
        best, last = max(best, recall), params
        if recall >= target_recall:
            ms = _timed(index, index_type, params, queries, k)
            logger.info(
                "tuned %s: %s reaches recall@10 %.4f (target %.2f) at %.3f ms/query",
                index_type,
                params,
                recall,
                target_recall,
                ms,
            )
            return TuningResult(params, recall, ms)
    raise TargetRecallError(
        f"the {index_type} index reaches recall@10 {best:.4f} at most ({last}), below the target "
        f"{target_recall}: lower --target-recall or choose a more exact --index-type"
    )
