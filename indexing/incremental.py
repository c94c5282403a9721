"""The previous version's index directory + tonight's entries and (N, D) vectors -> the new
version's FAISS index made by removing and adding ids with the same trained quantizer, or the
reason it must be rebuilt (retrained) instead.

Ids are stable across versions (carry_ids): a key keeps the id it had in the previous version's
mapping; a new key gets an id above the previous version's largest. An entry whose caption text
changed keeps its id but gets a new vector (removed, then added), since a vector is a function of
the caption text and the embedder (the embedder must be the previous version's, or it rebuilds).

update_index rebuilds (returns no index) when any of these holds, checked in this order:

1. there is no previous index, or it cannot be read, or it is not an IVF-Flat/IVF-SQ8 index with
   a training record (Flat is exact: rebuilt from the catalog, nothing to train);
2. the embedder or the dimension changed, or the index type asked for (or auto's choice) changed;
3. the collection grew or shrank past indexing.drift.RebuildRule since training;
4. after the removals and additions, the quantizer fits worse than the rule allows (the residual
   has risen: drift; the lists' imbalance too, if the rule asks);
5. re-tuning on held-out rows cannot reach the target recall at any nprobe.

Otherwise the search parameters are re-tuned (always: the tuner's exact neighbours cost about as
much as re-measuring the recorded nprobe, see docs/benchmarks.md, "Incremental updates"), and the
manifest keeps the previous training record so the next update measures drift since training.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexing.ann import (
    AUTO,
    FLAT,
    IVF_FLAT,
    IVF_SQ8,
    AnnConfig,
    candidates,
    estimate_bytes,
    factory_nlist,
    index_ids,
    index_type_of,
)
from indexing.build import INDEX_FILE, MANIFEST_FILE, MAPPING_FILE, IndexEntry, Manifest
from indexing.drift import QuantizerFit, RebuildRule, measure_fit
from indexing.tuning import TargetRecallError, TuningResult, holdout_rows, tune

logger = logging.getLogger(__name__)

INCREMENTAL, REBUILT = "incremental", "rebuilt"
INCREMENTAL_TYPES = (IVF_FLAT, IVF_SQ8)


@dataclass(frozen=True, slots=True)
class Changes:
    """Tonight's entries with carried ids, and what differs from the previous index."""

    entries: list[IndexEntry]
    remove: np.ndarray  # int64 (R,) ids of the previous index to remove
    add: np.ndarray  # int64 (A,) rows of entries (and vectors) to add


@dataclass(frozen=True, slots=True)
class IndexUpdate:
    """What update_index decided.

    Attributes:
        mode: INCREMENTAL (``index`` holds the result) or REBUILT (build it from scratch).
        reason: why, in words.
        entries: tonight's entries with the ids to write (carried from the previous version).
        index: the updated CPU index (incremental), or None (rebuild).
        manifest: describes ``index`` (incremental) or is the input manifest (rebuild).
        added, removed: vectors added to and removed from the previous index (0 on a rebuild).
        seconds: time per step of the incremental path that ran: read, apply, fit, tune.
    """

    mode: str
    reason: str
    entries: list[IndexEntry]
    index: faiss.Index | None
    manifest: Manifest
    added: int = 0
    removed: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def report(self) -> dict[str, object]:
        """The decision as JSON-ready data (the update's summary and version record)."""
        return {"mode": self.mode, "reason": self.reason, "index_type": self.manifest.index_type,
                "added": self.added, "removed": self.removed,
                "seconds": dict(self.seconds)}  # fmt: skip


class _Rebuild(Exception):
    """Internal: the incremental path gives up; the message is the reason."""


class _Steps:
    """Seconds per step of the incremental path."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 3)


def carry_ids(previous: pa.Table | None, entries: Sequence[IndexEntry]) -> Changes:
    """Give each entry its key's id in ``previous`` (columns id, key, caption), new keys ids above
    the largest previous id, and list what to remove and add (see the module docstring)."""
    if previous is None:
        return Changes(list(entries), np.zeros(0, np.int64), np.arange(len(entries)))
    before = {
        key: (int(i), caption)
        for i, key, caption in zip(
            previous.column("id").to_pylist(),
            previous.column("key").to_pylist(),
            previous.column("caption").to_pylist(),
            strict=True,
        )
    }
    next_id = max((i for i, _ in before.values()), default=-1) + 1
    out: list[IndexEntry] = []
    add: list[int] = []
    changed: list[int] = []
    for row, entry in enumerate(entries):
        old = before.get(entry.key)
        if old is None:
            out.append(replace(entry, id=next_id))
            next_id += 1
            add.append(row)
            continue
        out.append(replace(entry, id=old[0]))
        if old[1] != entry.caption:
            changed.append(old[0])
            add.append(row)
    live = {e.key for e in entries}
    gone = [i for key, (i, _) in before.items() if key not in live]
    remove = np.array(sorted(gone + changed), dtype=np.int64)
    return Changes(out, remove, np.array(add, dtype=np.int64))


def _read_previous(directory: Path) -> tuple[Manifest, pa.Table]:
    """The previous version's manifest and its mapping's id, key and caption columns.

    Raises:
        _Rebuild: either cannot be read.
    """
    try:
        manifest = Manifest.from_json((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
        mapping = pq.read_table(directory / MAPPING_FILE, columns=["id", "key", "caption"])
    except (OSError, pa.ArrowException) as err:
        raise _Rebuild(f"the previous index cannot be read ({err})") from err
    except ValueError as err:  # Manifest.from_json's documented error for a bad manifest
        raise _Rebuild(f"the previous manifest is not valid ({err})") from err
    if mapping.num_rows != manifest.count:
        raise _Rebuild(f"the previous mapping has {mapping.num_rows} rows, its manifest "
                       f"{manifest.count}")  # fmt: skip
    return manifest, mapping


def _config_reason(before: Manifest, manifest: Manifest, ann: AnnConfig) -> None:
    """Raise _Rebuild when the previous index is not one to update with this config."""
    kind = before.index_type
    if kind == FLAT:
        raise _Rebuild("flat is exact: built from the catalog, nothing to train")
    if kind not in INCREMENTAL_TYPES:
        raise _Rebuild(f"the previous index is {kind}, which cannot remove ids")
    if (before.embedder_sha256, before.dimension) != (manifest.embedder_sha256,
                                                      manifest.dimension):  # fmt: skip
        raise _Rebuild("the embedder changed")
    allowed = [plan.index_type for plan in candidates(manifest.count, manifest.dimension, ann)]
    if ann.index_type != AUTO and ann.index_type != kind:
        raise _Rebuild(f"the index type changed from {kind} to {ann.index_type}")
    if kind not in allowed:
        raise _Rebuild(f"{kind} no longer fits the memory budget")
    if ann.index_type == AUTO and allowed[0] == FLAT:
        raise _Rebuild(f"{manifest.count} vectors: auto chooses exact flat")
    if before.trained_count is None or before.train_residual is None:
        raise _Rebuild("the previous index has no training record (built before they existed)")


def _load_index(directory: Path, before: Manifest, ids: np.ndarray) -> faiss.Index:
    """Read the previous index into memory (not memory-mapped: it is changed) and check it."""
    try:
        index = faiss.read_index(str(directory / INDEX_FILE))
    except RuntimeError as err:  # FAISS raises RuntimeError for a corrupt or truncated file
        raise _Rebuild(f"the previous index file cannot be read ({err})") from err
    if index_type_of(index) != before.index_type:
        raise _Rebuild(f"the previous index file is not the {before.index_type} its manifest says")
    if not np.array_equal(np.sort(index_ids(index)), np.sort(ids)):
        raise _Rebuild("the previous index's ids differ from its mapping's")
    ivf = faiss.extract_index_ivf(index)
    if ivf.direct_map.type != faiss.DirectMap.Hashtable:  # type: ignore[attr-defined]
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
    return index


def apply_changes(
    index: faiss.Index, remove: np.ndarray, add_ids: np.ndarray, add_vectors: np.ndarray
) -> None:
    """Remove ids (int64 (R,)) from an IVF index with a hashtable direct map, then add
    float32 (A, D) vectors under int64 (A,) ids; an id may be in both (its vector changed)."""
    if len(remove):
        removed = index.remove_ids(faiss.IDSelectorArray(len(remove), faiss.swig_ptr(remove)))
        if removed != len(remove):
            raise RuntimeError(f"removed {removed} of {len(remove)} ids: the index lacks some")
    if len(add_ids):
        index.add_with_ids(np.ascontiguousarray(add_vectors), add_ids)  # (A, D) with (A,) ids


def retune(
    index: faiss.Index, kind: str, ids: np.ndarray, vectors: np.ndarray, target: float, seed: int
) -> TuningResult:
    """Tune ``index`` (holding int64 (N,) ids with float32 (N, D) vectors) as write_index does:
    the held-out rows are taken out for the tuning and put back after.

    Raises:
        TargetRecallError: no nprobe reaches ``target`` (the rows are put back first).
    """
    held = holdout_rows(len(ids), seed)  # (Q,)
    rest = np.ones(len(ids), dtype=bool)  # (N,)
    rest[held] = False
    queries = np.ascontiguousarray(vectors[held])  # (Q, D)
    apply_changes(index, ids[held], np.zeros(0, np.int64), queries[:0])
    try:
        nlist = faiss.extract_index_ivf(index).nlist
        base = np.ascontiguousarray(vectors[rest])  # (N - Q, D)
        return tune(index, kind, nlist, ids[rest], base, queries, target)
    finally:
        apply_changes(index, np.zeros(0, np.int64), ids[held], queries)  # (Q, D)


def update_index(
    previous: Path | None,
    entries: Sequence[IndexEntry],
    vectors: np.ndarray,
    manifest: Manifest,
    ann: AnnConfig,
    rule: RebuildRule | None = None,
) -> IndexUpdate:
    """Update the previous version's index for tonight, or say why to rebuild.

    Args:
        previous: the previous version's index directory (local), None on the first night.
        entries: tonight's entries (any ids: they are replaced by carried ones).
        vectors: float32 (N, D) unit-norm rows, row i for entries[i].
        manifest: tonight's manifest without index fields (embedder, dimension, count).
        ann: the collection's index config (mutable).
        rule: when to retrain; default RebuildRule().

    Returns:
        The decision; on REBUILT, build with write_index(..., ann=ann) from its entries.
    """
    rule = rule or RebuildRule()
    try:
        if previous is None:
            raise _Rebuild("no previous version")
        before, mapping = _read_previous(previous)
    except _Rebuild as why:
        return IndexUpdate(REBUILT, str(why), list(entries), None, manifest)
    changes = carry_ids(mapping, entries)
    steps = _Steps()
    try:
        index, tuned = _incremental(previous, before, mapping, changes, vectors, manifest, ann,
                                    rule, steps)  # fmt: skip
    except _Rebuild as why:
        logger.info("rebuilding the index: %s", why)
        return IndexUpdate(REBUILT, str(why), changes.entries, None, manifest,
                           seconds=steps.seconds)  # fmt: skip
    return IndexUpdate(
        INCREMENTAL,
        f"the quantizer trained on {before.trained_count} vectors still fits: removed "
        f"{len(changes.remove)}, added {len(changes.add)}",
        changes.entries,
        index,
        _describe(before, manifest, tuned, ann),
        added=len(changes.add),
        removed=len(changes.remove),
        seconds=steps.seconds,
    )


def _incremental(
    directory: Path,
    before: Manifest,
    mapping: pa.Table,
    changes: Changes,
    vectors: np.ndarray,
    manifest: Manifest,
    ann: AnnConfig,
    rule: RebuildRule,
    step: _Steps,
) -> tuple[faiss.Index, TuningResult]:
    _config_reason(before, manifest, ann)
    assert before.trained_count is not None and before.train_residual is not None
    if why := rule.count_reason(before.trained_count, len(changes.entries)):
        raise _Rebuild(why)
    with step("read"):
        index = _load_index(directory, before, mapping.column("id").to_numpy())
    ids = np.fromiter((e.id for e in changes.entries), np.int64, len(changes.entries))  # (N,)
    with step("apply"):
        apply_changes(index, changes.remove, ids[changes.add], vectors[changes.add])
    trained = QuantizerFit(before.trained_count, before.train_residual,
                           before.train_imbalance or 1.0)  # fmt: skip
    with step("fit"):
        now = measure_fit(index, vectors, ann.seed)
    logger.info("quantizer fit: trained %s, now %s", trained, now)
    if why := rule.reason(trained, now):
        raise _Rebuild(why)
    try:
        with step("tune"):
            tuned = retune(index, before.index_type, ids, vectors, ann.target_recall, ann.seed)
    except TargetRecallError as err:
        raise _Rebuild(f"after the update, {err}") from err
    return index, tuned


def _describe(before: Manifest, manifest: Manifest, tuned: TuningResult, ann: AnnConfig
              ) -> Manifest:  # fmt: skip
    """Tonight's manifest for the updated index: the previous type, factory and training record,
    the re-tuned parameters and recall, the bytes at tonight's count."""
    nlist = factory_nlist(before.factory)
    return replace(
        manifest,
        index_type=before.index_type,
        factory=before.factory,
        search_params=tuple(sorted(tuned.params.items())),
        target_recall=float(ann.target_recall),
        recall_at_10=round(tuned.recall_at_10, 6),
        query_ms=None if tuned.query_ms is None else round(tuned.query_ms, 6),
        index_bytes=estimate_bytes(before.index_type, manifest.count, manifest.dimension, nlist),
        trained_count=before.trained_count,
        train_residual=before.train_residual,
        train_imbalance=before.train_imbalance,
    )
