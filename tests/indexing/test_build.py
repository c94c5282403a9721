"""Tests for indexing.build: manifest, validation, files on disk and atomic writes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

from indexing import build
from indexing.build import (
    EMBEDDINGS_FILE,
    INDEX_FILE,
    KEYWORD_DIR,
    MANIFEST_FILE,
    MAPPING_FILE,
    MAPPING_SCHEMA,
    IndexEntry,
    Manifest,
    embeddings_schema,
    write_index,
)
from tests.indexing._helpers import random_unit_vectors

SHA = "ab" * 32
D = 16
Mutation = Callable[
    [list[IndexEntry], np.ndarray, Manifest], tuple[list[IndexEntry], np.ndarray, Manifest]
]


def manifest(count: int, **overrides: object) -> Manifest:
    values: dict[str, object] = dict(
        embedder_name="/models/tiny",
        embedder_sha256=SHA,
        dimension=D,
        count=count,
        caption_files=("a.parquet", "b.parquet"),
        imgindex_version="0.1.0",
    )
    values.update(overrides)
    return Manifest(**values)  # type: ignore[arg-type]


def entries(n: int) -> list[IndexEntry]:
    return [IndexEntry(10 * i + 3, f"k{i}", f"caption {i}", "s.tar", f"{i}.jpg") for i in range(n)]


def test_manifest_round_trip() -> None:
    original = manifest(5)
    restored = Manifest.from_json(original.to_json())
    assert restored == original
    assert restored.metric == "inner_product"
    assert restored.created_at.endswith("+00:00")
    assert isinstance(restored.caption_files, tuple)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"count": 1}', "lacks"),
    ],
)
def test_manifest_from_bad_json(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Manifest.from_json(text)


def test_manifest_rejects_unknown_keys_and_bad_values() -> None:
    data = manifest(1).to_json().replace('"count": 1', '"count": 1, "extra": 2')
    with pytest.raises(ValueError, match="unknown keys extra"):
        Manifest.from_json(data)
    with pytest.raises(ValueError, match="UTC"):
        manifest(1, created_at="2024-01-01T00:00:00+02:00")
    with pytest.raises(ValueError, match="64 lowercase hex"):
        manifest(1, embedder_sha256="abc")
    with pytest.raises(ValueError, match="format version"):
        manifest(1, format_version=99)


def test_write_index_files_and_schemas(tmp_path: Path) -> None:
    vectors = random_unit_vectors(7, D, seed=0)
    written_manifest = manifest(7)
    out = write_index(str(tmp_path / "idx"), entries(7), vectors, written_manifest)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [INDEX_FILE, MAPPING_FILE, EMBEDDINGS_FILE, MANIFEST_FILE, KEYWORD_DIR]
    )
    mapping = pq.read_table(out / MAPPING_FILE)
    assert mapping.schema.equals(MAPPING_SCHEMA)
    assert mapping.column("id").to_pylist() == [e.id for e in entries(7)]
    stored = pq.read_table(out / EMBEDDINGS_FILE)
    assert stored.schema.equals(embeddings_schema(D))
    np.testing.assert_array_equal(np.stack(stored.column("embedding").to_numpy(False)), vectors)
    index = faiss.read_index(str(out / INDEX_FILE))
    assert index.ntotal == 7 and index.d == D
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT
    # IndexIDMap2 keeps entry ids: reconstructing by id returns that entry's vector.
    np.testing.assert_array_equal(index.reconstruct(entries(7)[4].id), vectors[4])
    assert Manifest.from_json((out / MANIFEST_FILE).read_text()) == written_manifest


def test_write_empty_index(tmp_path: Path) -> None:
    out = write_index(tmp_path / "idx", [], np.zeros((0, D), np.float32), manifest(0))
    assert faiss.read_index(str(out / INDEX_FILE)).ntotal == 0


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda e, v, m: (e[:-1], v, m), "entries but"),
        (lambda e, v, m: (e, v.astype(np.float64), m), "float32"),
        (lambda e, v, m: (e, v[:, :8].copy(), m), "dimension 8"),
        (lambda e, v, m: (e, v[0], m), "2-D"),
        (lambda e, v, m: (e, v * 2, m), "unit-norm"),
        (lambda e, v, m: (e, v, manifest(3)), "manifest.count"),
        (lambda e, v, m: ([*e[:-1], e[0]], v, m), "unique"),
        (lambda e, v, m: ([IndexEntry(-1, "k", "c", "s", "m"), *e[1:]], v, m), ">= 0"),
    ],
)
def test_write_index_validates_inputs(tmp_path: Path, mutate: Mutation, match: str) -> None:
    args = mutate(entries(4), random_unit_vectors(4, D, seed=1), manifest(4))
    with pytest.raises(ValueError, match=match):
        write_index(tmp_path / "idx", *args)
    assert not (tmp_path / "idx").exists()


def test_nan_vectors_are_refused(tmp_path: Path) -> None:
    vectors = random_unit_vectors(2, D, seed=2)
    vectors[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_index(tmp_path / "idx", entries(2), vectors, manifest(2))


def test_overwrite_refusal_and_replacement(tmp_path: Path) -> None:
    out = tmp_path / "idx"
    write_index(out, entries(3), random_unit_vectors(3, D, seed=3), manifest(3))
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_index(out, entries(5), random_unit_vectors(5, D, seed=4), manifest(5))
    assert Manifest.from_json((out / MANIFEST_FILE).read_text()).count == 3
    write_index(out, entries(5), random_unit_vectors(5, D, seed=4), manifest(5), overwrite=True)
    assert Manifest.from_json((out / MANIFEST_FILE).read_text()).count == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temp or old dirs left


def test_existing_empty_directory_is_used(tmp_path: Path) -> None:
    (tmp_path / "idx").mkdir()
    write_index(tmp_path / "idx", entries(2), random_unit_vectors(2, D, seed=5), manifest(2))
    assert (tmp_path / "idx" / MANIFEST_FILE).is_file()


def test_overwrite_never_replaces_a_directory_that_is_not_an_index(tmp_path: Path) -> None:
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an index"):
        write_index(
            tmp_path / "idx",
            entries(2),
            random_unit_vectors(2, D, seed=6),
            manifest(2),
            overwrite=True,
        )
    assert (tmp_path / "idx" / "precious.txt").read_text() == "keep me"


def _failing_write_table(real: Callable[..., None]) -> Callable[..., None]:
    def write_table(table: object, where: object, *args: object, **kwargs: object) -> None:
        if str(where).endswith(EMBEDDINGS_FILE):
            raise OSError("disk full")
        return real(table, where, *args, **kwargs)

    return write_table


def test_crash_leaves_no_half_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build.pq, "write_table", _failing_write_table(build.pq.write_table))
    with pytest.raises(OSError, match="disk full"):
        write_index(tmp_path / "idx", entries(3), random_unit_vectors(3, D, seed=7), manifest(3))
    assert list(tmp_path.iterdir()) == []


def test_crash_during_overwrite_keeps_previous_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "idx"
    write_index(out, entries(3), random_unit_vectors(3, D, seed=8), manifest(3))
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    monkeypatch.setattr(build.pq, "write_table", _failing_write_table(build.pq.write_table))
    with pytest.raises(OSError, match="disk full"):
        write_index(out, entries(4), random_unit_vectors(4, D, seed=9), manifest(4), overwrite=True)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
