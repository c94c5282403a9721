"""img2dataset's output folders, laid out as img2dataset_layout.py documents: listing skips the
sidecars and stats, every sample img2dataset attempted is one entry, and the source's own fields
(url, alt text, metadata) come along."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from captioning.archives.img2dataset import sidecar_path
from captioning.archives.listing import (
    Shard,
    ShardEntry,
    iter_shard,
    list_shards,
    source_fields,
)
from tests.captioning.archives.img2dataset_layout import write_img2dataset


def read_all(pattern: str) -> list[ShardEntry]:
    return [entry for shard in list_shards(pattern) for entry in iter_shard(shard)]


def assert_balances(entries: list[ShardEntry], written) -> None:
    """read = downloaded + failed, against img2dataset's own _stats.json counts."""
    stats = written.stats()
    downloaded = [e for e in entries if not e.failed]
    failed = [e for e in entries if e.failed]
    assert len(entries) == stats["count"] == len(written.metas) == 7
    assert len(downloaded) == stats["successes"] == 4
    assert len(failed) == stats["failed_to_download"] + stats["failed_to_resize"] == 3
    assert sorted(e.key for e in entries) == sorted(written.metas)  # each key exactly once
    assert {e.key: e.data for e in downloaded} == written.images


def assert_failures_are_img2datasets(failed: list[ShardEntry], written) -> None:
    for entry in failed:
        meta = written.metas[entry.key]
        assert (entry.error, entry.message) == (meta["status"], meta["error_message"])
        fields = source_fields(entry)
        assert (fields.url, fields.alt_text) == (meta["url"], meta["caption"])
        assert fields.metadata is not None
        assert json.loads(fields.metadata)["similarity"] == meta["similarity"]


def assert_source_fields(entry: ShardEntry, meta: dict) -> None:
    fields = source_fields(entry)
    assert fields.url == meta["url"]
    assert fields.alt_text == meta["caption"].strip()
    assert fields.metadata is not None
    rest = json.loads(fields.metadata)
    assert "url" not in rest and "caption" not in rest and "key" not in rest
    for name in ("original_width", "original_height", "sha256", "exif", "status", "similarity"):
        assert rest[name] == meta[name], name


# ------------------------------------------------------------------------------- webdataset


def test_webdataset_folder_lists_tars_with_their_sidecars_and_nothing_else(tmp_path: Path) -> None:
    write_img2dataset(tmp_path, "webdataset")

    shards = list_shards(str(tmp_path))

    assert [(s.uri.rsplit("/", 1)[-1], s.kind) for s in shards] == [
        ("00000.tar", "tar"),
        ("00001.tar", "tar"),
    ]
    assert [s.sidecar for s in shards] == [
        f"file://{tmp_path}/00000.parquet",
        f"file://{tmp_path}/00001.parquet",
    ]


def test_webdataset_folder_counts_every_attempted_sample_once(tmp_path: Path) -> None:
    written = write_img2dataset(tmp_path, "webdataset")

    entries = read_all(str(tmp_path))

    assert_balances(entries, written)
    failed = [e for e in entries if e.failed]
    assert_failures_are_img2datasets(failed, written)
    # A failed sample is a row of the sidecar, not a member of the tar.
    assert {e.source.rsplit("/", 1)[-1] for e in failed} == {"00000.parquet", "00001.parquet"}
    assert all(e.member.startswith("row ") for e in failed)
    assert {e.error for e in failed} == {"failed_to_download", "failed_to_resize"}


def test_webdataset_sample_carries_url_alt_text_and_metadata(tmp_path: Path) -> None:
    written = write_img2dataset(tmp_path, "webdataset")

    entries = [e for e in read_all(str(tmp_path)) if not e.failed]

    for entry in entries:
        assert entry.source.endswith(".tar") and entry.member == f"{entry.key}.jpg"
        assert_source_fields(entry, written.metas[entry.key])
    cafe = next(e for e in entries if e.key == "000010001")
    assert source_fields(cafe).alt_text == "Café au lait ☕"


@pytest.mark.parametrize("pattern", ["*.tar", "0000{0,1}.tar", "00001.tar"])
def test_a_tar_named_or_globbed_without_its_sidecar_still_reads_it(
    tmp_path: Path, pattern: str
) -> None:
    write_img2dataset(tmp_path, "webdataset")

    shards = list_shards(str(tmp_path / pattern))

    assert shards and all(s.kind == "tar" for s in shards)
    assert all(s.sidecar == f"file://{sidecar_path(s.uri.removeprefix('file://'))}" for s in shards)


def test_stats_json_and_a_sidecar_named_with_its_tar_are_no_shards(tmp_path: Path) -> None:
    write_img2dataset(tmp_path, "webdataset")

    shards = list_shards(str(tmp_path / "00000*"))

    assert [(s.uri.rsplit("/", 1)[-1], s.sidecar is not None) for s in shards] == [
        ("00000.tar", True)
    ]


def test_a_sidecar_that_holds_images_is_read_with_its_tar_not_lost(tmp_path: Path) -> None:
    write_img2dataset(tmp_path, "webdataset")
    (tmp_path / "00001.tar").unlink()
    write_img2dataset(tmp_path / "pq", "parquet")
    (tmp_path / "pq" / "00000.parquet").replace(tmp_path / "00000.parquet")

    entries = read_all(str(tmp_path / "00000.tar"))

    tar_keys = [e.key for e in entries if e.source.endswith(".tar")]
    parquet = [e for e in entries if e.source.endswith(".parquet")]
    assert len(tar_keys) == 2 and len(parquet) == 4  # the parquet's 2 images and 2 failures
    assert sum(not e.failed for e in parquet) == 2


def test_a_same_stem_parquet_without_status_or_images_adds_nothing(tmp_path: Path) -> None:
    write_img2dataset(tmp_path, "webdataset")
    pq.write_table(
        pa.table({"key": ["x"], "note": ["not img2dataset's"]}), tmp_path / "00000.parquet"
    )

    entries = read_all(str(tmp_path / "00000.tar"))

    assert [e.failed for e in entries] == [False, False]


def test_a_damaged_sidecar_costs_one_failure_not_the_tars_images(tmp_path: Path) -> None:
    write_img2dataset(tmp_path, "webdataset")
    path = tmp_path / "00000.parquet"
    raw = bytearray(path.read_bytes())
    status = pq.ParquetFile(path).schema_arrow.get_field_index("status")
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(status)
    raw[chunk.data_page_offset : chunk.data_page_offset + 20] = b"\xff" * 20
    path.write_bytes(bytes(raw))

    entries = read_all(str(tmp_path / "00000.tar"))

    assert [(e.source.rsplit("/", 1)[-1], e.error) for e in entries] == [
        ("00000.tar", None),
        ("00000.tar", None),
        ("00000.parquet", "corrupt_parquet"),
    ]
    assert entries[-1].member == "" and "rows 0-3" in (entries[-1].message or "")


def test_a_tar_without_a_sidecar_reads_as_before(tmp_path: Path) -> None:
    write_img2dataset(tmp_path, "webdataset")
    (tmp_path / "00000.parquet").unlink()

    shards = list_shards(str(tmp_path))

    assert [s.sidecar is None for s in shards] == [True, False]
    assert len([e for e in iter_shard(shards[0])]) == 2  # its downloaded samples only


# ------------------------------------------------------------------------------- parquet


def test_parquet_folder_counts_every_attempted_sample_once(tmp_path: Path) -> None:
    written = write_img2dataset(tmp_path, "parquet")

    shards = list_shards(str(tmp_path))
    entries = read_all(str(tmp_path))

    assert [(s.kind, s.sidecar) for s in shards] == [("parquet", None)] * 2
    assert_balances(entries, written)
    failed = [e for e in entries if e.failed]
    assert_failures_are_img2datasets(failed, written)
    assert "missing_image" not in {e.error for e in failed}
    for entry in entries:
        if not entry.failed:
            assert_source_fields(entry, written.metas[entry.key])


def test_parquet_rows_status_only_counts_with_img2datasets_columns(tmp_path: Path) -> None:
    """A "status" column alone is someone else's column, not a download failure."""
    write_img2dataset(tmp_path, "parquet")
    table = pq.read_table(tmp_path / "00000.parquet").drop_columns(["error_message"])
    table = table.filter(pc.is_valid(table.column("jpg")))
    pq.write_table(table.set_column(4, "status", pa.array(["draft"] * 2)), tmp_path / "x.parquet")

    entries = read_all(str(tmp_path / "x.parquet"))

    assert [e.failed for e in entries] == [False, False]


# ------------------------------------------------------------------------------- files


def test_files_folder_reads_images_and_the_sidecars_failures(tmp_path: Path) -> None:
    written = write_img2dataset(tmp_path, "files")

    shards = list_shards(str(tmp_path))
    entries = read_all(str(tmp_path))

    assert sorted(s.kind for s in shards) == ["file"] * 4 + ["parquet"] * 2
    stats = written.stats()
    assert len(entries) == stats["count"]
    assert sum(not e.failed for e in entries) == stats["successes"]
    assert_failures_are_img2datasets([e for e in entries if e.failed], written)
    image = next(e for e in entries if not e.failed)
    assert source_fields(image).url == written.metas[image.key.rsplit("/", 1)[-1][:-4]]["url"]


# ------------------------------------------------------------------------------- source_fields


def entry(caption: str | None, metadata: dict | None, key: str = "k") -> ShardEntry:
    return ShardEntry(key, "file:///s.tar", f"{key}.jpg", b"x", caption, metadata)


def test_source_fields_of_an_entry_without_metadata_are_empty() -> None:
    fields = source_fields(entry(None, None))
    assert (fields.url, fields.alt_text, fields.metadata) == (None, None, None)
    assert source_fields(entry("a .txt caption", None)).alt_text == "a .txt caption"


def test_source_fields_keep_what_differs_and_write_strict_json() -> None:
    meta = {
        "url": "https://x/y.jpg",
        "caption": "the json caption",
        "key": "other",
        "score": math.nan,
        "tags": ("a", "b"),
    }
    fields = source_fields(entry("the txt caption", meta))

    assert (fields.url, fields.alt_text) == ("https://x/y.jpg", "the txt caption")
    assert fields.metadata is not None
    assert json.loads(fields.metadata) == {
        "caption": "the json caption",
        "key": "other",
        "score": None,
        "tags": ["a", "b"],
    }
    only_json = source_fields(entry(None, {"caption": "from json", "url": None}))
    assert (only_json.url, only_json.alt_text, only_json.metadata) == (None, "from json", None)


def test_shard_sidecar_is_only_for_tars() -> None:
    with pytest.raises(ValueError, match="sidecar"):
        Shard("file:///x.parquet", "parquet", sidecar="file:///y.parquet")
    assert sidecar_path("/d/00000.tar") == "/d/00000.parquet"
    assert sidecar_path("/d/x.tar.gz") == "/d/x.parquet"
    assert sidecar_path("/d/x.parquet") is None


def test_failed_downloads_belong_to_the_source_stage(tmp_path: Path) -> None:
    """img2dataset's own failures are the archive's, not a read error of ours: stage "source"
    (they keep read == captioned + failed, and stay out of --max-failure-rate)."""
    from captioning.archives.listing import iter_shard, list_shards

    write_img2dataset(tmp_path / "out", "webdataset")
    entries = [e for s in list_shards(str(tmp_path / "out")) for e in iter_shard(s)]
    failed = [e for e in entries if e.failed]
    assert failed and {e.stage for e in failed} == {"source"}
    assert {e.stage for e in entries if not e.failed} == {"read"}
