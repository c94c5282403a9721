"""A sharded build's partitions, shard files and gathered sample -> the index directory that
write_index would write for the same vectors: merge the shards, tune on the held-out rows (their
exact neighbours streamed from the partitions), add the held-out rows, stream the mapping and
embeddings partitions into single files, write the manifest, and move the directory into place.

The work directory (work_dir_for) is a hidden sibling of the output, as write_index's temporary
directory is; the workers' partitions and shards live in its STAGING_DIR, which is removed before
the directory is renamed onto the output. So the output appears complete or not at all, and a
failed job leaves only the work directory, which the job removes (remove_work_dir).
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq

from indexing.ann import FLAT, IVF_TYPES, AnnConfig, IndexPlan
from indexing.build import (
    EMBEDDINGS_FILE,
    INDEX_FILE,
    MANIFEST_FILE,
    MAPPING_FILE,
    MAPPING_SCHEMA,
    Manifest,
    embeddings_schema,
    publish_index_dir,
    tuned_manifest,
)
from indexing.drift import measure_fit
from indexing.keyword import KEYWORD_DIR, write_keyword_index
from indexing.partitions import Partition, concat_partitions, read_rows, read_vectors
from indexing.shards import (
    ShardPlan,
    from_bytes,
    merge_shards,
    stream_build,
    train_template,
)
from indexing.tuning import (
    RECALL_K,
    TargetRecallError,
    TuningResult,
    tune,
    tune_to_truth,
    tuning_queries,
)

logger = logging.getLogger(__name__)

STAGING_DIR = "_staging"


@dataclass(frozen=True, slots=True, eq=False)  # eq=False: ndarray == is elementwise
class Sample:
    """Vectors gathered in one place: sorted int64 (S,) ids and float32 (S, D) vectors, row i for
    ids[i]. The final step needs those of ShardPlan.final_ids (held out, fit sample)."""

    ids: np.ndarray
    vectors: np.ndarray

    def subset(self, wanted: np.ndarray) -> Sample:
        """The sample of the sorted ``wanted`` ids (all of them in this one)."""
        return Sample(wanted, self.take(wanted))

    def take(self, wanted: np.ndarray) -> np.ndarray:
        """float32 (W, D) vectors of the sorted ``wanted`` ids (all of them in the sample)."""
        rows = np.searchsorted(self.ids, wanted)  # (W,)
        if len(wanted) and (rows.max() >= len(self.ids) or (self.ids[rows] != wanted).any()):
            raise ValueError("the sample lacks some of the wanted ids: gather ShardPlan.sample_ids")
        return np.ascontiguousarray(self.vectors[rows])  # (S, D) -> (W, D)


def work_dir_for(out: Path) -> Path:
    """A fresh hidden sibling of ``out`` to build in (write_index's temporary name)."""
    return out.parent / f".{out.name}.tmp-{uuid.uuid4().hex}"


def remove_work_dir(work: Path) -> None:
    """Remove a failed build's work directory (partitions, shards and all)."""
    shutil.rmtree(work, ignore_errors=True)


def exact_neighbours(
    queries: np.ndarray, partitions: Sequence[Partition], exclude: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Ids of each query's k exact nearest vectors (inner product) among the partitions' vectors
    but the sorted ``exclude`` ids, reading the partitions batch by batch.

    Args:
        queries: float32 (M, D).

    Returns:
        float32 (M, k) scores and int64 (M, k) ids, nearest first.
    """
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for partition in partitions:
        for ids, vectors in read_vectors(partition):
            keep = ~np.isin(ids, exclude, assume_unique=True)  # (B,)
            if not keep.any():
                continue
            ids, vectors = ids[keep], np.ascontiguousarray(vectors[keep])  # (b,), (b, D)
            scores, rows = faiss.knn(queries, vectors, min(k, len(ids)), faiss.METRIC_INNER_PRODUCT)
            heap.add_result(scores, ids[rows])  # (M, k') rows -> ids
    heap.finalize()
    return heap.D, heap.I  # (M, k), (M, k)


def _tune(
    index: faiss.Index,
    plan: IndexPlan,
    shards: ShardPlan,
    partitions: Sequence[Partition],
    held: np.ndarray,
    target_recall: float,
) -> TuningResult:
    base = shards.count - len(shards.holdout)
    k = min(RECALL_K, base)
    if k == 0 or not len(held):  # nothing to measure: tune's own answer for that case
        empty = np.zeros((0, shards.dimension), dtype=np.float32)
        return tune(index, plan.index_type, plan.nlist, shards.holdout[:0], empty, held, 1.0)
    queries = tuning_queries(held)  # (Q, D) -> (2Q, D)
    scores, truth = exact_neighbours(queries, partitions, shards.holdout, k)  # (2Q, k) x2
    return tune_to_truth(index, plan.index_type, plan.nlist, queries, truth, target_recall,
                         kth_scores=scores[:, -1])  # fmt: skip


def build_and_tune(
    shards: ShardPlan,
    partitions: Sequence[Partition],
    shard_paths: Sequence[str],
    template: bytes,
    sample: Sample,
    ann: AnnConfig,
) -> tuple[faiss.Index, IndexPlan, TuningResult]:
    """The index of the first candidate that reaches the target recall, with the held-out rows
    added; the first is merged from the shards, a fallback (auto only) filled by streaming."""
    for number, plan in enumerate(shards.plans):
        if number == 0 and shards.sharded:
            index = merge_shards(template, plan, shard_paths)
        else:
            if number == 0:
                trained = from_bytes(template)
            else:  # a fallback type: train it on the same rows, read again
                trained = train_template(plan, shards, *read_rows(partitions, shards.training))
            index = stream_build(plan, trained, partitions, shards.holdout)
        if plan.index_type == FLAT:
            return index, plan, TuningResult({}, 1.0, None)  # exact: nothing to tune
        held = sample.take(shards.holdout)  # (Q, D)
        try:
            tuned = _tune(index, plan, shards, partitions, held, ann.target_recall)
        except TargetRecallError as err:
            if number == len(shards.plans) - 1:
                raise
            logger.warning("%s; trying the next index type", err)
            continue
        index.add_with_ids(held, shards.holdout)  # (Q, D) with (Q,) ids
        return index, plan, tuned
    raise AssertionError("candidates() returns at least one plan")


def _tuned_manifest(
    manifest: Manifest, plan: IndexPlan, tuned: TuningResult, index: faiss.Index,
    shards: ShardPlan, sample: Sample, ann: AnnConfig,
) -> Manifest:  # fmt: skip
    """indexing.build's tuned manifest, the fit measured on the plan's own sample."""
    fit = None
    if plan.index_type in IVF_TYPES:
        fit = measure_fit(index, sample.take(shards.fit), ann.seed)  # its own sample: all given
    return tuned_manifest(manifest, plan, tuned, ann, fit)


def _write_keyword(work: Path) -> None:
    # KEYWORD INDEX: the one call site in the sharded build. write_keyword_index takes the whole
    # mapping table (its filter fields are coded over all rows), so the mapping is read back here:
    # every caption in this one step, no vectors. A write_keyword_index over record batches
    # would let this stream like the other files.
    write_keyword_index(work / KEYWORD_DIR, pq.read_table(work / MAPPING_FILE))


def finish_index(
    work: Path,
    out: Path,
    overwrite: bool,
    shards: ShardPlan,
    partitions: Sequence[Partition],
    shard_paths: Sequence[str],
    template: bytes,
    sample: Sample,
    manifest: Manifest,
    ann: AnnConfig,
) -> Manifest:
    """Write the index directory of a sharded build into ``work`` and move it onto ``out``.

    Args:
        work: the build's work directory (work_dir_for), holding STAGING_DIR.
        partitions: every partition, in range order (ids increasing).
        shard_paths: the shard files of the first plan, in range order (none for hnsw).
        template: to_bytes of the trained empty index of the first plan.
        sample: the vectors of shards.final_ids() (or more).
        manifest: embedder, dimension, count and caption files; the index fields are filled in.

    Returns:
        The written manifest.
    """
    work.mkdir(parents=True, exist_ok=True)  # no partition made it for an empty collection
    index, plan, tuned = build_and_tune(shards, partitions, shard_paths, template, sample, ann)
    if index.ntotal != shards.count:
        raise RuntimeError(f"built {index.ntotal} vectors, expected {shards.count}")
    manifest = _tuned_manifest(manifest, plan, tuned, index, shards, sample, ann)
    faiss.write_index(index, str(work / INDEX_FILE))
    del index
    concat_partitions([p.mapping_path for p in partitions], MAPPING_SCHEMA, work / MAPPING_FILE)
    schema = embeddings_schema(shards.dimension)
    concat_partitions([p.embeddings_path for p in partitions], schema, work / EMBEDDINGS_FILE)
    _write_keyword(work)
    (work / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    shutil.rmtree(work / STAGING_DIR, ignore_errors=True)
    publish_index_dir(work, out, overwrite)
    logger.info(
        "wrote %s index %s from %d partitions and %d shards: %d vectors of dimension %d",
        manifest.index_type, out, len(partitions), len(shard_paths), manifest.count,
        manifest.dimension,
    )  # fmt: skip
    return manifest
