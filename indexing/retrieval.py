"""Query text (or a stored item) + filters -> a page of ranked hits: vector, keyword or hybrid.

A Retriever is one loaded index version: the FAISS index and mapping (indexing.search), its BM25
index (indexing.keyword; built in memory for an index written before it had one) and the filter
columns (indexing.filters). Every page of every mode is cut from a fixed window of WINDOW
candidates per side, so page 2 of a query is the continuation of page 1 within a version. A
filter is compiled once per Retriever (an LRU of FILTER_CACHE) into allowed ids for the FAISS
selector and clauses for the keyword query; both sides search under it, nothing is filtered
after the search.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from os import PathLike
from typing import Any

import numpy as np
import tantivy

from indexing.ann import estimate_bytes, factory_nlist
from indexing.embed import TextEmbedder
from indexing.filters import CompiledFilter, FilterColumns, QueryError, SearchFilter
from indexing.fusion import RRF_K as RRF_K  # re-exported: score = sum(weight / (RRF_K + rank))
from indexing.fusion import Fused, Ranking, rrf
from indexing.keyword import KEYWORD_DIR, KeywordIndex
from indexing.search import SearchIndex, open_index
from indexing.vector import Allowed, VectorSearcher

logger = logging.getLogger(__name__)

MODES = ("hybrid", "vector", "keyword")
# Every page of every mode is cut from this many candidates per side, so page 2 of a query is
# consistent with page 1 within an index version (OpenSearch's pagination_depth lesson).
# offset + k above it is a user error.
WINDOW = 1000
# Weights of the vector and keyword sides in hybrid mode's RRF. BM25 ignores word order, so at
# equal weight it pulls relational queries off; at half weight the demo's hidden-query hit rate
# equals vector search's (benchmarks/hybrid_weights.py, docs/benchmarks.md "Hybrid weights").
VECTOR_WEIGHT = 1.0
KEYWORD_WEIGHT = 0.5
FILTER_CACHE = 16  # compiled filters kept per loaded version


@dataclass(frozen=True, slots=True)
class RankedHit:
    """One hit of a page.

    Attributes:
        rank: 1-based position in the full ranking (offset + position in page + 1).
        score: the mode's score: fused RRF score (hybrid), cosine (vector) or BM25 (keyword).
        id: the entry's FAISS id.
        entry: the mapping row as a dict: key, caption, source, member, url, alt_text, metadata,
            sha256, width, height, model, model_version, captioned_at (None where unknown).
        vector_rank, vector_score: the hit's rank (1-based) and cosine on the vector side, or None.
        keyword_rank, keyword_score: its rank and BM25 score on the keyword side, or None.
    """

    rank: int
    score: float
    id: int
    entry: dict[str, Any]
    vector_rank: int | None = None
    vector_score: float | None = None
    keyword_rank: int | None = None
    keyword_score: float | None = None


@dataclass(frozen=True, slots=True, eq=False)
class _Prepared:
    """A filter compiled for this version: allowed ids, FAISS selector, keyword restriction."""

    compiled: CompiledFilter
    allowed: Allowed
    keyword: tantivy.Query | None


def _check_page(k: int, offset: int) -> None:
    for name, value in (("k", k), ("offset", offset)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise QueryError(f"{name} must be an integer, got {value!r}")
    if k <= 0:
        raise QueryError(f"k must be positive, got {k}")
    if offset < 0:
        raise QueryError(f"offset must be >= 0, got {offset}")
    if offset + k > WINDOW:
        raise QueryError(
            f"offset + k is {offset + k}, past the {WINDOW} results a query can page through: "
            "refine the query or add filters"
        )


def _check_text(text: object) -> str:
    if not isinstance(text, str):
        raise QueryError(f"a query must be text, got {type(text).__name__}")
    if not text.strip():
        raise QueryError("empty query: type some words to search for")
    return text


def _page(fused: Fused, offset: int, k: int) -> Fused:
    cut = slice(offset, offset + k)
    return Fused(
        fused.ids[cut],
        fused.scores[cut],
        tuple(r[cut] for r in fused.ranks),
        tuple(s[cut] for s in fused.side_scores),
    )


def _single(ranking: Ranking) -> Fused:
    """One side as a 'fused' ranking: its own order and scores."""
    ranks = np.arange(1, len(ranking.ids) + 1, dtype=np.int64)
    return Fused(ranking.ids, ranking.scores.astype(np.float64), (ranks,), (ranking.scores,))


class Retriever:
    """One loaded index version: FAISS + mapping (indexing.search) and its BM25 index.

    Thread-safe: queries share nothing mutable but the filter cache, which has a lock.
    """

    def __init__(self, index: SearchIndex, keyword: KeywordIndex) -> None:
        self._index = index
        self._keyword = keyword
        self._entries = index.entries
        self._columns = FilterColumns(self._entries.table)
        manifest = index.manifest
        self._vectors = VectorSearcher(index.faiss_index, manifest.index_type, manifest.params)
        self._filters: OrderedDict[SearchFilter, _Prepared] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | PathLike[str], embedder: Any | None = None) -> Retriever:
        """Open an index directory, or a collection root's current version.

        Args:
            embedder: a TextEmbedder with the index's weights; None loads the manifest's on the
                first embed.

        Raises:
            IndexLoadError: the directory or a file is missing, corrupt or inconsistent.
            EmbedderError: ``embedder`` is not the one the index was built with.
        """
        index = open_index(path, embedder)
        keyword = KeywordIndex.open(index.path / KEYWORD_DIR, index.entries.table)
        return cls(index, keyword)

    @property
    def version(self) -> str | None:
        """The collection version name (e.g. "v000003"), or None for a bare index directory."""
        return self._index.version

    @property
    def count(self) -> int:
        return self._index.count

    @property
    def index_bytes(self) -> int:
        """Resident bytes of the loaded FAISS index (manifest's index_bytes or an estimate)."""
        manifest = self._index.manifest
        if manifest.index_bytes is not None:
            return manifest.index_bytes
        nlist = factory_nlist(manifest.factory)
        return estimate_bytes(manifest.index_type, manifest.count, manifest.dimension, nlist)

    @property
    def search_index(self) -> SearchIndex:
        """The underlying index (manifest, path, FAISS index, mapping)."""
        return self._index

    def embed(self, texts: list[str]) -> np.ndarray:
        """(Q,) texts -> (Q, D) float32 unit-norm query vectors with the index's embedder.

        Raises:
            QueryError: a text is not a string or is blank.
        """
        for text in texts:
            _check_text(text)
        embedder: TextEmbedder = self._index.embedder
        if not texts:
            return np.zeros((0, embedder.dimension), dtype=np.float32)
        return embedder.embed(list(texts))  # (Q,) -> (Q, D)

    def query(
        self,
        text: str,
        *,
        k: int = 10,
        offset: int = 0,
        mode: str = "hybrid",
        filters: SearchFilter | None = None,
        vector: np.ndarray | None = None,
        timings: dict[str, float] | None = None,
    ) -> list[RankedHit]:
        """One page of hits for ``text``.

        Args:
            vector: (D,) the query's embedding when the caller already has it (the service
                embeds concurrent queries in one batch); embedded here when None and the mode
                needs it.
            timings: when given, filled with seconds spent per stage: "embed", "filter" (compile,
                0 when cached), "vector", "keyword", "fusion", "entries".
        Raises:
            QueryError: empty text, k <= 0, offset < 0, offset + k > WINDOW, unknown mode, a
                filter that is not a SearchFilter.
        """
        _check_text(text)
        _check_page(k, offset)
        if mode not in MODES:
            raise QueryError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
        clock = _Clock(timings)
        prepared = self._prepare(filters)
        clock.lap("filter")
        if prepared is not None and prepared.compiled.count == 0:
            return []
        sides: list[Ranking] = []
        if mode != "keyword":
            query = self._query_vector(text, vector)
            clock.lap("embed")
            allowed = None if prepared is None else prepared.allowed
            sides.append(Ranking(*self._vectors.search(query, WINDOW, allowed)))
            clock.lap("vector")
        if mode != "vector":
            restrict = None if prepared is None else prepared.keyword
            sides.append(Ranking(*self._keyword.search(text, WINDOW, restrict)))
            clock.lap("keyword")
        if mode == "hybrid":
            fused = rrf(sides, (VECTOR_WEIGHT, KEYWORD_WEIGHT))
        else:
            fused = _single(sides[0])
        clock.lap("fusion")
        hits = self._hits(_page(fused, offset, k), offset, mode)
        clock.lap("entries")
        return hits

    def similar(
        self, key: str, *, k: int = 10, offset: int = 0, filters: SearchFilter | None = None
    ) -> list[RankedHit]:
        """More like ``key``: vector search with its stored caption vector, itself left out.

        Raises:
            QueryError: unknown key, or bad k / offset / filters.
        """
        _check_page(k, offset)
        row = self._entries.row_of_key(key)
        if row is None:
            raise QueryError(f"unknown key {key!r}")
        prepared = self._prepare(filters)
        if prepared is not None and prepared.compiled.count == 0:
            return []
        entry_id = int(self._entries.ids[row])
        allowed = None if prepared is None else prepared.allowed
        ids, scores = self._vectors.search(self._vectors.vector(entry_id), WINDOW + 1, allowed)
        keep = ids != entry_id  # (h,)
        ranking = Ranking(ids[keep][:WINDOW], scores[keep][:WINDOW])
        return self._hits(_page(_single(ranking), offset, k), offset, "vector")

    def entry(self, key: str) -> dict[str, Any] | None:
        """The mapping row of ``key`` (see RankedHit.entry), or None when the key is unknown."""
        row = self._entries.row_of_key(key)
        if row is None:
            return None
        return self._entries.entries(np.array([row]))[0]

    def _query_vector(self, text: str, vector: np.ndarray | None) -> np.ndarray:
        if vector is None:
            return self.embed([text])[0]  # (1, D) -> (D,)
        vector = np.asarray(vector, dtype=np.float32)
        dimension = self._index.manifest.dimension
        if vector.shape != (dimension,) or not np.isfinite(vector).all():
            raise ValueError(
                f"vector must be a finite ({dimension},) embedding, got shape {vector.shape}"
            )
        return vector

    def _prepare(self, filters: SearchFilter | None) -> _Prepared | None:
        """The compiled filter (cached), or None for no restriction."""
        if filters is None:
            return None
        if not isinstance(filters, SearchFilter):
            raise QueryError(f"filters must be a SearchFilter, got {type(filters).__name__}")
        if filters.is_empty:
            return None
        with self._lock:
            if (cached := self._filters.get(filters)) is not None:
                self._filters.move_to_end(filters)
                return cached
        compiled = self._columns.compile(filters)
        prepared = _Prepared(
            compiled,
            self._vectors.allowed(compiled.ids),
            self._keyword.filter_query(compiled.clauses),
        )
        logger.debug("filter %s allows %d of %d entries", filters, compiled.count, self.count)
        with self._lock:
            self._filters[filters] = prepared
            while len(self._filters) > FILTER_CACHE:
                self._filters.popitem(last=False)
        return prepared

    def _hits(self, page: Fused, offset: int, mode: str) -> list[RankedHit]:
        entries = self._entries.entries(self._entries.rows_of(page.ids))
        sides = {"hybrid": ("vector", "keyword"), "vector": ("vector",), "keyword": ("keyword",)}
        hits = []
        for i, (entry_id, score, entry) in enumerate(
            zip(page.ids, page.scores, entries, strict=True)
        ):
            extra: dict[str, Any] = {}
            for side, ranks, scores in zip(sides[mode], page.ranks, page.side_scores, strict=True):
                present = bool(ranks[i])
                extra[f"{side}_rank"] = int(ranks[i]) if present else None
                extra[f"{side}_score"] = float(scores[i]) if present else None
            hits.append(RankedHit(offset + i + 1, float(score), int(entry_id), entry, **extra))
        return hits


class _Clock:
    """Adds the seconds since the last lap to ``timings[name]`` (no-op without timings)."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self._timings = timings
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        if self._timings is None:
            return
        now = time.perf_counter()
        self._timings[name] = self._timings.get(name, 0.0) + now - self._last
        self._last = now
