"""captioning.archives.listing: listing inputs and streaming folders, tars and Parquet files."""

import gzip
import importlib.util
import io
import json
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from captioning.archives.listing import (
    IMAGE_EXTENSIONS,
    SHARD_KEY,
    TRUNCATED_KEY,
    InputError,
    ReadConfig,
    Shard,
    ShardEntry,
    expand_braces,
    iter_shard,
    list_shards,
)


def _image(fmt: str = "JPEG", color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format=fmt)
    return buffer.getvalue()


JPEG = _image()


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _samples(n: int = 3, prefix: str = "") -> list[tuple[str, bytes]]:
    members = []
    for i in range(n):
        key = f"{prefix}{i:09d}"
        members += [
            (f"{key}.jpg", _image(color=(i * 40, 0, 0))),
            (f"{key}.json", json.dumps({"index": i}).encode()),
            (f"{key}.txt", f"caption {i}\n".encode()),
        ]
    return members


def _member_offsets(raw: bytes) -> dict[str, tuple[int, int]]:
    """Member name -> (header offset, data offset)."""
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return {m.name: (m.offset, m.offset_data) for m in tar.getmembers()}


def _read(path: Path) -> list[ShardEntry]:
    (shard,) = list_shards(str(path))
    return list(iter_shard(shard))


def _parquet(path: Path, table: pa.Table, row_group_size: int = 2) -> None:
    pq.write_table(table, path, row_group_size=row_group_size, compression="none")


@pytest.fixture
def memory_root() -> Iterator[str]:
    root = f"/shards-test-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


# --- list_shards ---------------------------------------------------------------------------------


def test_folder_is_listed_recursively_with_keys_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "a.jpg").write_bytes(JPEG)
    (tmp_path / "a.png").write_bytes(_image("PNG"))
    (tmp_path / "a.txt").write_text("a sidecar, not a shard")
    (tmp_path / "notes.md").write_text("ignored")
    (tmp_path / "sub" / "B.JPEG").write_bytes(JPEG)
    (tmp_path / "sub" / "deeper" / "çà et là 1.webp").write_bytes(JPEG)
    (tmp_path / "sub" / "x.tar").write_bytes(_tar(_samples(1)))
    (tmp_path / "sub" / "y.parquet").write_bytes(b"")

    shards = list_shards(str(tmp_path))

    assert [(s.kind, s.key) for s in shards] == [
        ("file", "a.jpg"),
        ("file", "a.png"),
        ("file", "sub/B.JPEG"),
        ("file", "sub/deeper/çà et là 1.webp"),
        ("tar", None),
        ("parquet", None),
    ]
    assert all(s.uri.startswith("file://") for s in shards)
    assert shards == list_shards(str(tmp_path) + "/")  # deterministic, trailing slash ignored


def test_folder_image_with_spaces_and_non_ascii_reads_with_sidecars(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "çà et là 1.jpg").write_bytes(JPEG)
    (tmp_path / "sub" / "çà et là 1.txt").write_text(" a red square \n", encoding="utf-8")
    (tmp_path / "sub" / "çà et là 1.json").write_text('{"width": 8}')

    (shard,) = list_shards(str(tmp_path))
    (entry,) = iter_shard(shard)

    assert entry.key == entry.member == "sub/çà et là 1.jpg"
    assert entry.source == shard.uri
    assert entry.data == JPEG
    assert entry.caption == "a red square"
    assert entry.metadata == {"width": 8}
    assert entry.error is None and not entry.failed


def test_unparseable_json_sidecar_is_a_note_not_a_failure(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(JPEG)
    (tmp_path / "a.json").write_text("{not json")

    (entry,) = _read(tmp_path)

    assert entry.data == JPEG and entry.error is None
    assert entry.metadata is None and entry.caption is None
    assert entry.message is not None and "json" in entry.message


def test_unreadable_file_is_a_read_error_entry(tmp_path: Path) -> None:
    shard = Shard(uri=(tmp_path / "gone.jpg").as_uri(), kind="file")

    (entry,) = iter_shard(shard)

    assert entry.failed and entry.error == "read_error" and entry.key == "gone.jpg"


def test_single_file_and_glob_inputs(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("s-0.tar", "s-1.tar", "sub/s-2.tar"):
        (tmp_path / name).write_bytes(_tar(_samples(1)))
    (tmp_path / "sub" / "c.jpg").write_bytes(JPEG)

    assert [s.kind for s in list_shards(str(tmp_path / "s-0.tar"))] == ["tar"]
    assert [Path(s.uri).name for s in list_shards(str(tmp_path / "*.tar"))] == [
        "s-0.tar",
        "s-1.tar",
    ]
    recursive = list_shards(str(tmp_path / "**" / "*.tar"))
    assert [Path(s.uri).name for s in recursive] == ["s-0.tar", "s-1.tar", "s-2.tar"]
    (image,) = list_shards(str(tmp_path / "s*" / "?.jpg"))
    assert image.key == "sub/c.jpg"  # key root: the glob's literal prefix


def test_keys_stay_unique_across_brace_listed_folders(tmp_path: Path) -> None:
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "same.jpg").write_bytes(JPEG)

    shards = list_shards(str(tmp_path / "{x,y}"))

    assert [s.key for s in shards] == ["x/same.jpg", "y/same.jpg"]


def test_expand_braces() -> None:
    assert expand_braces("shard-{00000..00002}.tar") == [
        "shard-00000.tar",
        "shard-00001.tar",
        "shard-00002.tar",
    ]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("{8..10}") == ["8", "9", "10"]
    assert expand_braces("{2..0}") == ["2", "1", "0"]
    assert expand_braces("x{a,{b,c}}") == ["xa", "xb", "xc"]
    assert expand_braces("literal{}{x}{") == ["literal{}{x}{"]
    with pytest.raises(InputError, match="million"):
        expand_braces("{0..99999999}")


def test_brace_pattern_lists_shards_and_missing_members_raise(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"shard-{i:05d}.tar").write_bytes(_tar(_samples(1)))

    shards = list_shards(str(tmp_path / "shard-{00000..00002}.tar"))
    assert [Path(s.uri).name for s in shards] == [f"shard-{i:05d}.tar" for i in range(3)]

    with pytest.raises(InputError, match="shard-00003.tar"):
        list_shards(str(tmp_path / "shard-{00000..00003}.tar"))


def test_no_match_and_nonexistent_raise_input_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.md").write_text("x")

    with pytest.raises(InputError, match=r"no input matched .*\*\.tar"):
        list_shards(str(tmp_path / "*.tar"))
    with pytest.raises(InputError, match="input path does not exist"):
        list_shards(str(tmp_path / "nope"))
    with pytest.raises(InputError, match="holds no image"):
        list_shards(str(tmp_path / "empty"))
    with pytest.raises(InputError, match="is not an image"):
        list_shards(str(tmp_path / "notes.md"))
    with pytest.raises(InputError, match="empty input"):
        list_shards(" ")


@pytest.mark.parametrize(
    ("url", "package", "extra"),
    [("gs://bucket/x/*.tar", "gcsfs", "gcs"), ("s3://bucket/x.tar", "s3fs", "s3")],
)
def test_missing_protocol_extra_names_the_pip_extra(url: str, package: str, extra: str) -> None:
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed")
    with pytest.raises(InputError, match=rf"pip install 'imgindex\[{extra}\]'"):
        list_shards(url)


def test_unknown_protocol_raises_input_error() -> None:
    with pytest.raises(InputError, match="no protocol 'nosuch'"):
        list_shards("nosuch://bucket/x.tar")


def test_memory_folder_lists_and_reads(memory_root: str) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{memory_root}/imgs/a.jpg", JPEG)
    fs.pipe(f"{memory_root}/imgs/a.txt", b"memory caption")
    fs.pipe(f"{memory_root}/imgs/sub/b c.png", _image("PNG"))
    fs.pipe(f"{memory_root}/imgs/sub/b c.json", b'{"k": 1}')

    shards = list_shards(f"memory://{memory_root}/imgs")
    entries = [entry for shard in shards for entry in iter_shard(shard)]

    assert all(s.uri.startswith("memory://") and s.kind == "file" for s in shards)
    assert [(e.key, e.caption, e.metadata) for e in entries] == [
        ("a.jpg", "memory caption", None),
        ("sub/b c.png", None, {"k": 1}),
    ]
    assert entries[0].data == JPEG


def test_memory_tar_and_glob(memory_root: str) -> None:
    fsspec.filesystem("memory").pipe(f"{memory_root}/t/shard-0.tar", _tar(_samples(2)))

    (shard,) = list_shards(f"memory://{memory_root}/t/*.tar")
    entries = list(iter_shard(shard))

    assert shard.kind == "tar"
    assert [(e.key, e.caption) for e in entries] == [
        ("000000000", "caption 0"),
        ("000000001", "caption 1"),
    ]


# --- tar -----------------------------------------------------------------------------------------


def test_tar_samples_group_members_by_key(tmp_path: Path) -> None:
    members = _samples(3)
    (tmp_path / "shard.tar").write_bytes(_tar(members))

    entries = _read(tmp_path / "shard.tar")

    assert [e.key for e in entries] == ["000000000", "000000001", "000000002"]
    assert [e.member for e in entries] == ["000000000.jpg", "000000001.jpg", "000000002.jpg"]
    assert [e.caption for e in entries] == ["caption 0", "caption 1", "caption 2"]
    assert [e.metadata for e in entries] == [{"index": 0}, {"index": 1}, {"index": 2}]
    assert [e.data for e in entries] == [members[i][1] for i in (0, 3, 6)]
    assert all(e.error is None and e.message is None for e in entries)


def test_tar_keys_keep_directories_and_gzip_is_read(tmp_path: Path) -> None:
    raw = _tar([("a/1.jpg", JPEG), ("a/1.txt", b"in a"), ("b/1.jpg", JPEG)])
    (tmp_path / "shard.tar.gz").write_bytes(gzip.compress(raw))

    entries = _read(tmp_path / "shard.tar.gz")

    assert [(e.key, e.caption) for e in entries] == [("a/1", "in a"), ("b/1", None)]


def test_tar_sample_without_image_extra_images_and_stray_members(tmp_path: Path) -> None:
    members = [
        ("0.json", b"{}"),
        ("1.jpg", JPEG),
        ("1.png", _image("PNG")),
        ("1.cls", b"3"),
        ("._1.jpg", b"macOS resource fork"),
        ("README", b"no extension"),
        ("2.json", b"[1, 2]"),
        ("2.webp", JPEG),
    ]
    (tmp_path / "shard.tar").write_bytes(_tar(members))

    no_image, extra, listy = _read(tmp_path / "shard.tar")

    assert (no_image.key, no_image.error, no_image.failed) == ("0", "no_image", True)
    assert (extra.key, extra.data, extra.member) == ("1", JPEG, "1.jpg")
    assert extra.message is not None and "1.png" in extra.message
    assert (listy.key, listy.data, listy.metadata) == ("2", JPEG, None)
    assert listy.message is not None and "not an object" in listy.message


def test_tar_with_damaged_member_header_skips_only_that_member(tmp_path: Path) -> None:
    raw = bytearray(_tar(_samples(3)))
    header, _ = _member_offsets(bytes(raw))["000000001.jpg"]
    raw[header + 148 : header + 156] = b"garbage!"  # the header checksum field

    (tmp_path / "shard.tar").write_bytes(bytes(raw))
    entries = _read(tmp_path / "shard.tar")

    assert [(e.key, e.error) for e in entries] == [
        ("000000000", None),
        ("000000001", "corrupt_tar_header"),
        ("000000002", None),
    ]
    assert entries[1].member == "000000001.jpg"
    assert entries[2].caption == "caption 2" and entries[2].metadata == {"index": 2}


def test_tar_with_unreadable_header_name_accounts_for_every_key(tmp_path: Path) -> None:
    raw = bytearray(_tar(_samples(3)))
    header, _ = _member_offsets(bytes(raw))["000000001.jpg"]
    raw[header : header + 100] = bytes(range(128, 228))  # name field: not UTF-8

    (tmp_path / "shard.tar").write_bytes(bytes(raw))
    entries = _read(tmp_path / "shard.tar")

    # The damage is reported while sample 0 is still open: the lost member might have been its.
    assert [(e.key, e.error) for e in entries] == [
        (f"<corrupt@{header}>", "corrupt_tar_header"),
        ("000000000", None),
        ("000000001", "no_image"),  # its .json and .txt survived
        ("000000002", None),
    ]


def test_truncated_tar_yields_earlier_samples_then_one_failure(tmp_path: Path) -> None:
    raw = _tar(_samples(3))
    _, data = _member_offsets(raw)["000000002.jpg"]
    (tmp_path / "mid_image.tar").write_bytes(raw[: data + 10])
    header, _ = _member_offsets(raw)["000000002.txt"]
    (tmp_path / "mid_caption.tar").write_bytes(raw[: header + 100])
    (tmp_path / "at_boundary.tar").write_bytes(raw[:header])  # no end-of-archive marker

    mid_image = _read(tmp_path / "mid_image.tar")
    mid_caption = _read(tmp_path / "mid_caption.tar")
    at_boundary = _read(tmp_path / "at_boundary.tar")

    assert [(e.key, e.error) for e in mid_image] == [
        ("000000000", None),
        ("000000001", None),
        ("000000002", "truncated_tar"),  # the image itself was cut
    ]
    assert mid_image[-1].member == "000000002.jpg"
    for entries in (mid_caption, at_boundary):
        assert [(e.key, e.error) for e in entries] == [
            ("000000000", None),
            ("000000001", None),
            ("000000002", None),  # image complete: kept
            (TRUNCATED_KEY, "truncated_tar"),
        ]


def test_bytes_after_the_end_of_archive_marker_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "shard.tar").write_bytes(_tar(_samples(2)) + b"trailing junk " * 100)

    entries = _read(tmp_path / "shard.tar")

    assert [(e.key, e.error) for e in entries] == [("000000000", None), ("000000001", None)]


def test_non_tar_and_empty_files_are_corrupt_tar(tmp_path: Path) -> None:
    (tmp_path / "garbage.tar").write_bytes(b"this is not a tar archive " * 100)
    (tmp_path / "empty.tar").write_bytes(b"")

    for name in ("garbage.tar", "empty.tar"):
        (entry,) = _read(tmp_path / name)
        assert (entry.key, entry.error, entry.failed) == (SHARD_KEY, "corrupt_tar", True)


# --- parquet -------------------------------------------------------------------------------------


def _table(n: int = 6, **overrides: list) -> pa.Table:
    columns = {
        "key": [f"k{i}" for i in range(n)],
        "jpg": [_image(color=(i, i, i)) for i in range(n)],
        "caption": [f"caption {i}" for i in range(n)],
        "json": [json.dumps({"i": i}) for i in range(n)],
        "width": [8] * n,
        "png": [b"second image column, never read"] * n,
    }
    columns.update(overrides)
    return pa.table(columns)


def test_parquet_streams_every_row_group(tmp_path: Path) -> None:
    table = _table(6)
    _parquet(tmp_path / "part.parquet", table)
    assert pq.ParquetFile(tmp_path / "part.parquet").metadata.num_row_groups == 3
    (shard,) = list_shards(str(tmp_path / "part.parquet"))

    entries = list(iter_shard(shard, ReadConfig(parquet_batch_rows=1)))

    assert [e.key for e in entries] == [f"k{i}" for i in range(6)]
    assert [e.member for e in entries] == [f"row {i}" for i in range(6)]
    assert [e.data for e in entries] == table.column("jpg").to_pylist()
    assert entries[4].caption == "caption 4"
    assert entries[4].metadata == {"width": 8, "i": 4}


def test_parquet_without_key_column_uses_stem_and_row(tmp_path: Path) -> None:
    _parquet(tmp_path / "part-7.parquet", _table(3).drop_columns(["key", "json", "width"]))

    entries = _read(tmp_path / "part-7.parquet")

    assert [e.key for e in entries] == [f"part-7-{i:09d}" for i in range(3)]
    assert all(e.metadata is None and e.error is None for e in entries)


def test_parquet_missing_image_column_is_one_failure(tmp_path: Path) -> None:
    _parquet(tmp_path / "p.parquet", _table(4).drop_columns(["jpg"]))
    (shard,) = list_shards(str(tmp_path / "p.parquet"))

    (entry,) = iter_shard(shard)
    other = list(iter_shard(shard, ReadConfig(image_column="png")))

    assert (entry.key, entry.error) == (SHARD_KEY, "missing_column")
    assert entry.message is not None
    assert "--image-column" in entry.message and "'png'" in entry.message
    assert [e.data for e in other] == [b"second image column, never read"] * 4


def test_parquet_image_column_that_is_not_bytes(tmp_path: Path) -> None:
    _parquet(tmp_path / "p.parquet", _table(2, jpg=["a.jpg", "b.jpg"]))

    (entry,) = _read(tmp_path / "p.parquet")

    assert entry.error == "bad_column_type"


def test_corrupt_parquet_is_one_failure(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really parquet")

    (entry,) = _read(tmp_path / "bad.parquet")

    assert (entry.key, entry.error) == (SHARD_KEY, "corrupt_parquet")


def test_damaged_row_group_costs_only_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    _parquet(path, _table(6))
    raw = bytearray(path.read_bytes())
    chunk = pq.ParquetFile(path).metadata.row_group(1).column(1)  # the "jpg" column chunk
    raw[chunk.data_page_offset : chunk.data_page_offset + 20] = b"\xff" * 20
    path.write_bytes(bytes(raw))

    entries = _read(path)

    assert [(e.key, e.error) for e in entries] == [
        ("k0", None),
        ("k1", None),
        ("p-000000002", "corrupt_parquet"),
        ("p-000000003", "corrupt_parquet"),
        ("k4", None),
        ("k5", None),
    ]


def test_parquet_null_image_row_is_missing_image(tmp_path: Path) -> None:
    images = [JPEG, None, JPEG]
    _parquet(tmp_path / "p.parquet", _table(3, jpg=pa.array(images, pa.binary())))

    entries = _read(tmp_path / "p.parquet")

    assert [(e.key, e.error) for e in entries] == [
        ("k0", None),
        ("k1", "missing_image"),
        ("k2", None),
    ]


def test_configs_validate() -> None:
    with pytest.raises(ValueError, match="parquet_batch_rows"):
        ReadConfig(parquet_batch_rows=0)
    with pytest.raises(ValueError, match="image_column"):
        ReadConfig(image_column="")
    with pytest.raises(ValueError, match="kind"):
        Shard(uri="file:///x.zip", kind="zip")
    assert ".tif" in IMAGE_EXTENSIONS
