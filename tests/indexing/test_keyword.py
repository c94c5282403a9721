"""Tests for indexing.keyword: BM25 over captions, query text that never raises, filters inside
the search agreeing with the compiled ids, and the on-disk index and its in-memory fallback."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexing.filters import FilterColumns, SearchFilter
from indexing.keyword import (
    FORMAT_FILE,
    KeywordIndex,
    KeywordIndexError,
    analyzer,
    write_keyword_index,
)
from tests.indexing._filter_data import mapping

WORDS = ["red", "blue", "green", "circle", "square", "star", "small", "large", "left", "right"]


def captioned(n: int = 80, seed: int = 0) -> pa.Table:
    """The filter-test mapping with captions of common words, one rare word and one alt text."""
    rng = np.random.default_rng(seed)
    table = mapping(n, seed)
    captions = [" ".join(rng.choice(WORDS, 6)) + " on a plain photo" for _ in range(n)]
    captions[17] = "a small zebra near the harbour"
    alt = [None] * n
    alt[23] = "Grandma's café in Zürich"
    table = table.set_column(table.schema.get_field_index("caption"), "caption", pa.array(captions))
    return table.set_column(table.schema.get_field_index("alt_text"), "alt_text", pa.array(alt))


TABLE = captioned()
IDS = TABLE.column("id").to_pylist()
KEYWORD = KeywordIndex.build(TABLE)  # in memory, for the generated cases


@pytest.fixture(scope="module")
def keyword(tmp_path_factory: pytest.TempPathFactory) -> KeywordIndex:
    directory = tmp_path_factory.mktemp("kw") / "keyword"
    write_keyword_index(directory, TABLE)
    return KeywordIndex.open(directory, TABLE)


def test_the_analyzer_stems_folds_and_drops_stop_words() -> None:
    assert analyzer().analyze("The Running dogs of Zürich, a CAFÉ!") == [
        "run",
        "dog",
        "zurich",
        "cafe",
    ]


def test_a_rare_word_is_found_first_and_scores_are_bm25_descending(keyword: KeywordIndex) -> None:
    ids, scores = keyword.search("zebra", 10)
    assert ids.tolist() == [IDS[17]]
    ids, scores = keyword.search("red circle", 1000)
    assert len(ids) > 1
    assert (np.diff(scores) <= 0).all()
    assert len(set(ids.tolist())) == len(ids)


def test_alt_text_and_file_names_are_searchable(keyword: KeywordIndex) -> None:
    assert keyword.search("cafe zurich", 5)[0][0] == IDS[23]
    # Members are "<i>.jpg"; the name field holds key and member.
    assert keyword.search("k42", 5)[0].tolist() == [IDS[42]]


def test_stemming_matches_other_forms(keyword: KeywordIndex) -> None:
    assert keyword.search("zebras", 5)[0].tolist() == [IDS[17]]
    assert keyword.search("circles", 1000)[0].tolist() == keyword.search("circle", 1000)[0].tolist()


@pytest.mark.parametrize(
    "text", ['"((:', "AND OR NOT", "the a of", "caption:zebra", "id:[0 TO 5]", "*", "~", "🦓", ""]
)
def test_query_syntax_is_just_text(keyword: KeywordIndex, text: str) -> None:
    ids, scores = keyword.search(text, 10)
    assert len(ids) == len(scores)
    if text == "caption:zebra":
        assert ids.tolist() == [IDS[17]]  # "caption" is a word here, not a field
    if text in ("AND OR NOT", "the a of", "", "*", "~"):
        assert len(ids) == 0  # no indexable token: nothing, not an error


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_no_text_raises(text: str) -> None:
    ids, _ = KEYWORD.search(text, 20)
    assert set(ids.tolist()) <= set(IDS)


def everything(index: KeywordIndex, f: SearchFilter) -> list[int]:
    """Every id the keyword side allows under ``f`` (every caption has "photo")."""
    compiled = FilterColumns(TABLE).compile(f)
    ids, _ = index.search("photo zebra", 10_000, index.filter_query(compiled.clauses))
    return sorted(ids.tolist())


@settings(max_examples=150, deadline=None)
@given(
    st.builds(
        SearchFilter,
        source=st.sampled_from([None, "*", "shard-0000[01].tar", "*laion*", "holiday", "x"]),
        min_width=st.one_of(st.none(), st.integers(0, 250)),
        max_width=st.one_of(st.none(), st.integers(250, 420)),
        min_height=st.one_of(st.none(), st.integers(0, 250)),
        model=st.sampled_from([None, "blip-base", "native-sat", "unknown"]),
        model_version=st.sampled_from([None, "v1", "v2"]),
        captioned_after=st.sampled_from([None, "2024-03-15T12:30:00Z", "2024-01-01"]),
    )
)
def test_keyword_filters_allow_exactly_the_compiled_ids(f: SearchFilter) -> None:
    compiled = FilterColumns(TABLE).compile(f)
    assert everything(KEYWORD, f) == compiled.ids.tolist()


def test_a_source_set_of_many_runs_uses_a_term_set(tmp_path: Path) -> None:
    # 40 distinct sources, every other one allowed: 20 runs, above MAX_RANGE_CLAUSES.
    table = TABLE.set_column(
        TABLE.schema.get_field_index("source"),
        "source",
        pa.array([f"file:///d/s{i % 40:02d}.tar" for i in range(TABLE.num_rows)]),
    )
    index = KeywordIndex.build(table)
    columns = FilterColumns(table)
    compiled = columns.compile(SearchFilter(source="s[0-9][02468].tar"))
    ids, _ = index.search("photo zebra", 10_000, index.filter_query(compiled.clauses))
    assert sorted(ids.tolist()) == compiled.ids.tolist()


def test_an_index_dir_without_a_keyword_index_gets_one_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="indexing.keyword"):
        index = KeywordIndex.open(tmp_path / "keyword", TABLE)
    assert index.origin == "memory"
    assert "no keyword index" in caplog.text
    assert index.search("zebra", 5)[0].tolist() == [IDS[17]]


@pytest.mark.parametrize("damage", ["format", "count", "unreadable", "segments"])
def test_a_damaged_keyword_index_is_rebuilt_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    directory = tmp_path / "keyword"
    write_keyword_index(directory, TABLE)
    info = directory / FORMAT_FILE
    if damage == "format":
        info.write_text('{"format_version": 999, "count": 80}')
    elif damage == "count":
        info.write_text(info.read_text().replace('"count": 80', '"count": 81'))
    elif damage == "unreadable":
        info.write_text("{not json")
    else:
        (directory / "meta.json").write_text("garbage")
    with caplog.at_level(logging.WARNING, logger="indexing.keyword"):
        index = KeywordIndex.open(directory, TABLE)
    assert index.origin == "memory"
    assert "built the keyword index in memory" in caplog.text
    assert index.search("zebra", 5)[0].tolist() == [IDS[17]]


def test_write_refuses_an_existing_directory(tmp_path: Path) -> None:
    (tmp_path / "keyword").mkdir()
    with pytest.raises(KeywordIndexError, match="exists"):
        write_keyword_index(tmp_path / "keyword", TABLE)


def test_an_empty_mapping_gives_an_empty_index(tmp_path: Path) -> None:
    write_keyword_index(tmp_path / "keyword", mapping(0))
    index = KeywordIndex.open(tmp_path / "keyword", mapping(0))
    assert index.origin == str(tmp_path / "keyword")
    assert index.count == 0
    assert len(index.search("anything", 10)[0]) == 0
