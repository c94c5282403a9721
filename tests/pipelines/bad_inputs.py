"""Builds the issue's bad-input world into one folder -> the outcome each listed image must have.

Every case is made here with Pillow, tarfile and pyarrow; no file is committed. The folder is a
valid `imgindex caption` input: its images, tars and Parquet files are all shards of one run.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from captioning.archives.listing import SHARD_KEY, TRUNCATED_KEY
from tests.captioning.images.test_decode import encode, noisy, png_declaring

NON_ASCII_NAME = "photo of a café in Zürich 東京.png"
DAMAGED_TAR = "damaged-header.tar"
TRUNCATED_TAR = "truncated.tar"
CUT_TAR = "cut-between-members.tar"
CORRUPT_PARQUET = "corrupt.parquet"
NO_IMAGE_COLUMN_PARQUET = "no-image-column.parquet"


@dataclass(frozen=True, slots=True)
class Expected:
    """Where one listed image must end up; `source` is the file name its source URI ends with."""

    case: str
    source: str
    member: str
    key: str
    table: str  # "captions" | "failures"
    stage: str | None = None  # failures only
    error_type: str | None = None  # failures only
    size: tuple[int, int] | None = None  # captions: (width, height) as displayed
    format: str | None = None  # captions: Pillow's format name

    @property
    def at(self) -> tuple[str, str]:
        return self.source, self.member


def _file(case: str, name: str, **outcome: object) -> Expected:
    return Expected(case, name, name, name, **outcome)  # a folder image: shard, member and key


def _failed(stage: str, error_type: str) -> dict[str, object]:
    return {"table": "failures", "stage": stage, "error_type": error_type}


def _captioned(size: tuple[int, int] | None = None, fmt: str | None = None) -> dict[str, object]:
    return {"table": "captions", "size": size, "format": fmt}


EXPECTED: tuple[Expected, ...] = (
    _file("zero-byte file", "empty.jpg", **_failed("decode", "empty")),
    _file("truncated JPEG", "truncated.jpg", **_failed("decode", "truncated")),
    _file("text file named .jpg", "text.jpg", **_failed("decode", "unidentified")),
    _file("decompression bomb", "bomb.png", **_failed("decode", "decompression_bomb")),
    _file("1x1 image", "one-pixel.png", **_captioned((1, 1), "PNG")),
    _file("20,000-pixel side", "wide.png", **_captioned((20000, 8), "PNG")),
    _file("CMYK JPEG", "cmyk.jpg", **_captioned((32, 32), "JPEG")),
    _file("16-bit PNG", "grey16.png", **_captioned((8, 8), "PNG")),
    _file("palette+alpha PNG", "palette-alpha.png", **_captioned((8, 8), "PNG")),
    _file("animated GIF", "animated.gif", **_captioned((16, 16), "GIF")),
    _file("EXIF-rotated JPEG", "rotated.jpg", **_captioned((20, 40), "JPEG")),
    _file("grayscale", "grey.jpg", **_captioned((12, 10), "JPEG")),
    _file("spaces and non-ASCII name", NON_ASCII_NAME, **_captioned((10, 6), "PNG")),
    Expected(
        "tar sample before the damaged header",
        DAMAGED_TAR,
        "000000000.jpg",
        "000000000",
        **_captioned((8, 8), "JPEG"),
    ),
    Expected(
        "tar member with a damaged header",
        DAMAGED_TAR,
        "000000001.jpg",
        "000000001",
        **_failed("read", "corrupt_tar_header"),
    ),
    Expected(
        "tar sample after the damaged header",
        DAMAGED_TAR,
        "000000002.jpg",
        "000000002",
        **_captioned((8, 8), "JPEG"),
    ),
    Expected(
        "truncated tar, first sample",
        TRUNCATED_TAR,
        "000000000.jpg",
        "000000000",
        **_captioned((8, 8), "JPEG"),
    ),
    Expected(
        "truncated tar, second sample",
        TRUNCATED_TAR,
        "000000001.jpg",
        "000000001",
        **_captioned((8, 8), "JPEG"),
    ),
    Expected(
        "truncated tar, image cut short",
        TRUNCATED_TAR,
        "000000002.jpg",
        "000000002",
        **_failed("read", "truncated_tar"),
    ),
    # Images only, cut inside the third header: the second image is whole, so it is captioned,
    # and the cut itself is one row that must not claim any image's member.
    Expected(
        "tar cut between members, first image",
        CUT_TAR,
        "000000000.jpg",
        "000000000",
        **_captioned((8, 8), "JPEG"),
    ),
    Expected(
        "tar cut between members, last whole image",
        CUT_TAR,
        "000000001.jpg",
        "000000001",
        **_captioned((8, 8), "JPEG"),
    ),
    Expected(
        "tar cut between members, the cut",
        CUT_TAR,
        "",
        TRUNCATED_KEY,
        **_failed("read", "truncated_tar"),
    ),
    Expected(
        "corrupt Parquet file", CORRUPT_PARQUET, "", SHARD_KEY, **_failed("read", "corrupt_parquet")
    ),
    Expected(
        "Parquet without the image column",
        NO_IMAGE_COLUMN_PARQUET,
        "",
        SHARD_KEY,
        **_failed("read", "missing_column"),
    ),
)


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _tar_samples(blue: int) -> list[tuple[str, bytes]]:
    """Three WebDataset samples (jpg, json, txt); `blue` keeps two tars' images apart."""
    members = []
    for i in range(3):
        colour = (200, 40 * i, blue)
        members += [
            (f"{i:09d}.jpg", encode(Image.new("RGB", (8, 8), colour), "JPEG")),
            (f"{i:09d}.json", json.dumps({"index": i}).encode()),
            (f"{i:09d}.txt", f"caption {i}\n".encode()),
        ]
    return members


def _offsets(raw: bytes) -> dict[str, tuple[int, int]]:
    """Member name -> (header offset, data offset)."""
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return {m.name: (m.offset, m.offset_data) for m in tar.getmembers()}


def _files() -> dict[str, bytes]:
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    palette.paste(1, (4, 0, 8, 8))
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": stored 40x20, shown 20x40
    jpeg = encode(noisy(), "JPEG")
    return {
        "empty.jpg": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "text.jpg": b"this is not a picture, just some text in a .jpg\n" * 3,
        "bomb.png": png_declaring(20000, 20000),
        "one-pixel.png": encode(Image.new("RGB", (1, 1), (0, 255, 0)), "PNG"),
        "wide.png": encode(Image.new("RGB", (20000, 8), (0, 255, 0)), "PNG"),
        "cmyk.jpg": encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG"),
        "grey16.png": encode(Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)), "PNG"),
        # Index 0 fully transparent, index 1 half: a tRNS chunk with per-entry alpha.
        "palette-alpha.png": encode(palette, "PNG", transparency=b"\x00\x80"),
        "animated.gif": encode(
            frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50
        ),
        "rotated.jpg": encode(Image.new("RGB", (40, 20), (0, 0, 255)), "JPEG", exif=exif.tobytes()),
        "grey.jpg": encode(Image.new("L", (12, 10), 77), "JPEG"),
        NON_ASCII_NAME: encode(Image.new("RGB", (10, 6), (0, 255, 0)), "PNG"),
    }


def _damaged_tar() -> tuple[bytes, dict[str, bytes]]:
    members = _tar_samples(0)
    raw = bytearray(_tar(members))
    header, _ = _offsets(bytes(raw))["000000001.jpg"]
    raw[header + 148 : header + 156] = b"garbage!"  # the header checksum field
    return bytes(raw), dict(members)


def _truncated_tar() -> tuple[bytes, dict[str, bytes]]:
    members = _tar_samples(200)
    raw = _tar(members)
    _, data = _offsets(raw)["000000002.jpg"]
    return raw[: data + 10], dict(members)  # cut inside the third sample's image


def _cut_tar() -> tuple[bytes, dict[str, bytes]]:
    members = [(name, data) for name, data in _tar_samples(100) if name.endswith(".jpg")]
    raw = _tar(members)
    header, _ = _offsets(raw)["000000002.jpg"]
    return raw[: header + 100], dict(members)  # cut inside the third image's header


def _corrupt_parquet() -> bytes:
    """A real Parquet file whose footer metadata is overwritten; both PAR1 magics are kept."""
    table = pa.table({"key": ["a", "b"], "jpg": [encode(noisy((4, 4)), "PNG")] * 2})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    raw = bytearray(buffer.getvalue())
    footer = int.from_bytes(raw[-8:-4], "little")
    raw[-8 - footer : -8] = b"\xff" * footer
    return bytes(raw)


def _parquet_without_image_column() -> bytes:
    table = pa.table(
        {"key": ["a", "b"], "png": [encode(noisy((4, 4)), "PNG")] * 2, "caption": ["x", "y"]}
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def write_bad_inputs(root: Path) -> dict[tuple[str, str], bytes]:
    """Write every case of EXPECTED into `root`.

    Returns:
        (source file name, member) -> the image bytes as stored, for every entry whose bytes
        were readable (the sha256 a caption row must carry).
    """
    root.mkdir(parents=True, exist_ok=True)
    stored: dict[tuple[str, str], bytes] = {}
    for name, data in _files().items():
        (root / name).write_bytes(data)
        stored[name, name] = data
    for name, (raw, members) in (
        (DAMAGED_TAR, _damaged_tar()),
        (TRUNCATED_TAR, _truncated_tar()),
        (CUT_TAR, _cut_tar()),
    ):
        (root / name).write_bytes(raw)
        stored.update({(name, m): data for m, data in members.items() if m.endswith(".jpg")})
    (root / CORRUPT_PARQUET).write_bytes(_corrupt_parquet())
    (root / NO_IMAGE_COLUMN_PARQUET).write_bytes(_parquet_without_image_column())
    return stored
