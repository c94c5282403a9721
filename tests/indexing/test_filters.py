"""Tests for indexing.filters: SearchFilter validation, and compiled filters against a row-by-row
reference over a small mapping with nulls in every filter column."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexing.filters import FilterColumns, QueryError, SearchFilter
from tests.indexing._filter_data import mapping, reference

TABLE = mapping()
COLUMNS = FilterColumns(TABLE)

bounds = st.one_of(st.none(), st.integers(0, 420))
filters = st.builds(
    SearchFilter,
    source=st.sampled_from([None, "*", "file:///data/*", "shard-0000[01].tar", "*laion*", "x"]),
    min_width=bounds,
    max_width=bounds,
    min_height=bounds,
    max_height=bounds,
    model=st.sampled_from([None, "blip-base", "native-sat", "unknown"]),
    model_version=st.sampled_from([None, "v1", "v2"]),
    captioned_after=st.sampled_from(
        [
            None,
            "2024-03-15",
            "2024-03-15T12:30:00",
            "2024-03-15T12:30:00Z",
            "2023-12-31T23:00-02:00",
        ]
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_compiled_ids_match_the_row_by_row_reference(data: st.DataObject) -> None:
    try:
        f = data.draw(filters)
    except QueryError:  # min above max: rejected at construction (tested below)
        return
    compiled = COLUMNS.compile(f)
    assert compiled.ids.tolist() == reference(TABLE, f)


@pytest.mark.parametrize(
    ("f", "expected_share"),
    [
        (SearchFilter(source="shard-00001.tar"), "some"),
        (SearchFilter(model="blip-base"), "some"),
        (SearchFilter(model_version="v2"), "some"),
        (SearchFilter(min_width=200), "some"),
        (SearchFilter(max_height=100), "some"),
        (SearchFilter(captioned_after="2024-03-15T12:30:00Z"), "some"),
        (SearchFilter(model="nobody"), "none"),
        (SearchFilter(source="*.zip"), "none"),
    ],
)
def test_each_field_restricts(f: SearchFilter, expected_share: str) -> None:
    compiled = COLUMNS.compile(f)
    want = reference(TABLE, f)
    assert compiled.ids.tolist() == want
    assert (0 < len(want) < TABLE.num_rows) if expected_share == "some" else not want


def test_the_same_instant_in_another_offset_is_not_after_itself() -> None:
    # 14:30+02:00 is 12:30 UTC: strictly after 12:30Z leaves out both 12:30 rows.
    compiled = COLUMNS.compile(SearchFilter(captioned_after="2024-03-15T12:30:00+00:00"))
    times = TABLE.column("captioned_at").to_pylist()
    ids = TABLE.column("id").to_pylist()
    late = {ids[i] for i, t in enumerate(times) if t is not None and t.startswith("2025")}
    assert set(compiled.ids.tolist()) == late


def test_unreadable_times_match_no_date_filter() -> None:
    table = TABLE.set_column(
        TABLE.schema.get_field_index("captioned_at"),
        "captioned_at",
        pa.array(["2024-05-01T10:00:00"] + ["not a time"] * (TABLE.num_rows - 1)),
    )
    compiled = FilterColumns(table).compile(SearchFilter(captioned_after="2024-01-01"))
    assert compiled.ids.tolist() == [TABLE.column("id")[0].as_py()]


def test_blank_strings_mean_no_filter() -> None:
    f = SearchFilter(source="", model="  ", model_version="", captioned_after="")
    assert f.is_empty
    assert SearchFilter().is_empty
    assert not SearchFilter(min_width=0).is_empty


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_width": -1}, "min_width must be in"),
        ({"max_height": 2**40}, "max_height must be in"),
        ({"min_width": 10, "max_width": 9}, "min_width 10 is above max_width 9"),
        ({"min_height": 5, "max_height": 4}, "above"),
        ({"min_width": True}, "must be an integer"),
        ({"min_width": 1.5}, "must be an integer"),
        ({"min_width": "10"}, "must be an integer"),
        ({"captioned_after": "yesterday"}, "not a valid ISO-8601"),
        ({"captioned_after": "2024-13-01"}, "not a valid ISO-8601"),
        ({"captioned_after": "9999-12-31T23:59:59-01:00"}, "not a valid ISO-8601"),
        ({"model": 3}, "must be a string"),
        ({"source": "a\x00b"}, "NUL"),
        ({"source": "*" * 5000}, "longer than"),
    ],
)
def test_bad_values_raise_query_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        SearchFilter(**kwargs)


def test_empty_mapping_compiles() -> None:
    empty = FilterColumns(mapping(0))
    assert empty.compile(SearchFilter(model="x", min_width=1)).count == 0
