"""Caption entries + their unit-norm vectors (N, D) -> an index directory on local disk.

An index directory holds four files and the keyword index:

- ``index.faiss``: ``IndexIDMap2`` over an exact ``IndexFlatIP`` (factory string INDEX_FACTORY,
  inner-product metric). FAISS ids are the entry ids, not row numbers, so ids stay stable if the
  index is later rebuilt in another order, merged, or swapped for an approximate one, and
  ``reconstruct(id)`` works.
- ``mapping.parquet``: one IndexEntry per row (MAPPING_SCHEMA), id -> key, caption, source, member,
  what the image's source said about it (url, alt_text, metadata), and the image's sha256 and size
  and its caption's provenance (model, model_version, captioned_at), null where unknown. An index
  written before those columns existed still opens: they read as null
  (OPTIONAL_MAPPING_COLUMNS).
- ``embeddings.parquet``: id, key and the vector (embeddings_schema(D)), so an index can be rebuilt
  (another FAISS type, a merge) without re-embedding.
- ``manifest.json``: the Manifest: which embedder, dimension, count, metric, caption files, and
  for an approximate index (write_index with an AnnConfig, see indexing.ann) its type, factory
  string, tuned search parameters, measured recall@10, ms/query and resident bytes. Those fields
  are left out while they hold their defaults (exact Flat), so an exact index's manifest is the
  same as before index types existed and older manifests load as exact Flat.
- ``keyword/``: the BM25 full-text index over the mapping's captions (indexing.keyword, tantivy),
  with the filter fields; an index written before it existed gets one built in memory on open.

Inner product on unit-norm vectors is cosine similarity; write_index refuses vectors that are not
unit-norm so the recorded metric stays true.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from os import PathLike
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexing.ann import (
    FLAT,
    IVF_TYPES,
    AnnConfig,
    IndexPlan,
    build_ann_index,
    candidates,
)
from indexing.drift import QuantizerFit, measure_fit
from indexing.errors import OutputExistsError
from indexing.keyword import KEYWORD_DIR, write_keyword_index
from indexing.manifest import FORMAT_VERSION as FORMAT_VERSION
from indexing.manifest import INDEX_FACTORY as INDEX_FACTORY
from indexing.manifest import METRIC as METRIC
from indexing.manifest import Manifest as Manifest
from indexing.tuning import (
    TargetRecallError,
    TuningResult,
    holdout_rows,
    tune,
)

logger = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
MAPPING_FILE = "mapping.parquet"
EMBEDDINGS_FILE = "embeddings.parquet"
MANIFEST_FILE = "manifest.json"
INDEX_FILES = (INDEX_FILE, MAPPING_FILE, EMBEDDINGS_FILE, MANIFEST_FILE, KEYWORD_DIR)

# |norm - 1| allowed for a row to count as unit-norm: float32 rounding stays far below this.
UNIT_NORM_TOLERANCE = 1e-3


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One captioned image in an index.

    Attributes:
        id: FAISS id of the entry's vector; unique within an index, >= 0.
        key: the image's key, as the captioning stage wrote it.
        caption: the caption that was embedded.
        source: the archive (shard) the image came from.
        member: the image's member name inside that archive.
        url: where the image's source says it came from (img2dataset's ``url``), or None.
        alt_text: the source's own caption (img2dataset's original alt text), or None.
        metadata: a JSON object of the source's other fields, or None.
        sha256: hex digest of the image's bytes, or None.
        width, height: the decoded image's size in pixels, or None.
        model, model_version: the captioner's name and version, or None.
        captioned_at: ISO-8601 UTC time of the caption, or None.
    """

    id: int
    key: str
    caption: str
    source: str
    member: str
    url: str | None = None
    alt_text: str | None = None
    metadata: str | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    model: str | None = None
    model_version: str | None = None
    captioned_at: str | None = None


MAPPING_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("member", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("alt_text", pa.string()),
        pa.field("metadata", pa.string()),
        pa.field("sha256", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("model", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("captioned_at", pa.string()),
    ]
)
# MAPPING_SCHEMA's columns an older index may lack (they read as null).
OPTIONAL_MAPPING_COLUMNS = (
    "url",
    "alt_text",
    "metadata",
    "sha256",
    "width",
    "height",
    "model",
    "model_version",
    "captioned_at",
)


def embeddings_schema(dimension: int) -> pa.Schema:
    """Schema of embeddings.parquet for vectors of width ``dimension``."""
    return pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("key", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dimension), nullable=False),
        ]
    )


def validate_index_inputs(
    entries: Sequence[IndexEntry], vectors: np.ndarray, manifest: Manifest
) -> None:
    """Check that entries, vectors and manifest describe the same index.

    Raises:
        ValueError: with what disagrees and how to fix it.
    """
    if not isinstance(vectors, np.ndarray) or vectors.ndim != 2:
        shape = getattr(vectors, "shape", None)
        raise ValueError(f"vectors must be a 2-D numpy array (N, D), got shape {shape}")
    if vectors.dtype != np.float32:
        raise ValueError(
            f"vectors must be float32, got {vectors.dtype}: use TextEmbedder.embed's output"
        )
    if len(entries) != vectors.shape[0]:
        raise ValueError(f"{len(entries)} entries but {vectors.shape[0]} vectors: one row each")
    if vectors.shape[1] != manifest.dimension:
        raise ValueError(
            f"vectors have dimension {vectors.shape[1]} but the manifest says "
            f"{manifest.dimension}: build the manifest from the embedder that made the vectors"
        )
    if manifest.count != len(entries):
        raise ValueError(f"manifest.count is {manifest.count} but there are {len(entries)} entries")
    if not np.isfinite(vectors).all():
        raise ValueError("vectors contain NaN or inf")
    norms = np.linalg.norm(vectors, axis=1)  # (N, D) -> (N,)
    if len(norms) and np.abs(norms - 1.0).max() > UNIT_NORM_TOLERANCE:
        bad = int(np.argmax(np.abs(norms - 1.0)))
        raise ValueError(
            f"vectors must be unit-norm (the index scores cosine as inner product): row {bad} "
            f"has norm {norms[bad]:.4f}; normalise them or use TextEmbedder.embed"
        )
    ids = np.fromiter((e.id for e in entries), dtype=np.int64, count=len(entries))
    if len(ids) and ids.min() < 0:
        raise ValueError(f"entry ids must be >= 0 (FAISS uses -1 for 'no hit'), got {ids.min()}")
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dupes = unique[counts > 1][:5].tolist()
        raise ValueError(f"entry ids must be unique; repeated: {dupes}")


def _build_faiss_index(ids: np.ndarray, vectors: np.ndarray) -> faiss.Index:
    index = faiss.index_factory(vectors.shape[1], INDEX_FACTORY, faiss.METRIC_INNER_PRODUCT)
    index.add_with_ids(vectors, ids)  # (N, D) with (N,) ids
    return index


def _build_ann(
    ids: np.ndarray, vectors: np.ndarray, manifest: Manifest, ann: AnnConfig
) -> tuple[faiss.Index, Manifest]:
    """Choose, build and tune an index for ``ann``; the manifest records what was chosen.

    With auto, a type that misses the target recall gives way to the next that fits.
    """
    plans = candidates(len(vectors), vectors.shape[1], ann)
    for plan in plans[:-1]:
        try:
            return _build_plan(plan, ids, vectors, manifest, ann)
        except TargetRecallError as err:
            logger.warning("%s; trying the next index type", err)
    return _build_plan(plans[-1], ids, vectors, manifest, ann)


def _build_plan(
    plan: IndexPlan, ids: np.ndarray, vectors: np.ndarray, manifest: Manifest, ann: AnnConfig
) -> tuple[faiss.Index, Manifest]:
    if plan.index_type == FLAT:
        # Exact: recall 1 by definition, nothing to tune. Its query time is not measured, so
        # rebuilding the same captions writes the same manifest (a rerun is a no-op).
        index = build_ann_index(plan, ids, vectors, ann.seed)
        tuned = TuningResult({}, 1.0, None)
    else:
        # Build and tune without the held-out query rows, then add them: no second build.
        held = holdout_rows(len(vectors), ann.seed)  # (Q,)
        rest = np.ones(len(vectors), dtype=bool)  # (N,)
        rest[held] = False
        base_ids, base = ids[rest], np.ascontiguousarray(vectors[rest])  # (N-Q,), (N-Q, D)
        queries = np.ascontiguousarray(vectors[held])  # (Q, D)
        index = build_ann_index(plan, base_ids, base, ann.seed)
        tuned = tune(index, plan.index_type, plan.nlist, base_ids, base, queries, ann.target_recall)
        index.add_with_ids(queries, ids[held])  # (Q, D) with (Q,) ids
    fit = measure_fit(index, vectors, ann.seed) if plan.index_type in IVF_TYPES else None
    return index, tuned_manifest(manifest, plan, tuned, ann, fit)


def tuned_manifest(
    manifest: Manifest,
    plan: IndexPlan,
    tuned: TuningResult,
    ann: AnnConfig,
    fit: QuantizerFit | None,
) -> Manifest:
    """``manifest`` with what was chosen and measured: type, factory, tuned parameters, recall,
    query time, bytes, and (IVF types) the quantizer's fit at training time."""
    return replace(
        manifest,
        index_type=plan.index_type,
        factory=plan.factory,
        search_params=tuple(sorted(tuned.params.items())),
        target_recall=float(ann.target_recall),
        recall_at_10=round(tuned.recall_at_10, 6),
        query_ms=None if tuned.query_ms is None else round(tuned.query_ms, 6),
        index_bytes=plan.estimated_bytes,
        trained_count=None if fit is None else fit.count,
        train_residual=None if fit is None else fit.residual,
        train_imbalance=None if fit is None else fit.imbalance,
    )


def _write_files(
    directory: Path,
    entries: Sequence[IndexEntry],
    vectors: np.ndarray,
    manifest: Manifest,
    ann: AnnConfig | None,
    prebuilt: faiss.Index | None = None,
) -> Manifest:
    ids = np.fromiter((e.id for e in entries), dtype=np.int64, count=len(entries))  # (N,)
    keys = [e.key for e in entries]
    if prebuilt is not None:
        index = prebuilt
    elif ann is None:
        index = _build_faiss_index(ids, vectors)
    else:
        index, manifest = _build_ann(ids, vectors, manifest, ann)
    faiss.write_index(index, str(directory / INDEX_FILE))
    columns = {
        name: [getattr(e, name) for e in entries]
        for name in MAPPING_SCHEMA.names
        if name not in ("id", "key")
    }
    mapping = pa.table({"id": ids, "key": keys, **columns}, schema=MAPPING_SCHEMA)
    pq.write_table(mapping, directory / MAPPING_FILE)
    write_keyword_index(directory / KEYWORD_DIR, mapping)
    flat = pa.array(vectors.reshape(-1), type=pa.float32())  # (N, D) -> (N*D,)
    embedding = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])  # (N*D,) -> N x [D]
    embeddings = pa.table(
        {"id": ids, "key": keys, "embedding": embedding}, schema=embeddings_schema(vectors.shape[1])
    )
    pq.write_table(embeddings, directory / EMBEDDINGS_FILE)
    (directory / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def check_index_target(out: Path, overwrite: bool) -> None:
    """Refuse a target write_index would refuse: a file, a non-empty folder without overwrite,
    or a non-empty folder that is not an index (overwrite never replaces those)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a directory: choose another output path")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise OutputExistsError(
            f"index directory {out} is not empty: pass --overwrite (overwrite=True) to replace it"
        )
    if not (out / MANIFEST_FILE).is_file():
        # Overwrite replaces an index, never an arbitrary directory someone pointed us at.
        raise OutputExistsError(
            f"{out} is not empty and holds no {MANIFEST_FILE}, so it is not an index; "
            "refusing to replace it even with --overwrite: choose another output path"
        )


def _swap_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        tmp.rename(out)
        return
    # rename cannot replace a non-empty directory: move the old index aside, then drop it.
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex}"
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)  # put the previous index back
        raise
    shutil.rmtree(old, ignore_errors=True)
    if old.exists():
        logger.warning("could not remove the replaced index at %s; delete it by hand", old)


def publish_index_dir(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move a complete index directory written at ``tmp`` onto ``out``, as write_index's last
    step does (``out`` is checked again first), for a builder that writes the files itself
    (indexing.sharded). On failure ``tmp`` is left for the caller to remove."""
    check_index_target(out, overwrite)
    _swap_into_place(tmp, out)


def write_index(
    out_dir: str | PathLike[str],
    entries: Sequence[IndexEntry],
    vectors: np.ndarray,
    manifest: Manifest,
    overwrite: bool = False,
    ann: AnnConfig | None = None,
    index: faiss.Index | None = None,
) -> Path:
    """Write an index directory (see the module docstring) atomically.

    The files are written into a temporary sibling directory, which is renamed onto ``out_dir``
    only when complete: a crash leaves either no index or the previous one, never half of one.

    Args:
        out_dir: the index directory to create (local filesystem).
        entries: one entry per vector, in the same order as ``vectors``.
        vectors: float32 (N, D) unit-norm rows, row i for entries[i].
        manifest: its count and dimension must match entries and vectors.
        overwrite: replace an existing index at ``out_dir``.
        ann: build an approximate index chosen and tuned by this config (indexing.ann); the
            written manifest records the type, parameters and measured recall. None: exact Flat.
        index: instead of building one, write this FAISS index, which holds exactly the entries'
            ids and vectors (an incremental update, indexing.incremental); ``manifest`` must
            already describe it. Not with ``ann``.

    Returns:
        The path of the written index directory.

    Raises:
        ValueError: entries, vectors and manifest disagree (see validate_index_inputs).
        FileExistsError: ``out_dir`` is not empty and overwrite is False, or it is not an index.
        IndexingError: ``ann`` asks for what cannot be built (budget too small, target recall
            not reached: indexing.tuning.TargetRecallError).
    """
    validate_index_inputs(entries, vectors, manifest)
    if index is not None and (ann is not None or index.ntotal != len(entries)):
        raise ValueError(
            f"a prebuilt index ({index.ntotal} vectors) is written as it is: pass no ann, and "
            f"one entry per vector it holds ({len(entries)} entries)"
        )
    vectors = np.ascontiguousarray(vectors)
    out = Path(out_dir)
    check_index_target(out, overwrite)  # fail before the work, checked again before the swap
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        manifest = _write_files(tmp, entries, vectors, manifest, ann, index)
        check_index_target(out, overwrite)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        "wrote %s index %s: %d vectors of dimension %d from %d caption files",
        manifest.index_type,
        out,
        manifest.count,
        manifest.dimension,
        len(manifest.caption_files),
    )
    return out
