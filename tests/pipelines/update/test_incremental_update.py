"""`imgindex update --index-type ivf-flat` over nights: the second night updates the previous
index in place (ids carried per key) and equals a fresh fill of the same quantizer; growth past
the rebuild rule retrains it."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

from indexing.build import EMBEDDINGS_FILE, INDEX_FILE, MAPPING_FILE
from indexing.collection import INDEX_DIR, VERSION_FILE, VERSIONS_DIR
from indexing.search import open_index
from indexing.tuning import search_with
from pipelines.update import run as update_run
from tests.pipelines.update.conftest import make_archive
from tests.pipelines.update.helpers import update

pytestmark = pytest.mark.slow


def keyed(key: str, caption: str, d: int) -> np.ndarray:
    """A unit vector (d,) seeded by the key and its caption."""
    seed = zlib.crc32(f"{key}\n{caption}".encode())
    x = np.random.default_rng(seed).standard_normal(d).astype(np.float32)
    return x / np.linalg.norm(x)


@pytest.fixture
def distinct_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny caption model gives every image the same caption, hence one vector for all: give
    each key its own vector (a function of key and caption, as a real embedding is of the
    caption), so that search results tell the indexes apart."""
    real = update_run.embed_captions

    def embed(col: Any, catalog: Any, embedder: Any, run_id: str, batch: int) -> Any:
        rows, vectors, embedded = real(col, catalog, embedder, run_id, batch)
        keys = catalog.column("key").take(rows).to_pylist()
        captions = catalog.column("caption").take(rows).to_pylist()
        mine = [keyed(k, c, vectors.shape[1]) for k, c in zip(keys, captions, strict=True)]
        return rows, np.stack(mine).astype(np.float32), embedded

    monkeypatch.setattr(update_run, "embed_captions", embed)


def _version(root: Path, name: str) -> Path:
    return root / VERSIONS_DIR / name / INDEX_DIR


def _ids_by_key(index_dir: Path) -> dict[str, int]:
    table = pq.read_table(index_dir / MAPPING_FILE, columns=["id", "key"])
    return dict(zip(table.column("key").to_pylist(), table.column("id").to_pylist(), strict=True))


def test_two_nights_incremental_then_a_rebuild(
    tmp_path: Path, tiny_caption_model: Path, tiny_embedder_dir: Path, distinct_vectors: None
) -> None:
    archive = make_archive(tmp_path / "arch", 120)
    root = tmp_path / "col"
    kw = {"index_type": "ivf-flat"}
    first = update(archive, root, tiny_caption_model, tiny_embedder_dir, **kw)
    assert first.index["mode"] == "rebuilt" and first.index["reason"] == "no previous version"
    assert first.index["index_type"] == "ivf-flat"

    for gone in sorted(archive.glob("*.png"))[:2]:
        gone.unlink()  # two deleted
    make_archive(archive, 5, start=500, seed=9)  # five new
    second = update(archive, root, tiny_caption_model, tiny_embedder_dir, **kw)
    assert second.version == "v000002"
    assert second.index["mode"] == "incremental", second.index
    assert (second.index["added"], second.index["removed"]) == (5, 2)
    record = json.loads((root / VERSIONS_DIR / "v000002" / VERSION_FILE).read_text())
    assert record["index"] == second.index

    v1, v2 = _version(root, "v000001"), _version(root, "v000002")
    before, after = _ids_by_key(v1), _ids_by_key(v2)
    kept = before.keys() & after.keys()
    assert len(kept) == 118 and all(before[k] == after[k] for k in kept)  # ids carried per key
    assert min(after[k] for k in after.keys() - kept) > max(before.values())

    # A fresh fill of version 1's trained quantizer with version 2's vectors and ids.
    embeddings = pq.read_table(v2 / EMBEDDINGS_FILE)
    ids = embeddings.column("id").to_numpy()
    vectors = np.stack(embeddings.column("embedding").to_pylist()).astype(np.float32)
    fresh = faiss.read_index(str(v1 / INDEX_FILE))
    fresh.reset()
    fresh.add_with_ids(vectors, ids)
    published = faiss.read_index(str(v2 / INDEX_FILE))
    nlist = faiss.extract_index_ivf(fresh).nlist
    manifest = open_index(root).manifest
    for params, k in (({"nprobe": nlist}, len(ids)), (manifest.params, 10)):
        got_scores, got = search_with(published, "ivf-flat", params, vectors, k)
        want_scores, want = search_with(fresh, "ivf-flat", params, vectors, k)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got_scores, want_scores)
    assert manifest.count == 123 and manifest.trained_count == 120  # still the first training

    make_archive(archive, 130, start=1000, seed=11)  # 253 > 2 x 120: retrain
    third = update(archive, root, tiny_caption_model, tiny_embedder_dir, **kw)
    assert third.index["mode"] == "rebuilt"
    assert third.index["reason"].startswith("grew from 120 to 253 vectors"), third.index
    rebuilt = open_index(root).manifest
    assert rebuilt.trained_count == 253 and rebuilt.index_type == "ivf-flat"
    assert all(_ids_by_key(_version(root, "v000003"))[k] == after[k] for k in after)
