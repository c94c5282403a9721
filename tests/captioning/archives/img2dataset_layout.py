"""Write a tiny output folder exactly as img2dataset 1.47 lays it out, without img2dataset.

What this relies on, read in rom1504/img2dataset (writer.py, downloader.py, logger.py):

* Shards are named ``f"{shard_id:0{oom_shard_count}d}"`` with oom_shard_count 5: ``00000``.
* Keys come from ``compute_key``: ``10**oom_sample_per_shard * shard_id + index`` zero-padded to
  ``oom_sample_per_shard + oom_shard_count`` digits; 10,000 samples per shard give 4 + 5 = 9
  digits, so sample 2 of shard 1 is ``"000010002"``. Keys are unique across shards.
* Every attempted sample's ``meta`` is its input columns (``--save_additional_columns`` first,
  then ``caption`` and ``url``), then ``key``, ``status``, ``error_message``, ``width``,
  ``height``, ``original_width``, ``original_height`` (int32), ``exif`` (a JSON string, by
  default) and ``sha256`` (``--compute_hash``, by default). ``status`` is ``"success"``,
  ``"failed_to_download"`` (error_message: the download exception's text) or
  ``"failed_to_resize"`` (error_message: the resizer's); a failed row has null sizes, exif and
  hash.
* webdataset (WebDatasetSampleWriter): ``NNNNN.tar`` written by webdataset's TarWriter, which
  writes a sample's members in sorted extension order: ``KEY.jpg``, ``KEY.json``
  (``json.dumps(meta, indent=4)``) and ``KEY.txt`` (``str(caption)``); a failed sample is not in
  the tar. Every sample, failed or not, is a row of ``NNNNN.parquet`` (BufferedParquetWriter:
  row groups of 100, the meta schema, no image column).
* parquet (ParquetSampleWriter): ``NNNNN.parquet`` with the meta schema plus the image bytes in a
  last ``jpg`` binary column, null on failed rows (its ``txt`` value is not in the schema, so it
  is dropped).
* files (FilesSampleWriter): ``NNNNN/KEY.jpg``, ``KEY.txt``, ``KEY.json`` for each downloaded
  sample, and the same sidecar ``NNNNN.parquet`` as webdataset.
* Every format: ``NNNNN_stats.json`` (write_stats) with ``count``, ``successes``,
  ``failed_to_download``, ``failed_to_resize``, ``duration``, ``status_dict`` (counts by status
  or error message); count = successes + failed_to_download + failed_to_resize.
* Rows are written in download-completion order (imap_unordered), not key order.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

FORMATS = ("webdataset", "parquet", "files")
SAMPLES_PER_SHARD = 10_000  # img2dataset's default --number_sample_per_shard


@dataclass(frozen=True)
class Sample:
    """One input row img2dataset attempted: what it downloaded, or how it failed."""

    url: str
    caption: str
    similarity: float  # a --save_additional_columns column
    status: str = "success"
    error_message: str | None = None
    size: tuple[int, int] = (48, 32)  # the image img2dataset stored (after its resize)
    original_size: tuple[int, int] = (480, 320)


# Two shards with a few successes and failures each: 4 + 3 attempted, 4 downloaded.
SHARDS: tuple[tuple[Sample, ...], ...] = (
    (
        Sample("https://example.com/a/cat.jpg", "A cat on a mat", 0.31),
        Sample(
            "https://example.com/a/gone.jpg",
            "A missing dog",
            0.28,
            status="failed_to_download",
            error_message="HTTP Error 404: Not Found",
        ),
        Sample("https://example.com/b/boat.png", "Red boat, at sea ", 0.35, size=(40, 40)),
        Sample(
            "https://example.com/b/tiny.jpg",
            "A small icon",
            0.22,
            status="failed_to_resize",
            error_message="image too small",
        ),
    ),
    (
        Sample("https://example.org/tree.jpg", "An oak tree in autumn", 0.33),
        Sample("https://example.org/café.jpg", "Café au lait ☕", 0.30, size=(32, 48)),
        Sample(
            "https://example.org/slow.jpg",
            "A slow server",
            0.27,
            status="failed_to_download",
            error_message="<urlopen error timed out>",
        ),
    ),
)

META_SCHEMA = pa.schema(
    [
        ("similarity", pa.float64()),
        ("caption", pa.string()),
        ("url", pa.string()),
        ("key", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("exif", pa.string()),
        ("sha256", pa.string()),
    ]
)


def key_of(shard_id: int, index: int) -> str:
    oom_sample_per_shard = len(str(SAMPLES_PER_SHARD - 1))  # ceil(log10(10_000)) = 4
    return f"{10**oom_sample_per_shard * shard_id + index:0{oom_sample_per_shard + 5}d}"


def image_bytes(sample: Sample, index: int) -> bytes:
    buffer = io.BytesIO()
    colour = (40 * index % 256, 200 - 30 * index % 200, 90)
    Image.new("RGB", sample.size, colour).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def meta(shard_id: int, index: int, sample: Sample) -> dict[str, Any]:
    """img2dataset's meta dict for one attempted sample, in its key order."""
    ok = sample.status == "success"
    return {
        "similarity": sample.similarity,
        "caption": sample.caption,
        "url": sample.url,
        "key": key_of(shard_id, index),
        "status": sample.status,
        "error_message": sample.error_message,
        "width": sample.size[0] if ok else None,
        "height": sample.size[1] if ok else None,
        "original_width": sample.original_size[0] if ok else None,
        "original_height": sample.original_size[1] if ok else None,
        "exif": json.dumps({"Image Orientation": "Horizontal (normal)"}) if ok else None,
        "sha256": hashlib.sha256(sample.url.encode()).hexdigest() if ok else None,
    }


@dataclass(frozen=True)
class Written:
    """What a written folder holds, for the tests to check against."""

    root: Path
    metas: dict[str, dict[str, Any]]  # key -> meta, every attempted sample
    images: dict[str, bytes]  # key -> stored image bytes, the downloaded samples

    def stats(self) -> dict[str, int]:
        """The _stats.json counts summed over shards."""
        totals = {"count": 0, "successes": 0, "failed_to_download": 0, "failed_to_resize": 0}
        for path in sorted(self.root.glob("*_stats.json")):
            stats = json.loads(path.read_text())
            for name in totals:
                totals[name] += stats[name]
        return totals


def write_img2dataset(root: Path, output_format: str) -> Written:
    """Write SHARDS under `root` as img2dataset --output_format `output_format` does."""
    if output_format not in FORMATS:
        raise ValueError(f"output_format must be one of {FORMATS}")
    root.mkdir(parents=True, exist_ok=True)
    metas: dict[str, dict[str, Any]] = {}
    images: dict[str, bytes] = {}
    for shard_id, samples in enumerate(SHARDS):
        name = f"{shard_id:05d}"
        order = list(range(len(samples)))
        random.Random(shard_id).shuffle(order)  # completion order, not key order
        rows, stored = [], {}
        for index in order:
            sample = samples[index]
            row = meta(shard_id, index, sample)
            rows.append(row)
            metas[row["key"]] = row
            if sample.status == "success":
                stored[row["key"]] = images[row["key"]] = image_bytes(sample, index)
        if output_format == "parquet":
            schema = META_SCHEMA.append(pa.field("jpg", pa.binary()))
            table_rows = [{**row, "jpg": stored.get(row["key"])} for row in rows]
            _write_parquet(root / f"{name}.parquet", table_rows, schema)
        else:
            _write_parquet(root / f"{name}.parquet", rows, META_SCHEMA)
        if output_format == "webdataset":
            _write_tar(root / f"{name}.tar", rows, stored)
        if output_format == "files":
            _write_files(root / name, rows, stored)
        _write_stats(root / f"{name}_stats.json", rows)
    return Written(root, metas, images)


def _write_parquet(path: Path, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, len(rows), 100):  # BufferedParquetWriter's buffer of 100
            chunk = rows[start : start + 100]
            writer.write_table(pa.Table.from_pylist(chunk, schema=schema))


def _members(row: dict[str, Any], data: bytes) -> list[tuple[str, bytes]]:
    sample = {
        "jpg": data,
        "json": json.dumps(row, indent=4).encode(),
        "txt": str(row["caption"]).encode(),
    }
    return [(f"{row['key']}.{ext}", sample[ext]) for ext in sorted(sample)]


def _write_tar(path: Path, rows: list[dict[str, Any]], stored: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:  # Python's default format, PAX, as TarWriter's
        for row in rows:
            if row["key"] not in stored:
                continue
            for name, payload in _members(row, stored[row["key"]]):
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(payload), 0o444, 1_700_000_000
                info.uname = info.gname = "bigdata"
                tar.addfile(info, io.BytesIO(payload))


def _write_files(folder: Path, rows: list[dict[str, Any]], stored: dict[str, bytes]) -> None:
    folder.mkdir()
    for row in rows:
        if row["key"] in stored:
            for name, payload in _members(row, stored[row["key"]]):
                (folder / name).write_bytes(payload)


def _write_stats(path: Path, rows: list[dict[str, Any]]) -> None:
    statuses = [row["status"] for row in rows]
    status_dict: dict[str, int] = {}
    for row in rows:
        reason = row["error_message"] or row["status"]
        status_dict[reason] = status_dict.get(reason, 0) + 1
    stats = {
        "count": len(rows),
        "successes": statuses.count("success"),
        "failed_to_download": statuses.count("failed_to_download"),
        "failed_to_resize": statuses.count("failed_to_resize"),
        "duration": 1.5,
        "start_time": 1_700_000_000.0,
        "end_time": 1_700_000_001.5,
        "status_dict": status_dict,
    }
    path.write_text(json.dumps(stats, indent=4))
