"""(N, D) unit vectors + an AnnConfig -> an IndexPlan (type, factory, nlist, bytes) -> FAISS index.

Index types (all inner product, all keyed by the entry ids):

- ``flat``: ``IDMap2,Flat``, exact. The default of write_index and what every index written
  before index types existed holds.
- ``ivf-flat``: ``IVF{nlist},Flat``; ``ivf-sq8``: ``IVF{nlist},SQ8``. Explicit ids in the
  inverted lists and a hashtable DirectMap, so ``add_with_ids``, ``remove_ids`` and
  ``reconstruct(id)`` work without a rebuild (research E5, B2).
- ``ivf-pq``: ``IDMap2,IVF{nlist},PQ{D/4}x4fs,RFlat``: 4-bit fast-scan PQ with an exact re-rank
  of the ``k * k_factor`` best candidates. The re-rank store (the full vectors) is memory-mapped
  at load (``IO_FLAG_MMAP_IFC``), so only the PQ codes, ids and centroids count as resident.
  Fast-scan lists and the refine wrapper cannot remove ids: not for a mutable collection.
- ``hnsw``: ``IDMap2,HNSW32``. Never removes ids (FAISS has no ``remove_ids`` for it), costs
  ~400 s per 1M vectors to build on 2 cores (E1), and is only built when asked for by name.

The ``auto`` rule (choose), with the numbers that justify it (research section E):

1. Fewer than FLAT_MAX_VECTORS (50k) vectors and Flat fits the budget: ``flat``. Brute force over
   50k x 384 is ~75 MB and a few ms per query; exact results, nothing to train or tune.
2. Otherwise the first IVF type whose resident bytes fit the budget (no budget: no limit):
   ``ivf-flat`` (4D + 24 bytes/vector; measured 0.981 R10@10 at nprobe 8 on 1M x 384 at 4,253
   QPS, 2 cores), then ``ivf-sq8`` (D + 24 bytes/vector, ~4x smaller; E4: 0.597 vs 0.603 for
   IVF-Flat at the same nprobe, i.e. it loses essentially nothing).
3. Only when neither fits and the collection is not mutable: ``ivf-pq`` with the re-rank stage
   (E4: PQ without re-ranking loses ~40% of the recall; ``PQ96x4fs,RFlat`` recovers Flat-level
   recall at 2-6x the QPS). OPQ is never chosen (E4: worse than plain PQ at d=384).
4. Nothing fits: IndexingError naming the smallest type and its size.
5. With auto, a type whose tuning cannot reach the target recall (indexing.tuning) gives way to
   the next type in this order that fits; a type named with --index-type raises instead. SQ8's
   per-dimension 8-bit grid can be coarser than the gaps between near neighbours in very tight
   clusters (measured: 0.58 at nprobe=nlist on 100k x 384 synthetic clusters where IVF-Flat got
   0.996 at nprobe 1), which is why it is a fallback and not an assumption.

``nlist`` is 4*sqrt(N) (the low end of the wiki's 4-16 sqrt(N)) rounded to a power of two, then
lowered to a power of two with at least MIN_POINTS_PER_LIST (39, FAISS's own warning threshold)
training points per list: 1M -> 4096, 20k -> 512.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from dataclasses import dataclass
from typing import Final

import faiss
import numpy as np

from indexing.errors import IndexingError
from indexing.gpu import add_on_gpus, gpu_available, kmeans_on_gpus

logger = logging.getLogger(__name__)

FLAT, IVF_FLAT, IVF_SQ8, IVF_PQ, HNSW = "flat", "ivf-flat", "ivf-sq8", "ivf-pq", "hnsw"
AUTO: Final = "auto"
INDEX_TYPES: Final = (FLAT, IVF_FLAT, IVF_SQ8, IVF_PQ, HNSW)
# Types whose ids can be added and removed without a rebuild.
MUTABLE_TYPES: Final = (FLAT, IVF_FLAT, IVF_SQ8)
IVF_TYPES: Final = (IVF_FLAT, IVF_SQ8, IVF_PQ)
FLAT_FACTORY: Final = "IDMap2,Flat"
FLAT_MAX_VECTORS: Final = 50_000
MIN_POINTS_PER_LIST: Final = 39
# k-means trains on a seeded sample of this many rows per list (FAISS's own cap is 256): at 1M
# rows IVF4096 trains on 262k rows instead of all of them, 4x less k-means time on 2 cores.
TRAIN_POINTS_PER_LIST: Final = 64
HNSW_M: Final = 32
DEFAULT_TARGET_RECALL: Final = 0.95
# Per-vector bookkeeping: an int64 id, plus ~16 bytes of hashtable / reverse map entry.
_ID_BYTES: Final = 8 + 16

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*", re.IGNORECASE)
_FACTORY_NLIST_RE = re.compile(r"IVF(\d+),")


def parse_size(text: str) -> int:
    """ "4GB", "512MiB", "1.5g", "2000000" -> bytes (KB/MB/GB/TB are powers of 1000, KiB.. of 1024).

    Raises:
        IndexingError: not a positive size.
    """
    match = _SIZE_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise IndexingError(
            f"memory budget {text!r} is not a size: write e.g. 4GB, 512MiB or 2000000 (bytes)"
        )
    number, unit, binary = match.groups()
    power = "kmgt".find(unit.lower()) + 1 if unit else 0
    size = int(float(number) * (1024 if binary else 1000) ** power)
    if size <= 0:
        raise IndexingError(f"memory budget {text!r} must be more than 0 bytes")
    return size


@dataclass(frozen=True, slots=True)
class AnnConfig:
    """How to index: the type (or auto), the memory budget, the recall to tune for.

    Attributes:
        index_type: "auto" or one of INDEX_TYPES.
        memory_budget_bytes: most resident bytes the index may take; None for no limit.
        target_recall: recall@10 against exact search the tuned search parameters must reach,
            in (0, 1].
        mutable: the index will get add/remove updates; rules out hnsw and ivf-pq.
        seed: seeds the training sample and the tuning queries.
    """

    index_type: str = AUTO
    memory_budget_bytes: int | None = None
    target_recall: float = DEFAULT_TARGET_RECALL
    mutable: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.index_type not in (AUTO, *INDEX_TYPES):
            raise IndexingError(
                f"unknown index type {self.index_type!r}: choose one of "
                f"{', '.join((AUTO, *INDEX_TYPES))}"
            )
        budget = self.memory_budget_bytes
        if budget is not None and (isinstance(budget, bool) or budget <= 0):
            raise IndexingError(f"memory budget must be a positive size, got {budget!r}")
        recall = self.target_recall
        if isinstance(recall, bool) or not isinstance(recall, int | float) or not 0 < recall <= 1:
            raise IndexingError(
                f"target recall must be in (0, 1] (recall@10 against exact search), got {recall!r}"
            )
        if self.mutable and self.index_type in (HNSW, IVF_PQ):
            raise IndexingError(
                f"index type {self.index_type} cannot remove ids, but this index will be updated "
                f"incrementally: choose {', '.join(MUTABLE_TYPES)} or auto"
            )


@dataclass(frozen=True, slots=True)
class IndexPlan:
    """What to build: the type, its FAISS factory string, nlist (IVF types) and resident bytes."""

    index_type: str
    factory: str
    nlist: int | None
    estimated_bytes: int


def choose_nlist(n: int) -> int:
    """4*sqrt(n) rounded to a power of two, with >= MIN_POINTS_PER_LIST points per list."""
    if n < MIN_POINTS_PER_LIST:
        return 1
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    cap = 2 ** int(math.log2(n // MIN_POINTS_PER_LIST))
    return max(1, min(nlist, cap))


def pq_subquantizers(d: int) -> int:
    """PQ{D/4}x4fs: one 4-bit code per 4 dimensions (at least one)."""
    return max(1, d // 4)


def factory_for(index_type: str, d: int, nlist: int | None) -> str:
    """The FAISS factory string of ``index_type`` (with nlist for IVF types)."""
    if index_type == FLAT:
        return FLAT_FACTORY
    if index_type == HNSW:
        return f"IDMap2,HNSW{HNSW_M}"
    if index_type == IVF_FLAT:
        return f"IVF{nlist},Flat"
    if index_type == IVF_SQ8:
        return f"IVF{nlist},SQ8"
    return f"IDMap2,IVF{nlist},PQ{pq_subquantizers(d)}x4fs,RFlat"


def factory_nlist(factory: str) -> int | None:
    """The nlist written in a factory string, None for non-IVF factories."""
    match = _FACTORY_NLIST_RE.search(factory)
    return int(match.group(1)) if match else None


def estimate_bytes(index_type: str, n: int, d: int, nlist: int | None = None) -> int:
    """Resident bytes of an index of ``n`` vectors of width ``d`` (FAISS wiki formulas, E2)."""
    centroids = 4 * d * (nlist or 0)
    if index_type == FLAT:
        return n * (4 * d + _ID_BYTES)
    if index_type == HNSW:
        return n * (4 * d + HNSW_M * 2 * 4 + _ID_BYTES)
    if index_type == IVF_FLAT:
        return n * (4 * d + _ID_BYTES) + centroids
    if index_type == IVF_SQ8:
        return n * (d + _ID_BYTES) + centroids + 2 * 4 * d
    # ivf-pq: 4-bit codes, plus the 16-centroid codebooks; the re-rank vectors are memory-mapped.
    m = pq_subquantizers(d)
    return n * ((m + 1) // 2 + _ID_BYTES) + centroids + 16 * 4 * d


def plan_for(index_type: str, n: int, d: int) -> IndexPlan:
    """The plan of a given concrete type for n vectors of width d.

    Raises:
        IndexingError: too few vectors to train an IVF type.
    """
    nlist = choose_nlist(n) if index_type in IVF_TYPES else None
    # k-means wants MIN_POINTS_PER_LIST points per centroid: nlist lists, or PQ's 16 codes.
    need = MIN_POINTS_PER_LIST * (16 if index_type == IVF_PQ else 1)
    if index_type in IVF_TYPES and n < need:
        raise IndexingError(
            f"a {index_type} index needs at least {need} vectors to train, got {n}: "
            f"use --index-type {FLAT} or auto"
        )
    return IndexPlan(
        index_type,
        factory_for(index_type, d, nlist),
        nlist,
        estimate_bytes(index_type, n, d, nlist),
    )


def _trainable(index_type: str, n: int) -> bool:
    try:
        plan_for(index_type, n, 1)
    except IndexingError:
        return False
    return True


def _fits(plan: IndexPlan, budget: int | None) -> bool:
    return budget is None or plan.estimated_bytes <= budget


def _too_big(plan: IndexPlan, budget: int, n: int) -> IndexingError:
    return IndexingError(
        f"a {plan.index_type} index of {n} vectors needs about {plan.estimated_bytes:,} bytes but "
        f"the memory budget is {budget:,}: raise --memory-budget"
    )


def choose(n: int, d: int, config: AnnConfig) -> IndexPlan:
    """Pick the index for n vectors of width d (the rule is in the module docstring).

    Raises:
        IndexingError: the named type, or with auto every allowed type, exceeds the budget.
    """
    return candidates(n, d, config)[0]


def candidates(n: int, d: int, config: AnnConfig) -> list[IndexPlan]:
    """Every plan the config allows for n x d that fits the budget, best first (see choose).

    A named type gives one plan; auto gives the rule's order, so a builder can fall back to the
    next when one cannot reach the target recall.

    Raises:
        IndexingError: nothing fits the budget.
    """
    budget = config.memory_budget_bytes
    if config.index_type != AUTO:
        plan = plan_for(config.index_type, n, d)
        if not _fits(plan, budget):
            raise _too_big(plan, budget or 0, n)
        return [plan]
    kinds = [FLAT] if n < FLAT_MAX_VECTORS else []
    kinds += [IVF_FLAT, IVF_SQ8] + ([] if config.mutable else [IVF_PQ])
    plans = [plan_for(kind, n, d) for kind in kinds if _trainable(kind, n)]
    if fitting := [plan for plan in plans if _fits(plan, budget)]:
        logger.info("auto index type for %d x %d: %s", n, d, fitting[0].factory)
        return fitting
    smallest = min(plans, key=lambda p: p.estimated_bytes)
    raise IndexingError(
        f"no index type fits the memory budget of {budget or 0:,} bytes for {n} vectors of "
        f"dimension {d}: the smallest, {smallest.index_type}, needs about "
        f"{smallest.estimated_bytes:,}; raise --memory-budget"
    )


def training_rows(n: int, nlist: int, seed: int) -> np.ndarray | None:
    """Sorted int64 rows (of n) an IVF index of nlist lists trains on; None: all n rows.

    The one sampling rule of build_ann_index and of the sharded build (indexing.shards), so both
    train the same quantizer on the same rows.
    """
    size = min(n, max(nlist * TRAIN_POINTS_PER_LIST, 16 * MIN_POINTS_PER_LIST))
    if size == n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))  # (S,)


def _training_sample(vectors: np.ndarray, nlist: int, seed: int) -> np.ndarray:
    rows = training_rows(len(vectors), nlist, seed)  # (S,) or None
    if rows is None:
        return vectors
    return np.ascontiguousarray(vectors[rows])  # (N, D) -> (S, D)


def trained_empty_index(plan: IndexPlan, train: np.ndarray, seed: int = 0):  # type: ignore[no-untyped-def]
    """An empty index for ``plan``: IVF types trained on float32 (S, D) ``train`` as
    build_ann_index trains them (its seed; k-means on the GPUs when available), without a direct
    map; other types need no training (only train's width is used)."""
    index = faiss.index_factory(train.shape[1], plan.factory, faiss.METRIC_INNER_PRODUCT)
    if plan.index_type in IVF_TYPES:
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = seed
        with kmeans_on_gpus(ivf) if gpu_available() else contextlib.nullcontext():
            index.train(train)  # (S, D)
    return index


def build_ann_index(plan: IndexPlan, ids: np.ndarray, vectors: np.ndarray, seed: int = 0):  # type: ignore[no-untyped-def]
    """Train (IVF types, on a seeded sample) and fill a FAISS index for ``plan``.

    With faiss-gpu and a GPU (indexing.gpu.gpu_available), the IVF k-means runs on the GPUs and
    IVF-Flat/IVF-SQ8 are filled there; the index returned is always a CPU index.

    Args:
        plan: from choose or plan_for.
        ids: int64 (N,) entry ids, >= 0 and unique.
        vectors: float32 (N, D) unit-norm rows, row i for ids[i].
        seed: seeds the training sample and k-means.

    Returns:
        The faiss.Index, holding every vector under its id.
    """
    d = vectors.shape[1]
    index = faiss.index_factory(d, plan.factory, faiss.METRIC_INNER_PRODUCT)
    if plan.index_type not in IVF_TYPES:
        if len(vectors):
            index.add_with_ids(vectors, ids)  # (N, D) with (N,) ids
        return index
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = seed
    on_gpus = gpu_available()
    sample = _training_sample(vectors, plan.nlist or 1, seed)  # (S, D)
    with kmeans_on_gpus(ivf) if on_gpus else contextlib.nullcontext():
        index.train(sample)  # (S, D)
    if plan.index_type == IVF_PQ:  # fast-scan lists and the refine store: CPU only
        if len(vectors):
            index.add_with_ids(vectors, ids)  # (N, D) with (N,) ids
        return index
    if on_gpus and len(vectors):
        index = add_on_gpus(index, vectors, ids)  # (N, D) with (N,) ids, back on the CPU
        ivf = faiss.extract_index_ivf(index)
    # Explicit ids in the lists + a hashtable: add/remove/reconstruct by id, no IDMap.
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
    if not on_gpus and len(vectors):
        index.add_with_ids(vectors, ids)  # (N, D) with (N,) ids
    return index


def index_type_of(index: faiss.Index) -> str | None:
    """Which INDEX_TYPES a loaded FAISS index is, or None for anything write_index never makes."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap2):
        inner = faiss.downcast_index(index.index)
        if isinstance(inner, faiss.IndexFlat):
            return FLAT
        if isinstance(inner, faiss.IndexHNSW):
            return HNSW
        if isinstance(inner, faiss.IndexRefine):
            base = faiss.downcast_index(inner.base_index)
            return IVF_PQ if isinstance(base, faiss.IndexIVFPQFastScan) else None
        return None
    if isinstance(index, faiss.IndexIVFFlat):
        return IVF_FLAT
    if isinstance(index, faiss.IndexIVFScalarQuantizer):
        return IVF_SQ8
    return None


def index_ids(index: faiss.Index) -> np.ndarray:
    """int64 (N,) ids stored in an index, unsorted (IDMap's map, or the IVF lists' ids)."""
    index = faiss.downcast_index(index)
    if hasattr(index, "id_map"):
        return faiss.vector_to_array(index.id_map)
    if isinstance(index, faiss.IndexIVF):
        invlists = index.invlists
        assert invlists is not None  # a loaded IVF index always has its lists
        parts = [
            faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
            for i in range(index.nlist)
            if invlists.list_size(i)
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return np.arange(index.ntotal, dtype=np.int64)  # plain index: ids are row numbers
