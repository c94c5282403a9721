"""Tests for indexing.retrieval: the three modes, filters inside the search on every index type
(checked against brute force over the allowed subset), stable paging, more-like-this, old index
directories, and every bad input as a QueryError."""

from __future__ import annotations

import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexing.ann import AnnConfig
from indexing.build import MANIFEST_FILE, MAPPING_FILE, IndexEntry, Manifest, write_index
from indexing.collection import INDEX_DIR, Collection
from indexing.embed import TextEmbedder
from indexing.fusion import RRF_K
from indexing.keyword import KEYWORD_DIR
from indexing.retrieval import (
    FILTER_CACHE,
    KEYWORD_WEIGHT,
    VECTOR_WEIGHT,
    WINDOW,
    QueryError,
    RankedHit,
    Retriever,
    SearchFilter,
)
from tests.indexing._filter_data import reference
from tests.indexing._helpers import colour_shape_captions, make_manifest, random_unit_vectors

RARE = "a zebra crossing near the harbour"
RARE_ROW = 7
SEED_TYPES = ("flat", "ivf-flat", "ivf-sq8", "ivf-pq", "hnsw")
SMALLEST_PARAMS = {
    "ivf-flat": {"nprobe": 1},
    "ivf-sq8": {"nprobe": 1},
    "ivf-pq": {"nprobe": 1, "k_factor": 1},
    "hnsw": {"ef_search": 16},
}
N_VECTORS = 3000
SHARDS = 100  # every shard holds 1% of the vector indexes


def detailed_entries(captions: list[str], shards: int = 3) -> list[IndexEntry]:
    """Entries with sparse ids and every filter field set (some left null)."""
    return [
        IndexEntry(
            id=1000 + 7 * i,
            key=f"img{i:04d}",
            caption=caption,
            source=f"file:///data/shard-{i % shards:05d}.tar",
            member=f"{i:04d}.jpg",
            sha256=f"{i:064x}",
            width=None if i % 11 == 0 else 64 + (i * 37) % 900,
            height=None if i % 13 == 0 else 64 + (i * 53) % 700,
            model=("blip-base", "native-sat")[i % 2],
            model_version=f"v{i % 3}",
            captioned_at=None if i % 17 == 0 else f"2024-{1 + i % 12:02d}-01T10:00:00+00:00",
        )
        for i, caption in enumerate(captions)
    ]


@pytest.fixture(scope="module")
def text_index(
    tmp_path_factory: pytest.TempPathFactory, tiny_embedder: TextEmbedder
) -> tuple[Retriever, np.ndarray]:
    """60 captions (one with a rare word) embedded with the tiny model, exact Flat."""
    captions = colour_shape_captions()
    captions[RARE_ROW] = RARE
    vectors = tiny_embedder.embed(captions)  # (60, 32)
    out = tmp_path_factory.mktemp("retrieval") / "text"
    write_index(out, detailed_entries(captions), vectors, make_manifest(tiny_embedder, 60))
    return Retriever.open(out, tiny_embedder), vectors


def build_vector_index(out: Path, kind: str, embedder: TextEmbedder) -> np.ndarray:
    """N_VECTORS random unit vectors under index type ``kind``, searched with its smallest
    parameters (nprobe 1, efSearch 16) so a filter cannot be satisfied without help."""
    vectors = random_unit_vectors(N_VECTORS, embedder.dimension, seed=3)  # (N, 32)
    captions = [f"item number {i} word{i % 50} photo" for i in range(N_VECTORS)]
    ann = None if kind == "flat" else AnnConfig(index_type=kind, target_recall=0.05)
    manifest = make_manifest(embedder, N_VECTORS)
    write_index(out, detailed_entries(captions, SHARDS), vectors, manifest, ann=ann)
    if kind != "flat":
        path = out / MANIFEST_FILE
        written = Manifest.from_json(path.read_text(encoding="utf-8"))
        small = tuple(sorted(SMALLEST_PARAMS[kind].items()))
        path.write_text(replace(written, search_params=small).to_json(), encoding="utf-8")
    return vectors


@pytest.fixture(scope="module")
def vector_indexes(
    tmp_path_factory: pytest.TempPathFactory, tiny_embedder: TextEmbedder
) -> dict[str, tuple[Retriever, np.ndarray]]:
    root = tmp_path_factory.mktemp("vector-indexes")
    out = {}
    for kind in SEED_TYPES:
        vectors = build_vector_index(root / kind, kind, tiny_embedder)
        out[kind] = (Retriever.open(root / kind, tiny_embedder), vectors)
    return out


def ids_of(hits: list[RankedHit]) -> list[int]:
    return [h.id for h in hits]


def brute_force(vectors: np.ndarray, query: np.ndarray, allowed: list[int], k: int) -> list[int]:
    """The exact top-k ids among ``allowed`` (ids are 1000 + 7 * row)."""
    rows = (np.array(allowed, dtype=np.int64) - 1000) // 7  # (A,)
    scores = vectors[rows] @ query  # (A, D) @ (D,) -> (A,)
    order = np.lexsort((rows, -scores))[:k]
    return (1000 + 7 * rows[order]).tolist()


def mapping_of(retriever: Retriever) -> Any:
    return retriever.search_index.entries.table


# -- the three modes ---------------------------------------------------------------------------


def test_keyword_finds_the_rare_word_first(text_index: tuple[Retriever, np.ndarray]) -> None:
    retriever, _ = text_index
    hits = retriever.query("zebra", k=5, mode="keyword")
    assert [h.entry["key"] for h in hits] == [f"img{RARE_ROW:04d}"]
    assert (hits[0].keyword_rank, hits[0].vector_rank, hits[0].rank) == (1, None, 1)
    assert hits[0].score == hits[0].keyword_score > 0
    fused = retriever.query("zebra", k=5)  # hybrid
    assert fused[0].entry["key"] == f"img{RARE_ROW:04d}"


def test_vector_mode_is_exact_on_flat(
    text_index: tuple[Retriever, np.ndarray], tiny_embedder: TextEmbedder
) -> None:
    retriever, vectors = text_index
    for text in ("two green squares", "one black star on a plain background"):
        hits = retriever.query(text, k=8, mode="vector")
        query = tiny_embedder.embed([text])[0]
        all_ids = [1000 + 7 * i for i in range(60)]
        assert ids_of(hits) == brute_force(vectors, query, all_ids, 8)
        np.testing.assert_allclose([h.score for h in hits], [h.vector_score for h in hits])
        assert all(h.keyword_rank is None for h in hits)


def test_hybrid_scores_are_the_rrf_of_the_side_ranks(
    text_index: tuple[Retriever, np.ndarray],
) -> None:
    retriever, _ = text_index
    hits = retriever.query("three red circles", k=20)
    assert [h.rank for h in hits] == list(range(1, 21))
    for hit in hits:
        weighted = ((VECTOR_WEIGHT, hit.vector_rank), (KEYWORD_WEIGHT, hit.keyword_rank))
        want = sum(w / (RRF_K + r) for w, r in weighted if r)
        assert hit.score == pytest.approx(want)
    assert any(h.keyword_rank for h in hits) and any(h.vector_rank for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_hits_carry_the_whole_entry(text_index: tuple[Retriever, np.ndarray]) -> None:
    retriever, _ = text_index
    hit = retriever.query(RARE, k=1, mode="vector")[0]
    assert hit.entry == {
        "key": f"img{RARE_ROW:04d}",
        "caption": RARE,
        "source": "file:///data/shard-00001.tar",
        "member": f"{RARE_ROW:04d}.jpg",
        "url": None,
        "alt_text": None,
        "metadata": None,
        "sha256": f"{RARE_ROW:064x}",
        "width": 64 + RARE_ROW * 37,
        "height": 64 + RARE_ROW * 53,
        "model": "native-sat",
        "model_version": "v1",
        "captioned_at": "2024-08-01T10:00:00+00:00",
    }
    assert retriever.entry(f"img{RARE_ROW:04d}") == hit.entry
    assert retriever.entry("no-such-key") is None


def test_a_given_vector_is_used_instead_of_embedding(
    text_index: tuple[Retriever, np.ndarray], tiny_embedder: TextEmbedder
) -> None:
    retriever, vectors = text_index
    # The text says one thing, the vector another: vector mode follows the vector.
    hits = retriever.query("zebra", k=3, mode="vector", vector=vectors[30])
    assert hits[0].id == 1000 + 7 * 30
    embedded = retriever.embed(["zebra", "two stars"])
    np.testing.assert_allclose(embedded, tiny_embedder.embed(["zebra", "two stars"]), atol=1e-6)
    assert retriever.embed([]).shape == (0, tiny_embedder.dimension)


def test_timings_are_reported_per_stage(text_index: tuple[Retriever, np.ndarray]) -> None:
    retriever, _ = text_index
    timings: dict[str, float] = {}
    retriever.query("red circle", k=3, timings=timings, filters=SearchFilter(model="blip-base"))
    assert set(timings) == {"filter", "embed", "vector", "keyword", "fusion", "entries"}
    assert all(seconds >= 0 for seconds in timings.values())


# -- filters -------------------------------------------------------------------------------------

FIELD_FILTERS = [
    SearchFilter(source="shard-00002.tar"),
    SearchFilter(source="file:///data/*0000[01].tar"),
    SearchFilter(min_width=300, max_width=700),
    SearchFilter(max_height=300),
    SearchFilter(model="native-sat"),
    SearchFilter(model_version="v2"),
    SearchFilter(captioned_after="2024-06-15"),
    SearchFilter(model="blip-base", min_height=200, captioned_after="2024-03-01T00:00:00Z"),
]


@pytest.mark.parametrize("f", FIELD_FILTERS, ids=lambda f: repr(f)[13:60])
def test_each_filter_field_vector_side_is_brute_force_over_the_allowed(
    text_index: tuple[Retriever, np.ndarray], tiny_embedder: TextEmbedder, f: SearchFilter
) -> None:
    retriever, vectors = text_index
    allowed = reference(mapping_of(retriever), f)
    assert 0 < len(allowed) < 60
    query = tiny_embedder.embed(["a blue triangle"])[0]
    hits = retriever.query("a blue triangle", k=10, mode="vector", filters=f)
    assert ids_of(hits) == brute_force(vectors, query, allowed, 10)
    for mode in ("keyword", "hybrid"):
        assert set(ids_of(retriever.query("triangle", k=50, mode=mode, filters=f))) <= set(allowed)
    every = retriever.query("plain background zebra", k=60, mode="keyword", filters=f)
    assert sorted(ids_of(every)) == allowed  # every caption has one of these words


def test_a_filter_nothing_matches_gives_no_hits(text_index: tuple[Retriever, np.ndarray]) -> None:
    retriever, _ = text_index
    for mode in ("hybrid", "vector", "keyword"):
        assert retriever.query("red", mode=mode, filters=SearchFilter(model="nobody")) == []
        assert retriever.query("red", mode=mode, filters=SearchFilter(source="*.zip")) == []


@pytest.mark.parametrize("kind", SEED_TYPES)
def test_a_one_percent_filter_still_returns_k_hits(
    vector_indexes: dict[str, tuple[Retriever, np.ndarray]], kind: str
) -> None:
    retriever, vectors = vector_indexes[kind]
    queries = random_unit_vectors(5, vectors.shape[1], seed=11)  # (5, D)
    f = SearchFilter(source="*/shard-00042.tar")  # 30 of 3000
    allowed = reference(mapping_of(retriever), f)
    assert len(allowed) == N_VECTORS // SHARDS
    recalls = []
    for query in queries:
        hits = retriever.query("photo", k=10, mode="vector", filters=f, vector=query)
        assert len(hits) == 10 and set(ids_of(hits)) <= set(allowed)
        exact = brute_force(vectors, query, allowed, 10)
        recalls.append(len(set(ids_of(hits)) & set(exact)) / 10)
        # The last page of the 30 allowed is full too.
        deep = retriever.query("photo", k=10, offset=20, mode="vector", filters=f, vector=query)
        assert [h.rank for h in deep] == list(range(21, 31))
        hybrid = retriever.query("photo", k=10, filters=f, vector=query)
        assert len(hybrid) == 10 and set(ids_of(hybrid)) <= set(allowed)
    # Exact where the index stores full vectors (the whole allowed set is searched); the coded
    # types rank by their codes.
    assert np.mean(recalls) >= (0.7 if kind in ("ivf-sq8", "ivf-pq") else 1.0)


@pytest.mark.parametrize("kind", SEED_TYPES)
def test_an_unfiltered_window_is_filled_at_small_search_parameters(
    vector_indexes: dict[str, tuple[Retriever, np.ndarray]], kind: str
) -> None:
    retriever, vectors = vector_indexes[kind]
    query = random_unit_vectors(1, vectors.shape[1], seed=12)[0]
    hits = retriever.query("photo", k=10, offset=WINDOW - 10, mode="vector", vector=query)
    assert [h.rank for h in hits] == list(range(WINDOW - 9, WINDOW + 1))


# -- paging --------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    mode=st.sampled_from(["hybrid", "vector", "keyword"]),
    kind=st.sampled_from(["ivf-flat", "hnsw"]),
    offset=st.integers(0, WINDOW - 1),
    k=st.integers(1, 200),
    filtered=st.booleans(),
)
def test_a_page_is_a_slice_of_the_full_ranking(
    vector_indexes: dict[str, tuple[Retriever, np.ndarray]],
    mode: str,
    kind: str,
    offset: int,
    k: int,
    filtered: bool,
) -> None:
    k = min(k, WINDOW - offset)
    retriever, vectors = vector_indexes[kind]
    query = vectors[5] * 0.6 + vectors[9] * 0.4
    query /= np.linalg.norm(query)
    f = SearchFilter(model_version="v1") if filtered else None
    args: dict[str, Any] = {"mode": mode, "filters": f, "vector": query}
    text = "item word7 photo number"
    full = retriever.query(text, k=WINDOW, **args)
    page = retriever.query(text, k=k, offset=offset, **args)
    assert page == full[offset : offset + k]
    assert [h.rank for h in page] == list(range(offset + 1, offset + 1 + len(page)))


# -- more like this ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "ivf-flat", "ivf-sq8", "ivf-pq", "hnsw"])
def test_similar_leaves_the_item_out_and_finds_its_neighbours(
    vector_indexes: dict[str, tuple[Retriever, np.ndarray]], kind: str
) -> None:
    retriever, vectors = vector_indexes[kind]
    row = 123
    key, own = f"img{row:04d}", 1000 + 7 * row
    hits = retriever.similar(key, k=10)
    assert own not in ids_of(hits) and len(hits) == 10
    others = [1000 + 7 * i for i in range(N_VECTORS) if i != row]
    exact = brute_force(vectors, vectors[row], others, 10)
    overlap = len(set(ids_of(hits)) & set(exact)) / 10
    assert overlap >= {"flat": 1.0, "ivf-flat": 1.0, "hnsw": 0.9}.get(kind, 0.7)
    f = SearchFilter(model_version="v0")
    filtered = retriever.similar(key, k=10, offset=10, filters=f)
    allowed = set(reference(mapping_of(retriever), f))
    assert len(filtered) == 10 and set(ids_of(filtered)) <= allowed - {own}
    assert [h.rank for h in filtered] == list(range(11, 21))


def test_similar_rejects_an_unknown_key(text_index: tuple[Retriever, np.ndarray]) -> None:
    retriever, _ = text_index
    with pytest.raises(QueryError, match="unknown key 'nope'"):
        retriever.similar("nope")


# -- index directories ---------------------------------------------------------------------------


def test_an_old_index_dir_without_keyword_index_or_new_columns_opens(
    tmp_path: Path, tiny_embedder: TextEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    captions = colour_shape_captions()
    captions[RARE_ROW] = RARE
    out = tmp_path / "old"
    write_index(
        out,
        detailed_entries(captions),
        tiny_embedder.embed(captions),
        make_manifest(tiny_embedder, 60),
    )
    shutil.rmtree(out / KEYWORD_DIR)
    old_columns = ["id", "key", "caption", "source", "member"]
    pq.write_table(pq.read_table(out / MAPPING_FILE, columns=old_columns), out / MAPPING_FILE)
    with caplog.at_level(logging.WARNING):
        retriever = Retriever.open(out, tiny_embedder)
    assert "built the keyword index in memory" in caplog.text
    assert retriever.query("zebra", k=1)[0].entry["key"] == f"img{RARE_ROW:04d}"
    entry = retriever.entry("img0001")
    assert entry is not None and entry["width"] is None and entry["model"] is None
    assert retriever.query("red", filters=SearchFilter(min_width=1)) == []
    by_source = retriever.query("red", k=60, filters=SearchFilter(source="shard-00001.tar"))
    assert len(by_source) == 20


def test_a_collection_root_serves_its_current_version(
    tmp_path: Path, tiny_embedder: TextEmbedder
) -> None:
    col = Collection.open(tmp_path / "col", create=True)
    for name in ("v000001", "v000002"):
        tmp = col.new_version_dir(name)
        captions = colour_shape_captions()[: 10 if name == "v000001" else 20]
        vectors = tiny_embedder.embed(captions)
        manifest = make_manifest(tiny_embedder, len(captions))
        write_index(f"{tmp}/{INDEX_DIR}", detailed_entries(captions), vectors, manifest)
        col.publish(tmp, name, {"run_id": name})
    retriever = Retriever.open(tmp_path / "col", tiny_embedder)
    assert (retriever.version, retriever.count) == ("v000002", 20)
    col.rollback()
    assert Retriever.open(tmp_path / "col", tiny_embedder).version == "v000001"
    assert Retriever.open(tmp_path / "col" / "versions" / "v000002" / INDEX_DIR).version is None


def test_index_bytes_comes_from_the_manifest_or_an_estimate(
    vector_indexes: dict[str, tuple[Retriever, np.ndarray]],
    text_index: tuple[Retriever, np.ndarray],
) -> None:
    ivf, _ = vector_indexes["ivf-flat"]
    assert ivf.index_bytes == ivf.search_index.manifest.index_bytes
    flat, _ = text_index
    assert flat.search_index.manifest.index_bytes is None
    assert flat.index_bytes >= 60 * 32 * 4


def test_compiled_filters_are_cached_and_bounded(
    text_index: tuple[Retriever, np.ndarray],
) -> None:
    retriever, _ = text_index
    for width in range(FILTER_CACHE + 5):
        retriever.query("red", mode="keyword", filters=SearchFilter(min_width=width))
    assert len(retriever._filters) == FILTER_CACHE
    same = SearchFilter(min_width=FILTER_CACHE + 4)
    assert retriever._prepare(same) is retriever._prepare(same)


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": ""}, "empty query"),
        ({"text": " \n\t"}, "empty query"),
        ({"text": None}, "must be text"),
        ({"k": 0}, "k must be positive"),
        ({"k": -3}, "k must be positive"),
        ({"k": True}, "k must be an integer"),
        ({"k": 2.5}, "k must be an integer"),
        ({"offset": -1}, "offset must be >= 0"),
        ({"offset": WINDOW - 5, "k": 10}, "past the 1000 results"),
        ({"k": WINDOW + 1}, "past the 1000 results"),
        ({"mode": "semantic"}, "unknown mode 'semantic'"),
        ({"filters": {"model": "x"}}, "filters must be a SearchFilter"),
    ],
)
def test_bad_queries_raise_query_error(
    text_index: tuple[Retriever, np.ndarray], kwargs: dict[str, Any], message: str
) -> None:
    retriever, _ = text_index
    args: dict[str, Any] = {"text": "red circle"} | kwargs
    text = args.pop("text")
    with pytest.raises(QueryError, match=message):
        retriever.query(text, **args)


def test_bad_paging_and_blank_texts_raise_for_similar_and_embed(
    text_index: tuple[Retriever, np.ndarray],
) -> None:
    retriever, _ = text_index
    with pytest.raises(QueryError, match="k must be positive"):
        retriever.similar("img0001", k=0)
    with pytest.raises(QueryError, match="past the"):
        retriever.similar("img0001", offset=WINDOW)
    with pytest.raises(QueryError, match="empty query"):
        retriever.embed(["fine", "  "])


def test_a_vector_of_the_wrong_shape_is_a_bug_not_a_query_error(
    text_index: tuple[Retriever, np.ndarray],
) -> None:
    retriever, _ = text_index
    with pytest.raises(ValueError, match=r"finite \(32,\)") as info:
        retriever.query("red", mode="vector", vector=np.ones(5, dtype=np.float32))
    assert not isinstance(info.value, QueryError)


@pytest.mark.parametrize(
    "text", ['"((:', "AND OR NOT", "NOT", "caption:", "id:[0 TO *]", "🦓🦓", "a" * 5000, "\x00x"]
)
def test_nonsense_text_never_raises(text_index: tuple[Retriever, np.ndarray], text: str) -> None:
    retriever, _ = text_index
    for mode in ("hybrid", "vector", "keyword"):
        hits = retriever.query(text, k=5, mode=mode)
        assert len(hits) <= 5


@settings(max_examples=200, deadline=None)
@given(text=st.text(min_size=1, max_size=300).filter(str.strip))
def test_generated_text_never_raises(text_index: tuple[Retriever, np.ndarray], text: str) -> None:
    retriever, vectors = text_index
    hits = retriever.query(text, k=5, vector=vectors[0])
    assert len(hits) == 5  # the vector side always answers


def test_concurrent_queries_match_sequential_ones(
    vector_indexes: dict[str, tuple[Retriever, np.ndarray]],
) -> None:
    retriever, vectors = vector_indexes["ivf-flat"]
    cases = [
        (mode, SearchFilter(model_version=f"v{i % 3}") if i % 2 else None, vectors[i])
        for i, mode in enumerate(["hybrid", "vector", "keyword"] * 8)
    ]

    def run(case: tuple[str, SearchFilter | None, np.ndarray]) -> list[RankedHit]:
        mode, f, query = case
        return retriever.query("item word3 photo", k=20, mode=mode, filters=f, vector=query)

    sequential = [run(case) for case in cases]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(run, cases))
    assert concurrent == sequential


def test_an_empty_index_answers_with_no_hits(tmp_path: Path, tiny_embedder: TextEmbedder) -> None:
    vectors = np.zeros((0, tiny_embedder.dimension), dtype=np.float32)
    write_index(tmp_path / "empty", [], vectors, make_manifest(tiny_embedder, 0))
    retriever = Retriever.open(tmp_path / "empty", tiny_embedder)
    assert retriever.count == 0
    for mode in ("hybrid", "vector", "keyword"):
        assert retriever.query("anything", mode=mode) == []
        assert retriever.query("anything", mode=mode, filters=SearchFilter(model="m")) == []
    assert retriever.entry("k") is None
