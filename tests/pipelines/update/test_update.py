"""`imgindex update` end to end on the tiny models: what each night captions, reuses, deletes and
publishes, and what it refuses."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from captioning.archives.listing import InputError
from indexing.collection import (
    CAPTIONS_DIR,
    COLLECTION_FILE,
    CURRENT_FILE,
    Collection,
    CollectionError,
    CollectionLocked,
)
from indexing.search import open_index
from pipelines.errors import UsageError
from tests.conftest import build_tiny_checkpoint
from tests.pipelines.update.conftest import make_archive
from tests.pipelines.update.helpers import catalog, update

pytestmark = pytest.mark.slow


def _files(archive: Path) -> list[Path]:
    return sorted(p for p in archive.iterdir() if p.suffix == ".png")


def test_first_night_then_a_night_of_changes(
    tmp_path: Path, tiny_caption_model: Path, tiny_embedder_dir: Path
) -> None:
    archive = make_archive(tmp_path / "arch", 30)
    root = tmp_path / "col"
    first = update(archive, root, tiny_caption_model, tiny_embedder_dir)
    c = first.counts
    assert (c.listed, c.new, c.captioned, c.deleted, c.shards_read) == (30, 30, 30, 0, 30)
    assert first.published and first.version == "v000001"

    again = update(archive, root, tiny_caption_model, tiny_embedder_dir)
    assert not again.published and again.version == "v000001"
    assert "nothing changed" in again.note
    assert (again.counts.unchanged, again.counts.shards_read, again.counts.captioned) == (30, 0, 0)

    files = _files(archive)
    files[0].unlink()  # deleted
    shutil.copy(files[5], files[1])  # changed: other bytes under the key; same bytes as key 5
    make_archive(archive, 2, start=100, seed=9)  # two new images
    night = update(archive, root, tiny_caption_model, tiny_embedder_dir)
    c = night.counts
    assert (c.new, c.changed, c.deleted, c.unchanged) == (2, 1, 1, 28)
    assert c.reused == 1 and c.captioned == 2  # key 1 now holds key 5's bytes: caption reused
    assert c.shards_read == 3  # folder input: one shard per file; unchanged files are not read
    assert night.version == "v000002"

    rows = {r["key"]: r for r in catalog(root)}
    assert len(rows) == 31 and files[0].name not in rows
    assert rows[files[1].name]["caption"] == rows[files[5].name]["caption"]
    hits = open_index(root).search(rows[files[1].name]["caption"], k=40)
    assert {h.key for h in hits} == set(rows)  # the whole catalog is searchable at ROOT


def test_moved_shard_reuses_captions(
    tmp_path: Path, tiny_caption_model: Path, tiny_embedder_dir: Path
) -> None:
    """Identical bytes in another shard are not captioned again (captions keyed by content)."""
    archive = make_archive(tmp_path / "arch", 12, fmt="tar", shards=3)
    root = tmp_path / "col"
    update(archive, root, tiny_caption_model, tiny_embedder_dir)
    shard = sorted(archive.glob("*.tar"))[0]
    shard.rename(archive / "renamed-shard.tar")
    night = update(archive, root, tiny_caption_model, tiny_embedder_dir)
    c = night.counts
    assert c.shards_read == 1 and c.captioned == 0 and c.deleted == 0
    assert c.unchanged == 12  # same keys, same bytes, another place
    sources = {r["source"] for r in catalog(root)}
    assert any(s.endswith("renamed-shard.tar") for s in sources)


def test_a_new_model_spreads_over_nights_with_max_images(
    tmp_path: Path, tiny_caption_model: Path, tiny_embedder_dir: Path
) -> None:
    archive = make_archive(tmp_path / "arch", 10)
    root = tmp_path / "col"
    update(archive, root, tiny_caption_model, tiny_embedder_dir)
    other = build_tiny_checkpoint(tmp_path / "model-v2")
    meta = json.loads((other / "config.json").read_text())
    meta["version"] = "t2"
    (other / "config.json").write_text(json.dumps(meta))

    night = update(archive, root, other, tiny_embedder_dir, max_images=4)
    c = night.counts
    assert (c.stale, c.captioned, c.deferred) == (10, 4, 6)
    rows = catalog(root)
    assert len(rows) == 10  # every night publishes a complete index
    assert sorted(r["model_version"] for r in rows).count("t2") == 4
    assert len(open_index(root).search("a", k=20)) == 10

    update(archive, root, other, tiny_embedder_dir, max_images=4)
    last = update(archive, root, other, tiny_embedder_dir, max_images=4)
    assert last.counts.captioned == 2 and last.counts.deferred == 0
    assert {r["model_version"] for r in catalog(root)} == {"t2"}


def test_new_images_come_before_stale_ones(
    tmp_path: Path, tiny_caption_model: Path, tiny_embedder_dir: Path
) -> None:
    archive = make_archive(tmp_path / "arch", 6)
    root = tmp_path / "col"
    update(archive, root, tiny_caption_model, tiny_embedder_dir)
    other = build_tiny_checkpoint(tmp_path / "model-v2")
    meta = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**meta, "version": "t2"}))
    make_archive(archive, 3, start=50, seed=4)
    night = update(archive, root, other, tiny_embedder_dir, max_images=3)
    assert (night.counts.new, night.counts.captioned, night.counts.deferred) == (3, 3, 6)
    new_keys = {p.name for p in _files(archive)} - {r["key"] for r in catalog(root, "v000001")}
    rows = {r["key"]: r for r in catalog(root)}
    assert all(rows[k]["model_version"] == "t2" for k in new_keys)


def test_shrink_guard_refuses_an_empty_looking_input(
    tmp_path: Path, tiny_caption_model: Path, tiny_embedder_dir: Path
) -> None:
    archive = make_archive(tmp_path / "arch", 10)
    root = tmp_path / "col"
    update(archive, root, tiny_caption_model, tiny_embedder_dir)
    for f in _files(archive)[1:]:
        f.unlink()
    with pytest.raises(UsageError, match="--allow-shrink"):
        update(archive, root, tiny_caption_model, tiny_embedder_dir)
    assert Collection.open(root).current() == "v000001"
    night = update(archive, root, tiny_caption_model, tiny_embedder_dir, allow_shrink=True)
    assert night.counts.deleted == 9 and len(catalog(root)) == 1


def test_bad_input_publishes_nothing(
    tmp_path: Path, tiny_caption_model: Path, tiny_embedder_dir: Path
) -> None:
    archive = make_archive(tmp_path / "arch", 4)
    root = tmp_path / "col"
    with pytest.raises(InputError):
        update(tmp_path / "missing", root, tiny_caption_model, tiny_embedder_dir)
    update(archive, root, tiny_caption_model, tiny_embedder_dir)

    marker = root / COLLECTION_FILE
    good = marker.read_text()
    marker.write_text(json.dumps({"format_version": 99}))
    with pytest.raises(CollectionError, match="newer imgindex"):
        update(archive, root, tiny_caption_model, tiny_embedder_dir)
    marker.write_text(good)

    (root / CURRENT_FILE).write_text("{not json")
    with pytest.raises(CollectionError, match="corrupt"):
        update(archive, root, tiny_caption_model, tiny_embedder_dir)
    (root / CURRENT_FILE).write_text(json.dumps({"version": "v000001"}))

    catalog_file = root / "versions" / "v000001" / "catalog.parquet"
    catalog_file.write_bytes(b"PAR1 not really")
    with pytest.raises(CollectionError, match="catalog.parquet is corrupt"):
        update(archive, root, tiny_caption_model, tiny_embedder_dir)
    assert Collection.open(root).current() == "v000001"


def test_one_writer_at_a_time(
    tmp_path: Path, tiny_caption_model: Path, tiny_embedder_dir: Path
) -> None:
    archive = make_archive(tmp_path / "arch", 4)
    root = tmp_path / "col"
    update(archive, root, tiny_caption_model, tiny_embedder_dir)
    col = Collection.open(root)
    with col.lock(timeout_s=600, heartbeat_s=1):
        with pytest.raises(CollectionLocked, match="being updated by another run"):
            update(archive, root, tiny_caption_model, tiny_embedder_dir)
    # a lock left by a process that died is taken over, and the summary says so
    (root / "LOCK").write_text(
        json.dumps(
            {
                "host": os.uname().nodename,
                "pid": 2**22 + 17,
                "token": "x",
                "started_at": "2026-01-01T00:00:00+00:00",
                "heartbeat": 0,
            }
        )  # fmt: skip
    )
    make_archive(archive, 1, start=40, seed=8)
    night = update(archive, root, tiny_caption_model, tiny_embedder_dir)
    assert night.took_over_lock and "no longer running" in night.took_over_lock
    assert not (root / "LOCK").exists()


def test_retention_rollback_and_cache_cleaning(
    tmp_path: Path, tiny_caption_model: Path, tiny_embedder_dir: Path
) -> None:
    archive = make_archive(tmp_path / "arch", 3)
    root = tmp_path / "col"
    for night in range(4):
        if night:
            make_archive(archive, 1, start=10 + night, seed=night)
        update(archive, root, tiny_caption_model, tiny_embedder_dir, keep=2)
    col = Collection.open(root)
    assert [v.name for v in col.versions()] == ["v000004", "v000003"]
    # the first night's captions are still used by the kept versions (its 3 images live on)
    runs = {p.name.split("--")[0] for p in (root / CAPTIONS_DIR).glob("*.parquet")}
    assert len(runs) == 4 and col.referenced_runs() == runs
    assert col.rollback() == "v000003" and col.current() == "v000003"
    assert len(open_index(root).search("a", k=10)) == 5  # v3: 3 first-night images + 2 new
    with pytest.raises(CollectionError, match="no kept version"):
        col.rollback("v000001")
    assert col.rollback("v000004") == "v000004"


@pytest.mark.parametrize("output_format", ["webdataset", "parquet"])
def test_an_img2dataset_archive_keeps_its_source_metadata(
    output_format: str, tmp_path: Path, tiny_caption_model: Path, tiny_embedder_dir: Path
) -> None:
    from tests.captioning.archives.img2dataset_layout import write_img2dataset

    written = write_img2dataset(tmp_path / "i2d", output_format)
    root = tmp_path / "col"
    night = update(written.root, root, tiny_caption_model, tiny_embedder_dir)
    stats = written.stats()
    c = night.counts
    assert c.listed == stats["count"] and c.captioned == stats["successes"]
    assert c.failed == c.unavailable == stats["count"] - stats["successes"]  # not ours
    rows = {r["key"]: r for r in catalog(root)}
    assert set(rows) == set(written.metas)  # every attempted sample, sidecars not read as shards
    for key, meta in written.metas.items():
        row = rows[key]
        assert row["url"] == meta["url"]
        if meta["status"] == "success":
            assert row["status"] == "captioned" and row["alt_text"] == meta["caption"].strip()
        else:
            assert (row["status"], row["stage"], row["error_type"]) == (
                "failed", "source", meta["status"],
            )  # fmt: skip
    hit = open_index(root).search("a", k=1)[0]
    assert hit.url == written.metas[hit.key]["url"]


def test_captions_no_kept_version_uses_are_cleaned(
    tmp_path: Path, tiny_caption_model: Path, tiny_embedder_dir: Path
) -> None:
    archive = make_archive(tmp_path / "arch", 4)
    root = tmp_path / "col"
    first = update(archive, root, tiny_caption_model, tiny_embedder_dir, keep=1)
    other = build_tiny_checkpoint(tmp_path / "model-v2")
    meta = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**meta, "version": "t2"}))
    second = update(archive, root, other, tiny_embedder_dir, keep=1)  # recaptions everything
    runs = {p.name.split("--")[0] for p in (root / CAPTIONS_DIR).glob("*.parquet")}
    assert runs == {second.run_id} and first.run_id not in runs
    assert [v.name for v in Collection.open(root).versions()] == ["v000002"]


def test_a_night_over_the_failure_limit_publishes_nothing(
    tmp_path: Path, tiny_caption_model: Path, tiny_embedder_dir: Path
) -> None:
    from pipelines.errors import JobFailed

    archive = make_archive(tmp_path / "arch", 4)
    root = tmp_path / "col"
    update(archive, root, tiny_caption_model, tiny_embedder_dir)
    for i in range(6):
        (archive / f"broken-{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes([i]) * 40)
    with pytest.raises(JobFailed, match="6 of 6 images failed tonight"):
        update(archive, root, tiny_caption_model, tiny_embedder_dir)
    assert Collection.open(root).current() == "v000001"
    records = [json.loads(p.read_text()) for p in (root / "runs").glob("*.json")]
    assert any("6 of 6 images failed" in r.get("failed", "") for r in records)

    night = update(archive, root, tiny_caption_model, tiny_embedder_dir, max_failure_rate=1.0)
    assert night.published and night.counts.failed == 6
    broken = [r for r in catalog(root) if r["key"].startswith("broken-")]
    assert len(broken) == 6 and {(r["status"], r["stage"]) for r in broken} == {
        ("failed", "decode")
    }
    assert len(open_index(root).search("a", k=20)) == 4  # failures are catalogued, not indexed


@pytest.mark.parametrize("index_type", ["hnsw", "ivf-pq"])
def test_a_collection_refuses_indexes_that_cannot_remove_ids(
    index_type: str, tmp_path: Path, tiny_caption_model: Path, tiny_embedder_dir: Path
) -> None:
    """A collection changes every night: its index must take adds and removals (IVF, Flat)."""
    from tests.pipelines.update.helpers import config

    with pytest.raises(ValueError, match=index_type):
        config(tmp_path, tmp_path / "col", tiny_caption_model, tiny_embedder_dir,
               index_type=index_type)  # fmt: skip
