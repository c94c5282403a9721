"""The update's last steps, between its Beam jobs: read the plan, choose tonight's captioning work,
assemble the new catalog, embed only captions no earlier night embedded, write and publish the
version. Columnar work on Arrow tables (the plan is one row per key).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from captioning.archives.records import Shard
from indexing.ann import AnnConfig
from indexing.build import MANIFEST_FILE, IndexEntry, Manifest, write_index
from indexing.catalog import (
    CATALOG_COLUMNS,
    CATALOG_SCHEMA,
    SHARDS_SCHEMA,
    text_sha256,
    with_caption,
    with_failure,
)
from indexing.collection import (
    CATALOG_FILE,
    EMBEDDINGS_DIR,
    INDEX_DIR,
    SHARDS_FILE,
    TMP_PREFIX,
    VERSIONS_DIR,
    Collection,
    parquet_files,
)
from indexing.embed import ResolvedEmbedder, TextEmbedder
from indexing.incremental import IndexUpdate, update_index

logger = logging.getLogger(__name__)

PRIORITY = {"new": 0, "changed": 0, "stale": 1}  # --max-images takes new and changed first


def read_tables(urls: Sequence[str], schema: pa.Schema) -> pa.Table:
    """Parquet files -> one table with `schema` (an empty one when there are none)."""
    parts = []
    for url in urls:
        with fsspec.open(url, "rb") as f:
            parts.append(pq.read_table(f).select(schema.names).cast(schema))
    return pa.concat_tables(parts) if parts else schema.empty_table()


@dataclass(frozen=True, slots=True)
class Work:
    """Tonight's captioning: one representative (source, member) per distinct sha256 chosen,
    the chosen hashes, and how many images --max-images left for a later night."""

    members: dict[str, set[str]]  # source -> members to caption
    chosen: frozenset[str]  # sha256 of the images captioned tonight
    deferred: int


def choose_work(plan: pa.Table, max_images: int | None) -> Work:
    """Rows that still need a caption -> distinct images (by sha256), new and changed first,
    then stale, each in (source, member) order; at most `max_images` of them."""
    rows = plan.filter(pc.field("needs_caption")).select(["action", "sha256", "source", "member"])
    ordered = sorted(
        rows.to_pylist(), key=lambda r: (PRIORITY[r["action"]], r["source"], r["member"])
    )
    members: dict[str, set[str]] = {}
    chosen: list[str] = []
    seen: set[str] = set()
    for r in ordered:
        if r["sha256"] in seen:
            continue
        seen.add(r["sha256"])
        if max_images is not None and len(chosen) >= max_images:
            continue
        chosen.append(r["sha256"])
        members.setdefault(r["source"], set()).add(r["member"])
    return Work(members, frozenset(chosen), deferred=len(seen) - len(chosen))


def work_items(work: Work, shards: Sequence[Shard]) -> list[tuple[Shard, frozenset[str]]]:
    by_uri = {s.uri: s for s in shards}
    return [(by_uri[src], frozenset(m)) for src, m in sorted(work.members.items())]


def assemble_catalog(
    plan: pa.Table, work: Work, captions: pa.Table, failures: pa.Table
) -> tuple[pa.Table, dict[str, int]]:
    """The new catalog: every plan row that stays live, with tonight's captions and failures
    filled in by sha256 (the representative's result serves every key with the same bytes).
    Returns the catalog and counts of what happened to the rows that needed a caption."""
    by_sha = {r["sha256"]: r for r in captions.to_pylist()}
    failed_at = {(r["source"], r["member"]): r for r in failures.to_pylist()}
    rep_failure: dict[str, dict[str, Any]] = {}
    for r in plan.filter(pc.field("needs_caption")).to_pylist():
        if (r["source"], r["member"]) in failed_at:
            rep_failure.setdefault(r["sha256"], failed_at[(r["source"], r["member"])])
    out: list[dict[str, Any]] = []
    counts = {"captioned": 0, "failed": 0, "deferred_rows": 0}
    for row in plan.to_pylist():
        if row["action"] in ("deleted", "duplicate"):
            continue
        if not row["needs_caption"]:
            out.append(row)
            continue
        sha = row["sha256"]
        if sha in by_sha:
            out.append(with_caption(row, by_sha[sha]))
            counts["captioned"] += 1
        elif sha in rep_failure:
            out.append(with_failure(row, rep_failure[sha]))
            counts["failed"] += 1
        elif sha in work.chosen:
            raise RuntimeError(f"the caption job returned nothing for {row['key']} ({sha})")
        else:  # deferred by --max-images: a stale row keeps its old caption, a new one waits
            counts["deferred_rows"] += 1
            if row["action"] == "stale":
                out.append({**row, "needs_caption": False})
    out.sort(key=lambda r: r["key"])
    table = pa.Table.from_pylist([{c: r[c] for c in CATALOG_COLUMNS} for r in out], CATALOG_SCHEMA)
    return table, counts


class EmbedderLoader:
    """The text embedder, loaded on first use (seconds: sentence-transformers and its weights),
    so a night whose caption texts were all embedded before never loads it. (Loading it on a
    thread during the caption job was measured: no faster, the two contend for the GIL.)"""

    def __init__(self, resolved: ResolvedEmbedder):
        self.resolved = resolved
        self._model: TextEmbedder | None = None

    def get(self) -> TextEmbedder:
        if self._model is None:
            self._model = TextEmbedder(self.resolved)
        return self._model


def embed_captions(
    col: Collection, catalog: pa.Table, embedder: EmbedderLoader, run_id: str, batch: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Vectors for the catalog's captioned rows: from the embedding cache where an earlier run
    embedded the same text with the same model, else embedded now (and cached). Returns the row
    numbers that have a caption, their (N, D) vectors, and how many texts were embedded now."""
    rows = np.flatnonzero(pc.equal(catalog.column("status"), "captioned").to_numpy(False))
    captions = catalog.column("caption").take(pa.array(rows, pa.int64())).to_pylist()
    shas = [text_sha256(c) for c in captions]
    sub = f"{EMBEDDINGS_DIR}/{embedder.resolved.sha256[:16]}"
    cached = _cached_vectors(col, sub, shas)  # sha -> row of `found`
    missing = sorted({s: c for s, c in zip(shas, captions, strict=True) if s not in cached.index})
    found = cached.vectors
    if missing:
        texts = {s: c for s, c in zip(shas, captions, strict=True)}
        new = embedder.get().embed([texts[s] for s in missing], batch_size=batch)  # (M, D)
        _write_embeddings(col, sub, run_id, missing, new)
        base = 0 if found is None else len(found)
        cached.index.update({s: base + n for n, s in enumerate(missing)})
        found = new if found is None else np.concatenate([found, new])  # (K + M, D)
    if not len(rows):
        return rows, np.zeros((0, 0), dtype=np.float32), len(missing)
    assert found is not None
    order = np.fromiter((cached.index[s] for s in shas), np.int64, len(shas))
    return rows, found[order].astype(np.float32, copy=False), len(missing)  # (N, D)


@dataclass(slots=True)
class _Cached:
    index: dict[str, int]  # text sha256 -> row of vectors
    vectors: np.ndarray | None  # (K, D)


def _cached_vectors(col: Collection, sub: str, shas: list[str]) -> _Cached:
    """The cached vectors of these texts, read column-wise (a cache file is one run's texts)."""
    wanted = pa.array(sorted(set(shas)), pa.string())
    parts = []
    for url in parquet_files(col, sub):
        with fsspec.open(url, "rb") as f:
            t = pq.read_table(f)
        parts.append(t.filter(pc.is_in(t.column("text_sha256"), wanted)))
    if not parts or not sum(p.num_rows for p in parts):
        return _Cached({}, None)
    table = pa.concat_tables(parts)
    d = table.schema.field("embedding").type.list_size
    flat = table.column("embedding").combine_chunks().flatten().to_numpy()  # (K * D,)
    index = {s: i for i, s in enumerate(table.column("text_sha256").to_pylist())}
    return _Cached(index, flat.reshape(-1, d))


def _write_embeddings(
    col: Collection, sub: str, run_id: str, shas: list[str], vectors: np.ndarray
) -> None:
    d = vectors.shape[1]
    table = pa.table(
        {
            "text_sha256": pa.array(shas, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(vectors.reshape(-1), pa.float32()), d
            ),
        }
    )
    col.fs.makedirs(col.join(sub), exist_ok=True)
    name = f"{run_id}--{uuid.uuid4().hex}.parquet"
    tmp = col.join(sub, f"{TMP_PREFIX}{name}")
    with col.fs.open(tmp, "wb") as f:
        pq.write_table(table, f)
    col.fs.mv(tmp, col.join(sub, name))


def index_entries(catalog: pa.Table, rows: np.ndarray) -> list[IndexEntry]:
    """IndexEntry per captioned catalog row, ids 0..N-1 in key order (the catalog's order); every
    other IndexEntry field (source metadata, sha256, size, caption provenance) is a catalog
    column of the same name."""
    cols = {
        f.name: catalog.column(f.name).to_pylist() for f in fields(IndexEntry) if f.name != "id"
    }
    return [
        IndexEntry(id=n, **{c: cols[c][i] for c in cols})  # type: ignore[arg-type]
        for n, i in enumerate(rows)
    ]


def write_version(
    col: Collection,
    tmp_dir: str,
    catalog: pa.Table,
    shards: pa.Table,
    entries: list[IndexEntry],
    vectors: np.ndarray,
    manifest: Manifest,
    ann: AnnConfig | None = None,
    previous: str | None = None,
) -> IndexUpdate | None:
    """Everything of one version into its temporary directory (publish renames it).

    With ``ann``, the index is the ``previous`` version's updated in place when
    indexing.incremental allows it (ids carried per key), else rebuilt; returns that decision.
    """
    with col.fs.open(f"{tmp_dir}/{CATALOG_FILE}", "wb") as f:
        pq.write_table(catalog, f)
    with col.fs.open(f"{tmp_dir}/{SHARDS_FILE}", "wb") as f:
        pq.write_table(shards.cast(SHARDS_SCHEMA), f)
    if vectors.size == 0:
        vectors = np.zeros((0, manifest.dimension), dtype=np.float32)
    # write_index writes to local disk (FAISS); remote collections are not supported yet there
    out = f"{tmp_dir}/{INDEX_DIR}"
    if ann is None:
        write_index(out, entries, vectors, manifest, overwrite=False)
        return None
    update = update_index(_local_index(col, previous), entries, vectors, manifest, ann)
    logger.info("index of the new version: %s (%s)", update.mode, update.reason)
    if update.index is None:
        write_index(out, update.entries, vectors, manifest, overwrite=False, ann=ann)
        written = (Path(out) / MANIFEST_FILE).read_text(encoding="utf-8")
        update = replace(update, manifest=Manifest.from_json(written))  # what auto chose
    else:
        write_index(out, update.entries, vectors, update.manifest, index=update.index)
    return update


def _local_index(col: Collection, version: str | None) -> Path | None:
    """The index directory of ``version`` when the collection is on local disk (FAISS reads
    only local files), else None."""
    if version is None or col.url() != col.join():
        return None
    return Path(col.join(VERSIONS_DIR, version, INDEX_DIR))


def plan_counts(plan: pa.Table) -> dict[str, int]:
    actions = pc.value_counts(plan.column("action")).to_pylist()
    return {a["values"]: a["counts"] for a in actions}
