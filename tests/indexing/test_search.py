"""Tests for indexing.search: round trips against brute force, limits and load errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexing.build import INDEX_FILE, MANIFEST_FILE, MAPPING_FILE, write_index
from indexing.embed import EmbedderError, TextEmbedder
from indexing.search import IndexLoadError, SearchHit, SearchIndex, open_index
from tests.indexing._helpers import (
    colour_shape_captions,
    make_entries,
    make_manifest,
    random_unit_vectors,
)

TinyIndex = tuple[Path, list[str], np.ndarray]  # (index dir, captions, (N, D) vectors)


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory: pytest.TempPathFactory, tiny_embedder: TextEmbedder) -> TinyIndex:
    """An index of 60 captions embedded with the tiny model: (path, captions, vectors)."""
    captions = colour_shape_captions()
    vectors = tiny_embedder.embed(captions)  # (60, 32)
    out = tmp_path_factory.mktemp("indexes") / "tiny"
    write_index(out, make_entries(captions), vectors, make_manifest(tiny_embedder, len(captions)))
    return out, captions, vectors


def assert_exact(hits: list[SearchHit], query: np.ndarray, vectors: np.ndarray, k: int) -> None:
    """The hits are the exact top k by inner product (brute force), robust to float ties."""
    brute = vectors @ query  # (N, D) @ (D,) -> (N,)
    expected = np.sort(brute)[::-1][:k]  # (k,) best first
    assert [h.rank for h in hits] == list(range(1, k + 1))
    np.testing.assert_allclose([h.score for h in hits], expected, atol=1e-5)
    for hit in hits:
        row = int(hit.key.removeprefix("img"))
        np.testing.assert_allclose(brute[row], hit.score, atol=1e-5)


def test_text_round_trip_is_exact(tiny_index: TinyIndex, tiny_embedder: TextEmbedder) -> None:
    path, captions, vectors = tiny_index
    index = open_index(path, embedder=tiny_embedder)
    for query in ["a red circle", "three black stars", "something else entirely"]:
        hits = index.search(query, k=5)
        assert_exact(hits, tiny_embedder.embed([query])[0], vectors, k=5)
    # A caption's own text finds itself first, with the entry's fields.
    top = index.search(captions[17], k=1)[0]
    assert (top.key, top.caption, top.source, top.member) == (
        "img0017",
        captions[17],
        "shard-00002.tar",
        "0017.jpg",
    )
    assert top.score == pytest.approx(1.0, abs=1e-5)


def test_vector_round_trip_is_exact(tmp_path: Path, tiny_embedder: TextEmbedder) -> None:
    vectors = random_unit_vectors(300, tiny_embedder.dimension, seed=0)
    captions = [f"caption {i}" for i in range(300)]
    write_index(
        tmp_path / "idx", make_entries(captions), vectors, make_manifest(tiny_embedder, 300)
    )
    index = open_index(tmp_path / "idx", embedder=tiny_embedder)
    queries = random_unit_vectors(20, tiny_embedder.dimension, seed=1)
    for query, hits in zip(queries, index.search_vectors(queries, k=10), strict=True):
        assert_exact(hits, query, vectors, k=10)


def test_manifest_embedder_loads_lazily(tiny_index: TinyIndex, tiny_embedder: TextEmbedder) -> None:
    path, _, _ = tiny_index
    lazy = open_index(path)
    given = open_index(path, embedder=tiny_embedder)
    assert lazy.search("two green squares", k=3) == given.search("two green squares", k=3)
    assert lazy.embedder.sha256 == tiny_embedder.sha256


def test_search_many_matches_single_searches(
    tiny_index: TinyIndex, tiny_embedder: TextEmbedder
) -> None:
    index = open_index(tiny_index[0], embedder=tiny_embedder)
    queries = ["a red circle", "one yellow triangle", "black"]
    batched = index.search_many(queries, k=4, batch_size=2)
    for query, hits in zip(queries, batched, strict=True):
        single = index.search(query, k=4)
        assert [h.key for h in hits] == [h.key for h in single]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in single], atol=1e-5)
    assert index.search_many([], k=3) == []


def test_k_larger_than_count(tiny_index: TinyIndex, tiny_embedder: TextEmbedder) -> None:
    path, captions, vectors = tiny_index
    index = open_index(path, embedder=tiny_embedder)
    hits = index.search("a red circle", k=1000)
    assert len(hits) == len(captions) == index.count
    assert_exact(hits, tiny_embedder.embed(["a red circle"])[0], vectors, k=len(captions))


def test_bad_k_and_empty_queries(tiny_index: TinyIndex, tiny_embedder: TextEmbedder) -> None:
    index = open_index(tiny_index[0], embedder=tiny_embedder)
    for k in (0, -3):
        with pytest.raises(ValueError, match="k must be positive"):
            index.search("a red circle", k=k)
    for query in ("", "   \n\t"):
        with pytest.raises(ValueError, match="^empty query$"):
            index.search(query)
    with pytest.raises(ValueError, match="empty query at 1"):
        index.search_many(["a red circle", " "])


def test_empty_index_returns_no_hits(tmp_path: Path, tiny_embedder: TextEmbedder) -> None:
    empty = np.zeros((0, tiny_embedder.dimension), np.float32)
    write_index(tmp_path / "idx", [], empty, make_manifest(tiny_embedder, 0))
    assert open_index(tmp_path / "idx", embedder=tiny_embedder).search("a red circle") == []


def test_real_model_round_trip(tmp_path: Path, minilm: TextEmbedder) -> None:
    captions = [
        "a small red circle on a plain background",
        "two blue squares",
        "a dog running on a beach",
        "a bowl of fruit on a wooden table",
        "a city street at night with cars",
    ]
    vectors = minilm.embed(captions)
    write_index(tmp_path / "idx", make_entries(captions), vectors, make_manifest(minilm, 5))
    index = open_index(tmp_path / "idx", embedder=minilm)
    hits = index.search("a red circle", k=3)
    assert hits[0].caption == "a small red circle on a plain background"
    assert_exact(hits, minilm.embed(["a red circle"])[0], vectors, k=3)
    assert index.search("puppy at the seaside", k=1)[0].caption == "a dog running on a beach"


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(IndexLoadError, match=f"{tmp_path / 'nope'} does not exist"):
        open_index(tmp_path / "nope")


@pytest.mark.parametrize("missing", [INDEX_FILE, MAPPING_FILE, MANIFEST_FILE])
def test_missing_files(tmp_path: Path, tiny_embedder: TextEmbedder, missing: str) -> None:
    out = _small_index(tmp_path, tiny_embedder)
    (out / missing).unlink()
    with pytest.raises(IndexLoadError, match=f"{out} is missing {missing}"):
        open_index(out)


@pytest.mark.parametrize(
    ("filename", "content", "match"),
    [
        (MANIFEST_FILE, "{not json", "corrupt manifest"),
        (MANIFEST_FILE, '{"count": 3}', "corrupt manifest.*lacks"),
        (INDEX_FILE, "garbage", "corrupt FAISS index"),
        (MAPPING_FILE, "garbage", "corrupt mapping"),
    ],
)
def test_corrupt_files(
    tmp_path: Path, tiny_embedder: TextEmbedder, filename: str, content: str, match: str
) -> None:
    out = _small_index(tmp_path, tiny_embedder)
    (out / filename).write_text(content)
    with pytest.raises(IndexLoadError, match=match) as info:
        open_index(out)
    assert "\n" not in str(info.value)


def test_manifest_that_disagrees_with_the_index(
    tmp_path: Path, tiny_embedder: TextEmbedder
) -> None:
    out = _small_index(tmp_path, tiny_embedder)
    text = (out / MANIFEST_FILE).read_text().replace('"count": 3', '"count": 4')
    (out / MANIFEST_FILE).write_text(text)
    with pytest.raises(IndexLoadError, match="holds 3 vectors"):
        open_index(out)


def test_embedder_with_other_weights_is_refused(
    tmp_path: Path, tiny_embedder: TextEmbedder, minilm: TextEmbedder
) -> None:
    out = _small_index(tmp_path, tiny_embedder)
    with pytest.raises(EmbedderError, match="was built with embedder"):
        open_index(out, embedder=minilm)


def test_lazy_embedder_sha_mismatch(tmp_path: Path, tiny_embedder: TextEmbedder) -> None:
    vectors = random_unit_vectors(3, tiny_embedder.dimension, seed=0)
    manifest = make_manifest(tiny_embedder, 3, embedder_sha256="f" * 64)
    write_index(tmp_path / "idx", make_entries(["a", "b", "c"]), vectors, manifest)
    index = open_index(tmp_path / "idx")  # opening does not load the embedder
    assert isinstance(index, SearchIndex)
    with pytest.raises(EmbedderError, match="f{64}"):
        index.search("a red circle")


def _small_index(tmp_path: Path, embedder: TextEmbedder) -> Path:
    vectors = random_unit_vectors(3, embedder.dimension, seed=0)
    return write_index(
        tmp_path / "idx", make_entries(["a", "b", "c"]), vectors, make_manifest(embedder, 3)
    )
