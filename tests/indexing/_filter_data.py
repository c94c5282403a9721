"""A small mapping with nulls in every filter column, and the filters' row-by-row reference."""

from __future__ import annotations

import fnmatch
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from indexing.build import MAPPING_SCHEMA
from indexing.filters import SearchFilter

SOURCES = [
    "file:///data/shard-00000.tar",
    "file:///data/shard-00001.tar",
    "s3://bucket/laion/shard-00002.tar",
    "file:///photos/holiday",
]
MODELS = ["blip-base", "native-sat", None]
VERSIONS = ["v1", "v2", None]
TIMES = [
    "2024-01-01T00:00:00+00:00",
    "2024-03-15T12:30:00+00:00",
    "2024-03-15T14:30:00+02:00",  # = 12:30 UTC
    "2025-06-01T08:00:00+00:00",
    None,
]


def mapping(n: int = 80, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)

    def pick(values: list[Any]) -> list[Any]:
        return [values[i] for i in rng.integers(0, len(values), n)]

    sizes = rng.integers(0, 400, (2, n))
    nulls = rng.random((2, n)) < 0.15
    columns = {
        "id": np.arange(100, 100 + 3 * n, 3, dtype=np.int64),
        "key": [f"k{i}" for i in range(n)],
        "caption": [f"caption {i}" for i in range(n)],
        "source": pick(SOURCES),
        "member": [f"{i}.jpg" for i in range(n)],
        "width": [None if nulls[0, i] else int(sizes[0, i]) for i in range(n)],
        "height": [None if nulls[1, i] else int(sizes[1, i]) for i in range(n)],
        "model": pick(MODELS),
        "model_version": pick(VERSIONS),
        "captioned_at": pick(TIMES),
    }
    full = {name: columns.get(name, [None] * n) for name in MAPPING_SCHEMA.names}
    return pa.table(full, schema=MAPPING_SCHEMA)


def reference(table: pa.Table, f: SearchFilter) -> list[int]:
    """The ids a filter allows, decided row by row in plain Python."""
    allowed = []
    after = None
    if f.captioned_after:
        after = datetime.fromisoformat(f.captioned_after)
        after = after if after.tzinfo else after.replace(tzinfo=UTC)
    for row in table.to_pylist():
        if f.source is not None:
            name = row["source"].rsplit("/", 1)[-1]
            by_name = "/" not in f.source and fnmatch.fnmatchcase(name, f.source)
            if not (fnmatch.fnmatchcase(row["source"], f.source) or by_name):
                continue
        if any(
            getattr(f, name) is not None and row[name] != getattr(f, name)
            for name in ("model", "model_version")
        ):
            continue
        ok = True
        for axis in ("width", "height"):
            low, high = getattr(f, f"min_{axis}"), getattr(f, f"max_{axis}")
            if low is None and high is None:
                continue
            value = row[axis]
            ok &= value is not None and (low is None or value >= low)
            ok &= value is not None and (high is None or value <= high)
        if after is not None:
            at = row["captioned_at"]
            ok &= at is not None and datetime.fromisoformat(at) > after
        if ok:
            allowed.append(row["id"])
    return sorted(allowed)
