"""read_member: (source, member) as the readers record them -> the same bytes the readers read."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from captioning.archives.fetch import ArchiveReadError, MemberNotFound, MemberReader, read_member
from captioning.archives.listing import iter_shard, list_shards
from captioning.archives.synthetic.writer import ArchiveConfig, write_archive
from captioning.errors import CaptioningError


def _entries(root: Path):
    return [e for shard in list_shards(str(root)) for e in iter_shard(shard) if not e.failed]


@pytest.fixture(scope="module", params=["tar", "parquet", "folder"])
def archive(request, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp(f"archive-{request.param}")
    write_archive(str(root), ArchiveConfig(images=7, shards=2, seed=3, format=request.param))
    return root


def test_every_listed_member_reads_back_as_the_reader_read_it(archive: Path) -> None:
    entries = _entries(archive)
    assert len(entries) == 7
    reader = MemberReader()
    for entry in entries:
        assert reader.read(entry.source, entry.member) == entry.data
        assert read_member(entry.source, entry.member) == entry.data


def test_a_tar_is_indexed_once_and_again_only_when_it_changes(tmp_path: Path) -> None:
    write_archive(str(tmp_path), ArchiveConfig(images=6, shards=1, seed=1, format="tar"))
    entries = _entries(tmp_path)
    reader = MemberReader()
    for entry in entries:
        reader.read(entry.source, entry.member)
    assert reader.index_builds == 1
    # Rewrite the tar with other images under the same name: the offsets must be re-read.
    tar = tmp_path / "shard-00000.tar"
    tar.unlink()
    write_archive(str(tmp_path), ArchiveConfig(images=6, shards=1, seed=2, format="tar"))
    stat = tar.stat()
    os.utime(tar, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    fresh = _entries(tmp_path)
    assert reader.read(fresh[0].source, fresh[0].member) == fresh[0].data
    assert reader.index_builds == 2


def test_a_compressed_tar_is_scanned(tmp_path: Path) -> None:
    write_archive(str(tmp_path / "plain"), ArchiveConfig(images=4, shards=1, seed=5, format="tar"))
    compressed = tmp_path / "gz" / "shard-00000.tar.gz"
    compressed.parent.mkdir()
    with (
        open(tmp_path / "plain" / "shard-00000.tar", "rb") as src,
        gzip.open(compressed, "wb") as dst,
    ):
        shutil.copyfileobj(src, dst)
    entries = _entries(tmp_path / "gz")
    assert entries
    for entry in entries:
        assert read_member(entry.source, entry.member) == entry.data
    with pytest.raises(MemberNotFound):
        read_member(entries[0].source, "nope.jpg")


def test_gone_archives_and_members_are_member_not_found(tmp_path: Path) -> None:
    write_archive(str(tmp_path), ArchiveConfig(images=3, shards=1, seed=1, format="tar"))
    entry = _entries(tmp_path)[0]
    reader = MemberReader()
    with pytest.raises(MemberNotFound, match="no member"):
        reader.read(entry.source, "missing.jpg")
    (tmp_path / "shard-00000.tar").unlink()
    with pytest.raises(MemberNotFound) as raised:
        reader.read(entry.source, entry.member)
    # What the service relies on without importing captioning: a FileNotFoundError.
    assert isinstance(raised.value, FileNotFoundError)
    assert isinstance(raised.value, CaptioningError)
    with pytest.raises(MemberNotFound):
        read_member((tmp_path / "gone.jpg").as_uri(), "gone.jpg")


def test_parquet_rows_out_of_range_or_null_or_badly_named(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    table = pa.table({"key": ["a", "b"], "jpg": pa.array([b"abc", None], pa.binary())})
    pq.write_table(table, path, row_group_size=1)
    source = path.as_uri()
    assert read_member(source, "row 0") == b"abc"
    for member in ("row 1", "row 2", "row -1", "0", "row x"):
        with pytest.raises(MemberNotFound):
            read_member(source, member)
    pq.write_table(pa.table({"key": ["a"]}), tmp_path / "sidecar.parquet")
    with pytest.raises(MemberNotFound, match="no image column"):
        read_member((tmp_path / "sidecar.parquet").as_uri(), "row 0")


def test_damaged_or_unknown_sources_are_read_errors(tmp_path: Path) -> None:
    not_tar = tmp_path / "junk.tar"
    not_tar.write_bytes(b"\x01" * 2048)
    with pytest.raises(ArchiveReadError, match="not a readable tar"):
        read_member(not_tar.as_uri(), "a.jpg")
    other = tmp_path / "notes.txt"
    other.write_text("hi")
    with pytest.raises(ArchiveReadError, match="not an image, tar or Parquet"):
        read_member(other.as_uri(), "notes.txt")
    bad_parquet = tmp_path / "bad.parquet"
    bad_parquet.write_bytes(b"PAR1 not really")
    with pytest.raises(ArchiveReadError):
        read_member(bad_parquet.as_uri(), "row 0")


def test_a_tar_truncated_inside_a_member_is_a_read_error(tmp_path: Path) -> None:
    write_archive(str(tmp_path), ArchiveConfig(images=3, shards=1, seed=1, format="tar"))
    entries = _entries(tmp_path)
    reader = MemberReader()
    last = entries[-1]
    reader.read(last.source, last.member)  # index while whole
    tar = tmp_path / "shard-00000.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    with pytest.raises((ArchiveReadError, MemberNotFound)):
        reader.read(last.source, last.member)
