"""Mapping table -> a BM25 full-text index (tantivy) on disk or in memory; query text + filter
clauses -> the best ids and their BM25 scores.

Engine: tantivy (Rust, via its Python bindings) rather than bm25s: 0.76 ms per query at k=100 on
200k captions against bm25s' 8-9 ms (the project's survey of engines, 2026-11-29, a trial on
this kind of machine; no script here re-measures it), an on-disk format it memory-maps, and
filters that run inside the search (range and set queries on indexed integer fields), where
bm25s can only filter its output.

What is indexed, per mapping row: the caption, the source's alt text and the image's names (key
and member), so a rare word, a file name or the web page's words are found; and the filter
fields of indexing.filters.FilterColumns (integer codes, sizes, caption time) as indexed fast
fields, so a filter is the same restriction here as on the vector side.

Text analysis (ANALYZER): tantivy's simple tokenizer (splits on anything not alphanumeric), then
tokens over 40 bytes dropped, lowercase, ASCII folding (café = cafe), English stop words removed
and the Snowball English stemmer (circles = circle). Captions are short English sentences:
stemming lets "running dogs" find "a dog runs", and stop words carry no meaning in BM25 but cost
postings. Queries are never parsed as a query language: the text goes through the same analyzer
and becomes a disjunction of term queries, so quotes, colons, brackets, AND/OR/NOT or any unicode
can never raise, and text with no indexable token (only stop words, only punctuation) finds
nothing on this side.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import tantivy

from indexing.errors import IndexingError
from indexing.filters import (
    CODED_COLUMNS,
    SIZE_COLUMNS,
    TIME_FIELD,
    Clause,
    FilterColumns,
    RangeClause,
)

logger = logging.getLogger(__name__)

KEYWORD_DIR = "keyword"
FORMAT_FILE = "imgindex-keyword.json"
# Bumped whenever the schema or the analyzer changes: an older keyword/ is rebuilt in memory.
FORMAT_VERSION = 1
ANALYZER = "imgindex_en"
TEXT_FIELDS = ("caption", "alt_text", "name")
MAX_QUERY_TOKENS = 64
MAX_RANGE_CLAUSES = 16  # a code set with more runs than this is a term set query instead
WRITER_HEAP_BYTES = 128_000_000


class KeywordIndexError(IndexingError):
    """A keyword index directory that cannot be written."""


def analyzer() -> tantivy.TextAnalyzer:
    """The text analyzer of every text field and of query text (see the module docstring)."""
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(40))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.ascii_fold())
        .filter(tantivy.Filter.stopword("english"))
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


def keyword_schema() -> tantivy.Schema:
    """Text fields (term frequencies, no positions), the id, and the integer filter fields."""
    builder = tantivy.SchemaBuilder()
    for name in TEXT_FIELDS:
        builder.add_text_field(name, tokenizer_name=ANALYZER, index_option="freq")
    builder.add_integer_field("id", stored=True, indexed=True, fast=True)
    for name in (*CODED_COLUMNS, *SIZE_COLUMNS, TIME_FIELD):
        builder.add_integer_field(name, indexed=True, fast=True)
    return builder.build()


def _new_index(directory: Path | None) -> tantivy.Index:
    index = tantivy.Index(keyword_schema(), path=None if directory is None else str(directory))
    index.register_tokenizer(ANALYZER, analyzer())
    return index


def _fill(index: tantivy.Index, mapping: pa.Table) -> None:
    """Add one document per mapping row and commit."""
    columns = FilterColumns(mapping)
    integer = {
        name: (values.tolist(), null) for name, (values, null) in columns.field_arrays().items()
    }
    ids = columns.ids.tolist()
    texts = {name: mapping.column(name).to_pylist() for name in ("caption", "alt_text")}
    keys, members = mapping.column("key").to_pylist(), mapping.column("member").to_pylist()
    writer = index.writer(heap_size=WRITER_HEAP_BYTES, num_threads=1)
    for row, entry_id in enumerate(ids):
        doc = tantivy.Document(id=entry_id, name=f"{keys[row]} {members[row]}")
        for name, values in texts.items():
            if values[row]:
                doc.add_text(name, values[row])
        for name, (values, null) in integer.items():
            if values[row] != null:
                doc.add_integer(name, values[row])
        writer.add_document(doc)
    writer.commit()
    writer.wait_merging_threads()
    index.reload()


def write_keyword_index(directory: Path, mapping: pa.Table) -> None:
    """Write the keyword index of ``mapping`` into ``directory`` (created; must not exist).

    Raises:
        KeywordIndexError: ``directory`` exists.
    """
    if directory.exists():
        raise KeywordIndexError(f"{directory} exists: a keyword index is written into a new one")
    start = time.perf_counter()
    directory.mkdir(parents=True)
    _fill(_new_index(directory), mapping)
    (directory / FORMAT_FILE).write_text(
        json.dumps({"format_version": FORMAT_VERSION, "count": mapping.num_rows}) + "\n",
        encoding="utf-8",
    )
    logger.info(
        "wrote keyword index %s: %d documents in %.1f s",
        directory,
        mapping.num_rows,
        time.perf_counter() - start,
    )


def _readable(directory: Path, count: int) -> str | None:
    """Why the keyword index at ``directory`` cannot be used for ``count`` entries, or None."""
    try:
        info = json.loads((directory / FORMAT_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "it has no keyword index" if not directory.exists() else "it is incomplete"
    except (OSError, ValueError) as err:
        return f"its keyword format file is unreadable ({err})"
    if not isinstance(info, dict) or info.get("format_version") != FORMAT_VERSION:
        return "its keyword index has another format"
    if info.get("count") != count:
        return f"its keyword index holds {info.get('count')} documents, the mapping {count}"
    return None


class KeywordIndex:
    """A loaded keyword index: search is thread-safe (one searcher, nothing changes)."""

    def __init__(self, index: tantivy.Index, origin: str) -> None:
        self._index = index
        self._schema = index.schema
        self._searcher = index.searcher()
        self._analyzer = analyzer()
        self.origin = origin  # the directory, or "memory"

    @classmethod
    def build(cls, mapping: pa.Table) -> KeywordIndex:
        """Build the keyword index of ``mapping`` in memory."""
        index = _new_index(None)
        _fill(index, mapping)
        return cls(index, "memory")

    @classmethod
    def open(cls, directory: Path, mapping: pa.Table) -> KeywordIndex:
        """Open ``directory`` (an index directory's keyword/), or build the keyword index of
        ``mapping`` in memory when it is missing, of another format or unreadable."""
        reason = _readable(directory, mapping.num_rows)
        if reason is None:
            try:
                index = tantivy.Index.open(str(directory))
                index.register_tokenizer(ANALYZER, analyzer())
                loaded = cls(index, str(directory))
                if loaded.count == mapping.num_rows:
                    return loaded
                reason = f"its keyword index holds {loaded.count} documents"
            except ValueError as err:  # tantivy reports a corrupt directory as ValueError
                reason = f"its keyword index is unreadable ({str(err).splitlines()[0]})"
        start = time.perf_counter()
        built = cls.build(mapping)
        logger.warning(
            "index %s: %s; built the keyword index in memory (%d documents, %.1f s)",
            directory.parent,
            reason,
            mapping.num_rows,
            time.perf_counter() - start,
        )
        return built

    @property
    def count(self) -> int:
        return int(self._searcher.num_docs)

    def tokens(self, text: str) -> list[str]:
        """The distinct indexable tokens of ``text``, in order, at most MAX_QUERY_TOKENS."""
        return list(dict.fromkeys(self._analyzer.analyze(text)))[:MAX_QUERY_TOKENS]

    def filter_query(self, clauses: Sequence[Clause]) -> tantivy.Query | None:
        """The clauses (all must hold) as one tantivy query; None for no clauses."""
        if not clauses:
            return None
        parts = [(tantivy.Occur.Must, self._clause(clause)) for clause in clauses]
        return tantivy.Query.boolean_query(parts)

    def _clause(self, clause: Clause) -> tantivy.Query:
        if isinstance(clause, RangeClause):
            return self._range(clause.field, clause.low, clause.high)
        if not clause.values:
            return tantivy.Query.empty_query()
        runs = _runs(clause.values)
        if len(runs) <= MAX_RANGE_CLAUSES:
            ranges = [(tantivy.Occur.Should, self._range(clause.field, a, b)) for a, b in runs]
            return tantivy.Query.boolean_query(ranges)
        return tantivy.Query.term_set_query(self._schema, clause.field, list(clause.values))

    def _range(self, field: str, low: int | None, high: int | None) -> tantivy.Query:
        # Over the inverted index (every filter field is indexed): measured 1.1-3.5x faster than
        # the fast-field scan at 1M documents for filters allowing 1% to 33% of them.
        return tantivy.Query.range_query(
            self._schema,
            field,
            tantivy.FieldType.Integer,
            lower_bound=low,
            upper_bound=high,
            use_inverted_index=True,
        )

    def search(
        self, text: str, limit: int, restrict: tantivy.Query | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``limit`` best entries for ``text`` by BM25, among those ``restrict`` allows.

        Returns:
            int64 (h,) ids and float32 (h,) BM25 scores, best first, ties by id; h <= limit,
            0 when ``text`` has no indexable token.
        """
        tokens = self.tokens(text)
        if not tokens or limit <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        terms = [
            (tantivy.Occur.Should, tantivy.Query.term_query(self._schema, name, token))
            for token in tokens
            for name in TEXT_FIELDS
        ]
        query = tantivy.Query.boolean_query(terms)
        if restrict is not None:
            query = tantivy.Query.boolean_query(
                [(tantivy.Occur.Must, query), (tantivy.Occur.Must, restrict)]
            )
        hits = self._searcher.search(query, limit, count=False).hits
        scores = np.fromiter((score for score, _ in hits), dtype=np.float32, count=len(hits))
        found = self._searcher.fast_field_values("id", [address for _, address in hits])
        ids = np.asarray(found, dtype=np.int64)  # (h,)
        order = np.lexsort((ids, -scores))  # score descending, then id
        return ids[order], scores[order]


def _runs(values: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted integers -> inclusive runs of consecutive values."""
    runs: list[tuple[int, int]] = []
    for value in values:
        if runs and value == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], value)
        else:
            runs.append((value, value))
    return runs
