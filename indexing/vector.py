"""A loaded FAISS index + a query vector (+ the allowed ids) -> its best ids and cosine scores,
complete under a filter: when n ids are allowed, min(n, depth) come back.

A FAISS ID selector restricts the search itself, but an approximate index only looks where its
parameters send it: IVF probes nprobe of nlist lists and HNSW walks efSearch candidates, so a
filter that allows 1% of the collection leaves most of that neighbourhood empty. So:

- flat: exact search with the selector; always complete.
- IVF types: start at the nprobe that should find enough allowed vectors (twice nlist times the
  share of them needed, at least the tuned nprobe), and multiply it by 4 until enough are found
  or every list is probed. At nprobe = nlist the search visits every allowed vector. Without a
  filter the same rule fills a deep candidate window (a page far down the ranking).
- hnsw: a small allowed set (<= EXACT_MAX ids) is searched exactly over its stored vectors
  (reconstructed once per filter); otherwise the graph is searched with the selector at growing
  efSearch, and if that still comes back short, exactly over the allowed vectors in blocks.

One query runs on its calling thread alone (OpenMP's thread count is per thread, set for the
search and restored): FAISS forks its OpenMP team even for a single query, whose work one thread
does, and on a loaded 2-core machine the join waited ~6 ms for the idle worker (0.1 ms alone).
Concurrent requests get their parallelism from their own threads; FAISS releases the GIL.

Selectors are bitmaps over the id space when that is dense (entry ids 0..N-1 are), else hash
sets (IDSelectorBatch). ivf-pq sits inside an IDMap2 whose inner IVF index numbers vectors by
position, and IDMap2 would translate only a top-level selector: its selector holds positions.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import faiss
import numpy as np

from indexing.ann import FLAT, IVF_PQ, IVF_TYPES
from indexing.tuning import search_with

logger = logging.getLogger(__name__)

EXACT_MAX = 8192  # hnsw: allowed sets up to this size are searched exactly (~12 MB at D=384)
EXACT_BLOCK = 65536  # rows reconstructed at once in the exact fallback
MAX_EF_SEARCH = 4096
GROWTH = 4  # nprobe / efSearch multiplier between attempts
BITMAP_SLACK = 16  # a bitmap is used while the largest id < BITMAP_SLACK * N (+ 1M)


def _selector(ids: np.ndarray, space: int) -> tuple[faiss.IDSelector, np.ndarray]:
    """A selector of int64 ``ids`` and the array it reads (keep it alive with the selector)."""
    top = int(ids.max()) + 1 if len(ids) else 0
    if top <= BITMAP_SLACK * space + (1 << 20):
        mask = np.zeros(top, dtype=bool)
        mask[ids] = True
        bits = np.packbits(mask, bitorder="little")  # (ceil(top / 8),) bit i of byte j: id 8j+i
        return faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)), bits  # n in bytes
    batch = np.ascontiguousarray(ids, dtype=np.int64)
    return faiss.IDSelectorBatch(len(batch), faiss.swig_ptr(batch)), batch


class Allowed:
    """The allowed ids of one filter, prepared for one index (selector, exact vectors)."""

    def __init__(self, ids: np.ndarray, selector: faiss.IDSelector, keep: np.ndarray) -> None:
        self.ids = ids  # int64 (A,) entry ids, ascending
        self.selector = selector
        self._keep = keep  # the selector reads this array
        self._vectors: np.ndarray | None = None
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return len(self.ids)

    def vectors(self, index: faiss.Index) -> np.ndarray:
        """float32 (A, D) the allowed ids' stored vectors (reconstructed once)."""
        with self._lock:
            if self._vectors is None:
                self._vectors = index.reconstruct_batch(self.ids)  # (A,) -> (A, D)
            return self._vectors


class VectorSearcher:
    """Filtered top-k search over one loaded index (thread-safe: parameters are per call)."""

    def __init__(self, index: faiss.Index, index_type: str, params: Mapping[str, int]) -> None:
        self.index = index
        self.index_type = index_type
        self.params = dict(params)
        self.nlist = faiss.extract_index_ivf(index).nlist if index_type in IVF_TYPES else None
        self._positions: np.ndarray | None = None
        if index_type == IVF_PQ:  # IDMap2 position -> entry id
            id_map = faiss.downcast_index(index).id_map  # type: ignore[attr-defined]
            self._positions = faiss.vector_to_array(id_map)

    def allowed(self, ids: np.ndarray) -> Allowed:
        """Prepare int64 (A,) ascending allowed entry ids for searches."""
        if self._positions is None:
            selector, keep = _selector(ids, self.index.ntotal)
        else:
            positions = np.flatnonzero(np.isin(self._positions, ids))  # (A,) IDMap2 rows
            selector, keep = _selector(positions, self.index.ntotal)
        return Allowed(ids, selector, keep)

    def vector(self, entry_id: int) -> np.ndarray:
        """float32 (D,) the stored vector of ``entry_id``, unit-norm (ivf-sq8 stores it coded)."""
        vector = np.asarray(self.index.reconstruct(int(entry_id)), dtype=np.float32)  # (D,)
        return vector / max(float(np.linalg.norm(vector)), 1e-12)

    def search(
        self, query: np.ndarray, depth: int, allowed: Allowed | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``depth`` best ids for float32 (D,) ``query``, among ``allowed`` when given.

        Returns:
            int64 (h,) ids and float32 (h,) cosines, best first (ties by id); h = depth unless
            fewer vectors (allowed ones) exist.
        """
        queries = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)  # (D,) -> (1, D)
        depth = min(depth, self.index.ntotal if allowed is None else allowed.count)
        if depth <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        with _this_thread_only():
            if self.index_type in IVF_TYPES:  # with or without a filter: probe until complete
                scores, ids = self._ivf(queries, depth, allowed)
            elif self.index_type == FLAT:
                scores, ids = self._run(queries, depth, allowed, self.params)
            else:
                scores, ids = self._hnsw(queries, depth, allowed)
        return _ordered(scores[0], ids[0])  # (1, depth) -> (h,)

    def _run(
        self, queries: np.ndarray, depth: int, allowed: Allowed | None, params: Mapping[str, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        sel = None if allowed is None else allowed.selector
        return search_with(self.index, self.index_type, params, queries, depth, sel)

    def _ivf(
        self, queries: np.ndarray, depth: int, allowed: Allowed | None
    ) -> tuple[np.ndarray, np.ndarray]:
        nlist = self.nlist or 1
        count = self.index.ntotal if allowed is None else allowed.count
        share = depth / count  # of the allowed vectors, the share we need
        nprobe = min(nlist, max(self.params["nprobe"], math.ceil(2 * nlist * share)))
        while True:
            scores, ids = self._run(queries, depth, allowed, self.params | {"nprobe": nprobe})
            found = int((ids[0] >= 0).sum())
            if found >= depth or nprobe >= nlist:
                return scores, ids
            logger.debug("filtered IVF search found %d of %d at nprobe %d", found, depth, nprobe)
            nprobe = min(nlist, nprobe * GROWTH)

    def _hnsw(
        self, queries: np.ndarray, depth: int, allowed: Allowed | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if allowed is not None and allowed.count <= EXACT_MAX:
            return _exact(queries, depth, allowed.ids, allowed.vectors(self.index))
        # FAISS returns at most efSearch results: the walk must be at least as wide as depth.
        ef = max(self.params["ef_search"], depth)
        while True:
            scores, ids = self._run(queries, depth, allowed, {"ef_search": ef})
            if int((ids[0] >= 0).sum()) >= depth or ef >= MAX_EF_SEARCH:
                break
            ef = min(MAX_EF_SEARCH, ef * GROWTH)
        if allowed is None or int((ids[0] >= 0).sum()) >= depth:
            return scores, ids
        logger.info("filtered HNSW search came back short at efSearch %d: searching exactly", ef)
        return self._exact_blocks(queries, depth, allowed.ids)

    def _exact_blocks(
        self, queries: np.ndarray, depth: int, ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        best_scores = np.zeros((1, 0), dtype=np.float32)
        best_ids = np.zeros((1, 0), dtype=np.int64)
        for start in range(0, len(ids), EXACT_BLOCK):
            block = ids[start : start + EXACT_BLOCK]  # (b,)
            scores, found = _exact(queries, depth, block, self.index.reconstruct_batch(block))
            best_scores = np.concatenate([best_scores, scores], axis=1)  # (1, <=2 depth)
            best_ids = np.concatenate([best_ids, found], axis=1)
            top = np.argsort(-best_scores[0], kind="stable")[:depth]
            best_scores, best_ids = best_scores[:, top], best_ids[:, top]
        return best_scores, best_ids


@contextmanager
def _this_thread_only() -> Iterator[None]:
    """Run FAISS on the calling thread alone (OpenMP's nthreads is a per-thread setting)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _exact(
    queries: np.ndarray, depth: int, ids: np.ndarray, vectors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner product of (1, D) queries over (A, D) vectors with ids (A,)."""
    scores = vectors @ queries[0]  # (A, D) @ (D,) -> (A,)
    top = np.argsort(-scores, kind="stable")[:depth]  # (depth,)
    return scores[top][None, :].astype(np.float32), ids[top][None, :]  # (1, depth) x2


def _ordered(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    found = ids >= 0  # FAISS pads with -1 when it has fewer than asked
    scores, ids = scores[found], ids[found]  # (depth,) -> (h,)
    order = np.lexsort((ids, -scores))  # cosine descending, then id
    return ids[order].astype(np.int64), scores[order].astype(np.float32)
