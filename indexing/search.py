"""Index directory + query text -> ranked SearchHits (inner product = cosine; exact or ANN).

An approximate index (see indexing.ann) is searched with the parameters its manifest recorded
at build time (tuned to its target recall); ``nprobe``, ``ef_search`` and ``k_factor`` override
them per call. Flat and IVF indexes are memory-mapped read-only (their codes, inverted lists and
re-rank vectors stay in the page cache); HNSW graphs are read into memory.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from os import PathLike
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexing.ann import (
    FLAT,
    HNSW,
    IVF_FLAT,
    IVF_PQ,
    IVF_SQ8,
    IVF_TYPES,
    factory_nlist,
    index_ids,
    index_type_of,
)
from indexing.build import (
    INDEX_FILE,
    MANIFEST_FILE,
    MAPPING_FILE,
    MAPPING_SCHEMA,
    OPTIONAL_MAPPING_COLUMNS,
    Manifest,
)
from indexing.collection import INDEX_DIR, VERSIONS_DIR, Collection, is_collection
from indexing.embed import EmbedderError, TextEmbedder, resolve_embedder
from indexing.entries import EntryTable
from indexing.errors import IndexingError
from indexing.tuning import PARAM_NAMES, check_params, search_with

logger = logging.getLogger(__name__)

# Files search needs; embeddings.parquet is only for rebuilding an index.
REQUIRED_FILES = (MANIFEST_FILE, INDEX_FILE, MAPPING_FILE)
# How each type is read: read-only memory maps of the inverted lists (IVF: IO_FLAG_MMAP) or of
# the flat codes (Flat, and ivf-pq's re-rank vectors: IO_FLAG_MMAP_IFC; FAISS refuses the two
# together on IVF lists). HNSW is read into memory.
LOAD_FLAGS = {
    FLAT: faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY,
    IVF_FLAT: faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY,
    IVF_SQ8: faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY,
    IVF_PQ: faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY,
    HNSW: 0,
}


class IndexLoadError(IndexingError):
    """An index directory is missing, incomplete, corrupt or inconsistent."""


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One result of a query.

    Attributes:
        rank: 1 for the best hit.
        score: inner product of the unit-norm query and caption vectors (cosine, in [-1, 1]).
        key, caption, source, member: the entry's fields (see IndexEntry).
        url, alt_text, metadata: what the image's source said about it (see IndexEntry); None
            when unknown, and always for an index built before these were recorded.
    """

    rank: int
    score: float
    key: str
    caption: str
    source: str
    member: str
    url: str | None = None
    alt_text: str | None = None
    metadata: str | None = None


def _check_query(text: str, position: int | None = None) -> None:
    if not isinstance(text, str):
        raise IndexingError(f"a query must be a str, got {type(text).__name__}")
    if not text.strip():
        raise IndexingError("empty query" if position is None else f"empty query at {position}")


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise IndexingError(f"k must be an int, got {type(k).__name__}")
    if k <= 0:
        raise IndexingError(f"k must be positive, got {k}")


class SearchIndex:
    """A loaded index: the FAISS index, the id -> entry mapping and the manifest.

    Built by open_index. The embedder that embeds queries is loaded on first text search
    unless one was given to open_index.
    """

    def __init__(
        self,
        path: Path,
        index: faiss.Index,
        mapping: pa.Table,
        manifest: Manifest,
        embedder: TextEmbedder | None = None,
        version: str | None = None,
    ) -> None:
        self._path = path
        self._index = index
        self._entries = EntryTable(mapping)  # one chunk per column: fast row lookups
        self._manifest = manifest
        self._embedder = embedder
        self._version = version

    @property
    def path(self) -> Path:
        """The index directory."""
        return self._path

    @property
    def version(self) -> str | None:
        """The collection version this index is (open_index given a collection root), or None."""
        return self._version

    @property
    def faiss_index(self) -> faiss.Index:
        """The loaded FAISS index (read-only: search it with indexing.tuning.search_with)."""
        return self._index

    @property
    def entries(self) -> EntryTable:
        """The mapping: id -> row -> entry, key -> row."""
        return self._entries

    @property
    def manifest(self) -> Manifest:
        """The index's manifest."""
        return self._manifest

    @property
    def count(self) -> int:
        """Number of entries in the index."""
        return self._index.ntotal

    @property
    def embedder(self) -> TextEmbedder:
        """The manifest's embedder, loaded and checked on first use."""
        if self._embedder is None:
            resolved = resolve_embedder(self._manifest.embedder_name)
            # Compare fingerprints before loading: a mismatch fails fast and cheaply.
            _check_embedder(self._path, self._manifest, resolved.sha256, None)
            embedder = TextEmbedder(resolved)
            _check_embedder(self._path, self._manifest, embedder.sha256, embedder.dimension)
            self._embedder = embedder
        return self._embedder

    @property
    def search_params(self) -> dict[str, int]:
        """The search parameters used when a call gives none (the manifest's tuned ones)."""
        return self._manifest.params

    def search(
        self,
        text: str,
        k: int = 10,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        k_factor: int | None = None,
    ) -> list[SearchHit]:
        """Return the k entries whose captions are nearest to ``text`` (fewer if count < k).

        Args:
            text: the query.
            k: number of hits.
            nprobe, ef_search, k_factor: override the manifest's search parameters for this call:
                nprobe for IVF types, ef_search for hnsw, k_factor (re-rank depth) for ivf-pq;
                None keeps the manifest's.

        Raises:
            ValueError: ``text`` is empty or whitespace ("empty query"), or k <= 0.
            IndexingError: an override this index type does not take, or out of range.
        """
        return self.search_many([text], k, nprobe=nprobe, ef_search=ef_search, k_factor=k_factor)[0]

    def search_many(
        self,
        texts: Sequence[str],
        k: int = 10,
        batch_size: int = 64,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        k_factor: int | None = None,
    ) -> list[list[SearchHit]]:
        """Search several queries, embedded in batches of ``batch_size``.

        nprobe, ef_search and k_factor override the manifest's search parameters (see search).

        Returns:
            One hit list per query, in the order of ``texts`` (see search).
        """
        if isinstance(texts, str):
            raise TypeError("search_many takes a sequence of queries: use search for one")
        _check_k(k)
        overrides = {"nprobe": nprobe, "ef_search": ef_search, "k_factor": k_factor}
        self._params(overrides)  # a bad override fails before the embedder loads
        texts = list(texts)
        for position, text in enumerate(texts):
            _check_query(text, position if len(texts) > 1 else None)
        if not texts:
            return []
        queries = self.embedder.embed(texts, batch_size=batch_size)  # (Q, D)
        return self.search_vectors(queries, k, **overrides)

    def _params(self, overrides: Mapping[str, int | None]) -> dict[str, int]:
        given = {name: value for name, value in overrides.items() if value is not None}
        kind = self._manifest.index_type
        if unknown := sorted(set(given) - set(PARAM_NAMES[kind])):
            takes = ", ".join(PARAM_NAMES[kind]) or "no search parameters"
            raise IndexingError(
                f"{', '.join(unknown)} does not apply to this {kind} index (it takes {takes})"
            )
        params = self._manifest.params | given
        check_params(kind, params, factory_nlist(self._manifest.factory))
        return params

    def search_vectors(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        k_factor: int | None = None,
    ) -> list[list[SearchHit]]:
        """Search with already embedded queries.

        Args:
            queries: float32 (Q, D) unit-norm vectors from the manifest's embedder.
            k: hits per query; at most count are returned.
            nprobe, ef_search, k_factor: per-call search parameters (see search).

        Returns:
            One hit list per query row, best first.
        """
        _check_k(k)
        params = self._params({"nprobe": nprobe, "ef_search": ef_search, "k_factor": k_factor})
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self._manifest.dimension:
            raise ValueError(
                f"queries must have shape (Q, {self._manifest.dimension}), got {queries.shape}"
            )
        k = min(k, self.count)
        if k == 0 or len(queries) == 0:
            return [[] for _ in range(len(queries))]
        kind = self._manifest.index_type
        scores, ids = search_with(self._index, kind, params, queries, k)  # (Q, D) -> (Q, k) x2
        return [
            self._hits(row_scores, row_ids) for row_scores, row_ids in zip(scores, ids, strict=True)
        ]

    def _hits(self, scores: np.ndarray, ids: np.ndarray) -> list[SearchHit]:
        found = ids >= 0  # FAISS pads with -1 when it has fewer than k results
        scores, ids = scores[found], ids[found]  # (k,) -> (h,)
        rows = self._entries.rows_of(ids)  # (h,) ids -> row numbers
        entries = self._entries.entries(rows, _HIT_FIELDS)
        return [
            SearchHit(rank=rank, score=float(score), **entry)
            for rank, (score, entry) in enumerate(zip(scores, entries, strict=True), start=1)
        ]


_HIT_FIELDS = tuple(f.name for f in fields(SearchHit) if f.name not in ("rank", "score"))


def _check_embedder(path: Path, manifest: Manifest, sha256: str, dimension: int | None) -> None:
    if sha256 != manifest.embedder_sha256:
        raise EmbedderError(
            f"index {path} was built with embedder {manifest.embedder_name!r} whose weights have "
            f"sha256 {manifest.embedder_sha256}, but the embedder given has {sha256}: "
            "query with the embedder the index was built with, or rebuild the index"
        )
    if dimension is not None and dimension != manifest.dimension:
        raise EmbedderError(
            f"index {path} has dimension {manifest.dimension} but the embedder gives {dimension}"
        )


def _load_manifest(path: Path) -> Manifest:
    manifest_path = path / MANIFEST_FILE
    try:
        return Manifest.from_json(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        raise IndexLoadError(f"corrupt manifest {manifest_path}: {err}") from err


def _load_faiss(path: Path, manifest: Manifest) -> faiss.Index:
    index_path = path / INDEX_FILE
    try:
        index = faiss.read_index(str(index_path), LOAD_FLAGS[manifest.index_type])
    except RuntimeError as err:
        # FAISS reports a bad file as a multi-line C++ trace; keep the first line.
        reason = str(err).strip().splitlines()[0] if str(err).strip() else "unreadable"
        raise IndexLoadError(f"corrupt FAISS index {index_path}: {reason}") from err
    if index.ntotal != manifest.count or index.d != manifest.dimension:
        raise IndexLoadError(
            f"{index_path} holds {index.ntotal} vectors of dimension {index.d} but the manifest "
            f"says {manifest.count} of dimension {manifest.dimension}: rebuild the index"
        )
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise IndexLoadError(f"{index_path} does not use the inner-product metric")
    _check_index_type(index_path, index, manifest)
    return index


def _check_index_type(index_path: Path, index: faiss.Index, manifest: Manifest) -> None:
    """The manifest's type, factory nlist and search parameters must describe the file."""
    kind = index_type_of(index)
    if kind != manifest.index_type:
        raise IndexLoadError(
            f"{index_path} is a {kind or 'foreign'} index but the manifest says "
            f"{manifest.index_type} ({manifest.factory}): rebuild the index"
        )
    nlist = faiss.extract_index_ivf(index).nlist if kind in IVF_TYPES else None
    if nlist != factory_nlist(manifest.factory):
        raise IndexLoadError(
            f"{index_path} has nlist {nlist} but the manifest's factory is {manifest.factory}: "
            "rebuild the index"
        )
    try:
        check_params(kind, manifest.params, nlist)
    except IndexingError as err:
        raise IndexLoadError(
            f"the manifest's search parameters do not match {index_path}: {err}"
        ) from err


def _load_mapping(path: Path, manifest: Manifest) -> pa.Table:
    mapping_path = path / MAPPING_FILE
    try:
        present = set(pq.read_schema(mapping_path).names)
        columns = [name for name in MAPPING_SCHEMA.names if name in present]
        table = pq.read_table(mapping_path, columns=columns)
        for name in OPTIONAL_MAPPING_COLUMNS:
            if name not in table.column_names:  # an index written before the column existed
                kind = MAPPING_SCHEMA.field(name).type
                table = table.append_column(name, pa.nulls(table.num_rows, kind))
        # A required column that is missing raises KeyError here.
        table = table.select(MAPPING_SCHEMA.names).cast(MAPPING_SCHEMA)
    except (pa.ArrowException, KeyError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise IndexLoadError(f"corrupt mapping {mapping_path}: {reason}") from err
    if table.num_rows != manifest.count:
        raise IndexLoadError(
            f"{mapping_path} has {table.num_rows} rows but the manifest says {manifest.count}: "
            "rebuild the index"
        )
    ids = table.column("id").to_numpy()
    if len(np.unique(ids)) != len(ids):
        raise IndexLoadError(f"{mapping_path} repeats ids: rebuild the index")
    return table


def _check_ids_agree(path: Path, index: faiss.Index, mapping: pa.Table) -> None:
    stored = np.sort(index_ids(index))  # (N,)
    mapping_ids = np.sort(mapping.column("id").to_numpy())  # (N,)
    if not np.array_equal(stored, mapping_ids):
        raise IndexLoadError(
            f"the ids in {path / INDEX_FILE} and {path / MAPPING_FILE} differ: rebuild the index"
        )


def open_index(path: str | PathLike[str], embedder: TextEmbedder | None = None) -> SearchIndex:
    """Load an index directory written by write_index, or a collection's current version.

    Args:
        path: the index directory, or a collection root (imgindex update): its current version.
        embedder: embedder for queries; it must have the weights recorded in the manifest.
            None loads the manifest's embedder on the first text search.

    Returns:
        The loaded index.

    Raises:
        IndexLoadError: the directory or a file is missing, or a file is corrupt or disagrees
            with the manifest.
        EmbedderError: ``embedder`` is not the one the index was built with.
    """
    root, version = resolve_index_dir(path)
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise IndexLoadError(f"index directory {root} {what}")
    if missing := [name for name in REQUIRED_FILES if not (root / name).is_file()]:
        raise IndexLoadError(f"index directory {root} is missing {', '.join(missing)}")
    manifest = _load_manifest(root)
    index = _load_faiss(root, manifest)
    mapping = _load_mapping(root, manifest)
    _check_ids_agree(root, index, mapping)
    if embedder is not None:
        _check_embedder(root, manifest, embedder.sha256, embedder.dimension)
    logger.info(
        "opened index %s: %d entries, embedder %s", root, manifest.count, manifest.embedder_name
    )
    return SearchIndex(root, index, mapping, manifest, embedder, version)


def resolve_index_dir(path: str | PathLike[str]) -> tuple[Path, str | None]:
    """A collection root -> its current version's index directory and the version's name;
    anything else -> itself and None. CURRENT is read once, so the two agree.

    Raises:
        IndexLoadError: a collection with no published version.
    """
    path = Path(path)
    if not is_collection(path):
        return path, None
    col = Collection.open(path)
    name = col.current()
    if name is None:
        raise IndexLoadError(
            f"collection {path} has no published version yet: run `imgindex update` first"
        )
    return Path(col.join(VERSIONS_DIR, name, INDEX_DIR)), name
