"""A SearchFilter + an index's mapping -> the allowed ids and the same restriction as clauses.

Both sides of a search apply one compilation of a filter: the vector side gets the allowed ids
(a FAISS ID selector, indexing.vector), the keyword side the clauses over the keyword index's
filter fields (indexing.keyword), which hold the same integer codes FilterColumns computes here.
A test checks the two agree on every field. Nulls never match a restriction on their field.
"""

from __future__ import annotations

import bisect
import fnmatch
import logging
from dataclasses import dataclass, fields
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from indexing.errors import IndexingError

logger = logging.getLogger(__name__)

MAX_PATTERN_CHARS = 1024
MAX_PIXELS = 2**31 - 1  # the mapping's width and height are int32
NULL_CODE = -1  # a null string column value; no code is negative
NULL_TIME = np.iinfo(np.int64).min  # a null or unreadable captioned_at
# The mapping's string columns a filter matches exactly, by code into their sorted distinct values.
CODED_COLUMNS = ("source", "model", "model_version")
SIZE_COLUMNS = ("width", "height")
TIME_COLUMN = "captioned_at"
# Names of the clauses' fields (the keyword index stores these).
TIME_FIELD = "captioned_us"


class QueryError(IndexingError):
    """A query the caller can fix: empty text, bad k/offset/mode, unknown key, bad filter."""


def _blank_to_none(value: object, name: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise QueryError(f"filter {name} must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise QueryError(f"filter {name} contains a NUL character")
    if len(value) > limit:
        raise QueryError(f"filter {name} is longer than {limit} characters")
    return value if value.strip() else None


def parse_time(text: str, name: str = "captioned_after") -> datetime:
    """ISO-8601 date or datetime -> an aware UTC datetime (a naive one is taken as UTC).

    Raises:
        QueryError: not ISO-8601.
    """
    try:
        when = datetime.fromisoformat(text.strip())
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except (ValueError, OverflowError) as err:
        raise QueryError(
            f"filter {name} {text!r} is not a valid ISO-8601 date or time: write e.g. "
            "2024-05-01 or 2024-05-01T12:00:00Z"
        ) from err


def _micros(when: datetime) -> int:
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True, slots=True)
class SearchFilter:
    """Restrictions applied inside the search (FAISS ID selector, the keyword engine's query).

    Attributes:
        source: fnmatch-style glob over the entry's source URI (e.g. ``*shard-0000[0-3].tar``);
            a glob without "/" also matches the URI's last path component (``shard-0000?.tar``).
        min_width, max_width, min_height, max_height: inclusive pixel bounds.
        model, model_version: exact match on the captioner's name / version.
        captioned_after: ISO-8601 date or datetime; entries captioned strictly after it (a date
            is its midnight, a time without offset is UTC).
    All None (the default) means no filter; an empty or blank string counts as None (an HTML
    form's empty field). __post_init__ raises QueryError on bad values (min > max, negative
    sizes, an unparseable date, a wrong type).
    """

    source: str | None = None
    min_width: int | None = None
    max_width: int | None = None
    min_height: int | None = None
    max_height: int | None = None
    model: str | None = None
    model_version: str | None = None
    captioned_after: str | None = None

    def __post_init__(self) -> None:
        for name in ("source", "model", "model_version", "captioned_after"):
            value = _blank_to_none(getattr(self, name), name, MAX_PATTERN_CHARS)
            object.__setattr__(self, name, value)
        for name in ("min_width", "max_width", "min_height", "max_height"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise QueryError(f"filter {name} must be an integer, got {value!r}")
            if not 0 <= value <= MAX_PIXELS:
                raise QueryError(f"filter {name} must be in [0, {MAX_PIXELS}], got {value}")
            object.__setattr__(self, name, int(value))
        for axis in ("width", "height"):
            low, high = getattr(self, f"min_{axis}"), getattr(self, f"max_{axis}")
            if low is not None and high is not None and low > high:
                raise QueryError(f"filter min_{axis} {low} is above max_{axis} {high}")
        if self.captioned_after is not None:
            parse_time(self.captioned_after)

    @property
    def is_empty(self) -> bool:
        """True when the filter restricts nothing."""
        return all(getattr(self, f.name) is None for f in fields(self))


@dataclass(frozen=True, slots=True)
class RangeClause:
    """field in [low, high] (inclusive; None: unbounded) over an integer field."""

    field: str
    low: int | None
    high: int | None


@dataclass(frozen=True, slots=True)
class SetClause:
    """field is one of ``values`` (sorted integer codes)."""

    field: str
    values: tuple[int, ...]


Clause = RangeClause | SetClause


@dataclass(frozen=True, slots=True, eq=False)  # eq=False: ndarray == is elementwise
class CompiledFilter:
    """A filter against one index version: its allowed ids and the clauses that say the same.

    Attributes:
        filter: what was compiled.
        ids: int64 (A,) the allowed ids, ascending.
        clauses: the restriction as clauses over FilterColumns' fields (all must hold).
    """

    filter: SearchFilter
    ids: np.ndarray
    clauses: tuple[Clause, ...]

    @property
    def count(self) -> int:
        return len(self.ids)


def _codes(column: pa.ChunkedArray | pa.Array) -> tuple[tuple[str, ...], np.ndarray]:
    """A string column -> its sorted distinct values and int32 (N,) codes into them (NULL_CODE)."""
    values = pc.unique(column).drop_null()
    values = values.take(pc.sort_indices(values))
    codes = pc.index_in(column, value_set=values).fill_null(NULL_CODE)
    return tuple(values.to_pylist()), np.asarray(codes.to_numpy(zero_copy_only=False), np.int32)


def _time_micros(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """ISO-8601 strings -> int64 (N,) microseconds since the epoch, NULL_TIME where null/bad."""
    try:  # our captioner writes ISO-8601 with an offset: Arrow parses it in one pass
        stamps = pc.cast(column, pa.timestamp("us", tz="UTC"))
        micros = pc.cast(stamps, pa.int64()).fill_null(NULL_TIME)
        return np.asarray(micros.to_numpy(zero_copy_only=False), np.int64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    out = np.full(len(column), NULL_TIME, dtype=np.int64)  # (N,)
    bad = 0
    for row, text in enumerate(column.to_pylist()):
        if text is None:
            continue
        try:
            out[row] = _micros(parse_time(text))
        except QueryError:
            bad += 1
    if bad:
        logger.warning("%d captioned_at values are not ISO-8601: they match no date filter", bad)
    return out


class FilterColumns:
    """An index's filterable columns as numpy arrays and codes: what filters are compiled over.

    The keyword index stores the same values per document (``fields(row)``), so a filter means
    the same on both sides. String columns are coded by their position among the column's sorted
    distinct values, which depends only on the mapping.
    """

    def __init__(self, mapping: pa.Table) -> None:
        self.ids = np.asarray(mapping.column("id").to_numpy(), dtype=np.int64)  # (N,)
        self.values: dict[str, tuple[str, ...]] = {}
        self.codes: dict[str, np.ndarray] = {}
        for name in CODED_COLUMNS:
            self.values[name], self.codes[name] = _codes(mapping.column(name))  # (N,) int32
        self.sizes = {
            name: np.asarray(mapping.column(name).fill_null(-1).to_numpy(), np.int64)
            for name in SIZE_COLUMNS
        }  # (N,) each, -1 where unknown
        self.times = _time_micros(mapping.column(TIME_COLUMN))  # (N,) int64

    def __len__(self) -> int:
        return len(self.ids)

    def field_arrays(self) -> dict[str, tuple[np.ndarray, int]]:
        """Each clause field -> its int64 (N,) values and the value that stands for null."""
        out = {name: (codes.astype(np.int64), NULL_CODE) for name, codes in self.codes.items()}
        out |= {name: (sizes, -1) for name, sizes in self.sizes.items()}
        out[TIME_FIELD] = (self.times, int(NULL_TIME))
        return out

    def compile(self, search_filter: SearchFilter) -> CompiledFilter:
        """The allowed ids and clauses of ``search_filter`` over these columns."""
        clauses = self._clauses(search_filter)
        mask = np.ones(len(self.ids), dtype=bool)  # (N,)
        for clause in clauses:
            mask &= self._mask(clause)
        return CompiledFilter(search_filter, np.sort(self.ids[mask]), tuple(clauses))

    def _clauses(self, f: SearchFilter) -> list[Clause]:
        clauses: list[Clause] = []
        if f.source is not None:
            clauses.append(SetClause("source", self._matching_sources(f.source)))
        for name in ("model", "model_version"):
            wanted = getattr(f, name)
            if wanted is not None:
                values = self.values[name]
                code = _find(values, wanted)
                clauses.append(SetClause(name, () if code is None else (code,)))
        for axis in SIZE_COLUMNS:
            low, high = getattr(f, f"min_{axis}"), getattr(f, f"max_{axis}")
            if low is not None or high is not None:
                clauses.append(RangeClause(axis, low or 0, high))  # low 0 leaves out unknown (-1)
        if f.captioned_after is not None:
            after = _micros(parse_time(f.captioned_after))
            clauses.append(RangeClause(TIME_FIELD, after + 1, None))
        return clauses

    def _matching_sources(self, pattern: str) -> tuple[int, ...]:
        by_name = "/" not in pattern
        return tuple(
            code
            for code, source in enumerate(self.values["source"])
            if fnmatch.fnmatchcase(source, pattern)
            or by_name
            and fnmatch.fnmatchcase(source.rstrip("/").rsplit("/", 1)[-1], pattern)
        )

    def _mask(self, clause: Clause) -> np.ndarray:
        if isinstance(clause, SetClause):
            codes = self.codes[clause.field]  # (N,)
            table = np.zeros(len(self.values[clause.field]) + 1, dtype=bool)  # last: NULL_CODE
            table[list(clause.values)] = True
            return table[codes]  # (N,) codes -> allowed
        column = self.times if clause.field == TIME_FIELD else self.sizes[clause.field]
        mask = np.ones(len(column), dtype=bool)
        if clause.low is not None:
            mask &= column >= clause.low
        if clause.high is not None:
            mask &= column <= clause.high
        return mask


def _find(values: tuple[str, ...], wanted: str) -> int | None:
    at = bisect.bisect_left(values, wanted)
    return at if at < len(values) and values[at] == wanted else None
