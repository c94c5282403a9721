"""An index's mapping table -> fast lookups: entry ids or keys -> row numbers -> entry dicts.

Parquet reads a mapping as many chunks; ``Table.take`` on a chunked 1M-row table then costs tens
of ms per query (it resolves chunk boundaries for every column). The table is combined into one
chunk per column once at load, after which taking a page of rows costs microseconds.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def _one_chunk(column: pa.ChunkedArray) -> pa.Array:
    if column.num_chunks == 1:
        return column.chunk(0)
    if column.num_chunks == 0:
        return pa.array([], type=column.type)
    try:
        return column.combine_chunks()
    except pa.ArrowInvalid:  # over 2 GiB of string data: 32-bit offsets overflow
        large = pa.large_string() if pa.types.is_string(column.type) else pa.large_binary()
        return column.cast(large).combine_chunks()


class _SortedKeys(Sequence[str]):
    """The keys in sorted order, read through a permutation (a sequence bisect can search)."""

    def __init__(self, keys: pa.Array, order: pa.Array) -> None:
        self._sorted = keys.take(order)
        self._order = order

    def __len__(self) -> int:
        return len(self._sorted)

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        return self._sorted[i].as_py()

    def row(self, position: int) -> int:
        return int(self._order[position].as_py())


class EntryTable:
    """The mapping held for lookups; thread-safe to read (nothing changes after __init__).

    Args:
        mapping: the mapping table (MAPPING_SCHEMA): an "id" and a "key" column and the rest.
    """

    def __init__(self, mapping: pa.Table) -> None:
        self._columns = {name: _one_chunk(mapping.column(name)) for name in mapping.column_names}
        self._table = pa.Table.from_arrays(list(self._columns.values()), schema=mapping.schema)
        self.ids = np.asarray(self._columns["id"].to_numpy(), dtype=np.int64)  # (N,)
        self._order = np.argsort(self.ids, kind="stable")  # (N,) rows sorted by id
        self._sorted_ids = self.ids[self._order]  # (N,)
        keys = self._columns["key"]
        self._keys = _SortedKeys(keys, pc.sort_indices(keys))  # stable: equal keys by row
        self.fields = tuple(name for name in mapping.column_names if name != "id")

    @property
    def table(self) -> pa.Table:
        """The mapping, one chunk per column."""
        return self._table

    def __len__(self) -> int:
        return len(self.ids)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """int64 (h,) entry ids -> int64 (h,) row numbers; -1 for an id not in the mapping."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(self.ids):
            return np.full(len(ids), -1, dtype=np.int64)
        at = np.searchsorted(self._sorted_ids, ids).clip(0, len(self.ids) - 1)  # (h,)
        rows = self._order[at]  # (h,) positions -> rows
        return np.where(self._sorted_ids[at] == ids, rows, -1)

    def row_of_key(self, key: str) -> int | None:
        """The row of ``key`` (the lowest row when a key repeats), or None."""
        if not isinstance(key, str):
            return None
        at = bisect.bisect_left(self._keys, key)
        if at < len(self._keys) and self._keys[at] == key:
            return self._keys.row(at)
        return None

    def entries(self, rows: np.ndarray, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The given rows as dicts of ``names`` (default: every column but id), in row order."""
        take = pa.array(np.asarray(rows, dtype=np.int64), type=pa.int64())
        names = self.fields if names is None else names
        values = [self._columns[name].take(take).to_pylist() for name in names]  # per column
        return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]

    def column(self, name: str) -> pa.Array:
        """One column as a single Arrow array."""
        return self._columns[name]
