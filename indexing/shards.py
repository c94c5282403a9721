"""A collection's size -> which ids are held out, train the quantizer and measure its fit
(ShardPlan); their vectors -> a trained, empty index (train_template); a partition -> a shard of
it (fill_shard); the shards -> one index (merge_shards, or merge_shards_on_disk).

Every choice is the single-worker build's (indexing.build.write_index with an AnnConfig): the same
candidates, the same held-out ids (indexing.tuning.holdout_rows), the same training rows
(indexing.ann.training_rows over the rows not held out, in id order) and k-means seed, and the
same sample for indexing.drift.measure_fit. So on the same vectors both build the same quantizer
and the same inverted lists, in the same order (shards are merged in range order, i.e. id order,
and the held-out rows are added last, as write_index adds them).

Merging, by type (research B1/B2; FAISS merges IVF lists only between indexes made from one
trained empty index, and neither side may have a direct map yet):

- flat (``IDMap2,Flat``): ``merge_from`` concatenates the codes and ids.
- ivf-flat, ivf-sq8: ``IndexIVF.merge_from`` appends each shard's lists to the merged lists; the
  hashtable direct map (add/remove/reconstruct by id) is built once, after the merge.
- ivf-pq (``IDMap2,IVF..,PQ..x4fs,RFlat``) and hnsw are not sharded: the ID map and the re-rank
  wrapper do not merge, merging the fast-scan IVF part by hand gave wrong codes (``merge_from`` of
  its block-packed lists, faiss 1.15.1: other search results than one index filled with the same
  vectors), and a graph cannot be merged. The final step adds every partition to one index
  (stream_build, indexing.sharded), reading them batch by batch; ivf-pq is what auto picks only
  when nothing else fits the memory budget, hnsw only when named.

Which merge when: the index job merges in memory (merge_shards): the merged index is the size of
what search keeps resident or memory-maps (the manifest's index_bytes; 1.6 GB for ivf-flat at
1M x 384), the merging worker holds it once, and index.faiss stays the one-file format every
reader opens with IO_FLAG_MMAP. For an IVF index larger than the merging machine's memory,
merge_shards_on_disk copies the shards' lists into FAISS's OnDiskInvertedLists (an ``.ivfdata``
file next to index.faiss) without holding them. Such an index must be opened with
``faiss.IO_FLAG_ONDISK_SAME_DIR``: opened with IO_FLAG_MMAP, as indexing.search opens IVF
indexes, FAISS 1.15.1 crashed here, so the job does not write one until search opens it so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from indexing.ann import (
    FLAT,
    IVF_FLAT,
    IVF_SQ8,
    IVF_TYPES,
    AnnConfig,
    IndexPlan,
    candidates,
    trained_empty_index,
    training_rows,
)
from indexing.drift import FIT_SAMPLE
from indexing.partitions import Partition, PartitionWriteError, read_vectors
from indexing.tuning import holdout_rows

logger = logging.getLogger(__name__)

SHARDS_DIR = "shards"
# Types whose shards merge; hnsw and ivf-pq are filled in one place (see the module docstring).
SHARDABLE_TYPES = (FLAT, IVF_FLAT, IVF_SQ8)
_NO_IDS = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True, slots=True, eq=False)  # eq=False: ndarray == is elementwise
class ShardPlan:
    """What a sharded build of ``count`` vectors builds, and which ids it needs in one place.

    Attributes:
        count: entries N (ids 0 .. N-1).
        dimension: vector width D.
        plans: indexing.ann.candidates for N x D, best first; with auto, the final step falls
            back to the next when one misses the target recall.
        seed: AnnConfig.seed.
        holdout: sorted int64 ids held out of the index while it is tuned (empty for flat).
        training: sorted int64 ids the IVF quantizer trains on (empty without an IVF candidate).
        fit: sorted int64 ids measure_fit samples (empty without an IVF candidate).
    """

    count: int
    dimension: int
    plans: tuple[IndexPlan, ...]
    seed: int
    holdout: np.ndarray
    training: np.ndarray
    fit: np.ndarray

    @property
    def plan(self) -> IndexPlan:
        """The first choice, the one the workers' shards are built for."""
        return self.plans[0]

    @property
    def sharded(self) -> bool:
        """Whether workers fill shards of the first choice (not for hnsw and ivf-pq)."""
        return self.plan.index_type in SHARDABLE_TYPES

    def sample_ids(self) -> np.ndarray:
        """Sorted int64 ids whose vectors the training step gathers: held out, training, fit."""
        return np.union1d(np.union1d(self.holdout, self.training), self.fit)

    def final_ids(self) -> np.ndarray:
        """Sorted int64 ids whose vectors the final step needs: held out and fit sample."""
        return np.union1d(self.holdout, self.fit)


def base_ids(positions: np.ndarray, holdout: np.ndarray) -> np.ndarray:
    """Row positions among the ids not held out (0 .. N-Q-1) -> those ids.

    Args:
        positions: sorted int64 (S,) positions in the ids 0 .. N-1 without ``holdout``.
        holdout: sorted int64 (Q,) held-out ids.
    """
    # The j-th id that is not held out is j plus the held-out ids h below it; h lies below it
    # exactly when h - (number of held-out ids before h) <= j.
    shifted = holdout - np.arange(len(holdout), dtype=np.int64)  # (Q,), non-decreasing
    return positions + np.searchsorted(shifted, positions, side="right")  # (S,)


def fit_ids(count: int, seed: int) -> np.ndarray:
    """The ids indexing.drift.measure_fit samples from an index of ``count`` vectors."""
    if count <= FIT_SAMPLE:
        return np.arange(count, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(count, size=FIT_SAMPLE, replace=False))


def shard_plan(count: int, dimension: int, ann: AnnConfig) -> ShardPlan:
    """The ShardPlan of a collection of ``count`` vectors of width ``dimension``.

    Raises:
        IndexingError: the type or the budget allows no index (indexing.ann.candidates).
    """
    plans = tuple(candidates(count, dimension, ann))
    holdout = training = fit = _NO_IDS
    if plans[0].index_type == FLAT:
        plans = plans[:1]  # exact: never misses the target, so never falls back
    else:
        holdout = holdout_rows(count, ann.seed).astype(np.int64)  # positions are ids
    if ivf := [p for p in plans if p.index_type in IVF_TYPES]:
        base = count - len(holdout)
        rows = training_rows(base, ivf[0].nlist or 1, ann.seed)  # every IVF candidate: one nlist
        positions = np.arange(base, dtype=np.int64) if rows is None else rows.astype(np.int64)
        training = base_ids(positions, holdout)
        fit = fit_ids(count, ann.seed)
    return ShardPlan(count, dimension, plans, ann.seed, holdout, training, fit)


def train_template(plan: IndexPlan, shards: ShardPlan, ids: np.ndarray, vectors: np.ndarray):  # type: ignore[no-untyped-def]
    """Train an empty index of ``plan`` on the sample gathered for ``shards``.

    Args:
        plan: one of shards.plans.
        ids: sorted int64 (S,) ids, at least shards.training.
        vectors: float32 (S, D), row i for ids[i].

    Returns:
        The trained, empty faiss.Index (no direct map: shards must merge).
    """
    if plan.index_type in IVF_TYPES:
        rows = np.isin(ids, shards.training, assume_unique=True)  # (S,)
        train = np.ascontiguousarray(vectors[rows])  # (S, D) -> (T, D), in id order
    else:
        train = np.zeros((0, shards.dimension), dtype=np.float32)  # (0, D): nothing to train
    return trained_empty_index(plan, train, shards.seed)


def to_bytes(index: faiss.Index) -> bytes:
    """A FAISS index -> bytes (what workers get as a side input)."""
    return faiss.serialize_index(index).tobytes()


def from_bytes(data: bytes) -> faiss.Index:
    """to_bytes' output -> a new FAISS index."""
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def add_partitions(index: faiss.Index, partitions: Iterable[Partition], exclude: np.ndarray) -> int:
    """Add the partitions' vectors, but the sorted ``exclude`` ids, to ``index``, streaming.

    Returns:
        The vectors added.
    """
    added = 0
    for partition in partitions:
        for ids, vectors in read_vectors(partition):
            keep = ~np.isin(ids, exclude, assume_unique=True)  # (B,)
            if keep.any():
                index.add_with_ids(np.ascontiguousarray(vectors[keep]), ids[keep])  # (b, D)
                added += int(keep.sum())
    return added


def fill_shard(template: bytes, partition: Partition, exclude: np.ndarray, path: Path) -> int:
    """Add one partition (but the ``exclude`` ids) to a copy of the template; write it to path.

    Returns:
        The vectors in the shard.

    Raises:
        PartitionWriteError: the shard file could not be written.
    """
    index = from_bytes(template)
    added = add_partitions(index, [partition], exclude)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        faiss.write_index(index, str(tmp))
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # FAISS reports a failed write as RuntimeError
        with contextlib.suppress(OSError):  # e.g. its folder could not be made either
            tmp.unlink(missing_ok=True)
        raise PartitionWriteError(f"could not write shard {path}: {err}") from err
    return added


def merge_shards(template: bytes, plan: IndexPlan, shard_paths: Sequence[str]) -> faiss.Index:
    """Merge the shard files (in order) into one in-memory index of ``plan``'s type.

    Returns:
        The merged index; IVF-Flat and IVF-SQ8 get their hashtable direct map.
    """
    if plan.index_type not in SHARDABLE_TYPES:
        raise ValueError(f"{plan.index_type} shards cannot be merged")
    index = from_bytes(template)
    for path in shard_paths:
        shard = faiss.read_index(path)
        index.merge_from(shard, 0)
        del shard
    _set_hashtable(index, plan)
    logger.info("merged %d shards into one %s index of %d vectors", len(shard_paths),
                plan.index_type, index.ntotal)  # fmt: skip
    return index


def merge_shards_on_disk(
    template: bytes, plan: IndexPlan, shard_paths: Sequence[str], ivfdata: Path
) -> faiss.Index:
    """Merge IVF-Flat or IVF-SQ8 shard files into an index whose lists live in ``ivfdata``.

    The shards are memory-mapped and their lists copied into FAISS's OnDiskInvertedLists, so the
    merge needs no memory for the vectors. Write the returned index next to ``ivfdata`` and open
    it with ``faiss.IO_FLAG_ONDISK_SAME_DIR``.
    """
    from faiss.contrib.ondisk import merge_ondisk

    if plan.index_type not in (IVF_FLAT, IVF_SQ8):
        raise ValueError(f"only ivf-flat and ivf-sq8 merge on disk, not {plan.index_type}")
    index = from_bytes(template)
    merge_ondisk(index, list(shard_paths), str(ivfdata))
    _set_hashtable(index, plan)
    return index


def _set_hashtable(index: faiss.Index, plan: IndexPlan) -> None:
    if plan.index_type in (IVF_FLAT, IVF_SQ8):
        ivf = faiss.extract_index_ivf(index)
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]


def stream_build(
    plan: IndexPlan, template: faiss.Index, partitions: Iterable[Partition], exclude: np.ndarray
) -> faiss.Index:
    """Fill ``template`` (trained, empty) with every partition but the ``exclude`` ids, in one
    process: for the types that do not merge, and for a fallback type of auto."""
    if plan.index_type not in SHARDABLE_TYPES:
        logger.info("%s is not merged from shards: adding every partition in one process",
                    plan.index_type)  # fmt: skip
    _set_hashtable(template, plan)
    add_partitions(template, partitions, exclude)
    return template
