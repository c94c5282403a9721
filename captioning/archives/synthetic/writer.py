"""World images -> an archive on any fsspec URL: a folder, WebDataset tar shards, or Parquet files.

Layouts (the ones img2dataset writes, so our readers are tested on what users have):
* folder:  OUT/KEY.<ext>, OUT/KEY.json, OUT/KEY.txt
* tar:     OUT/shard-00000.tar with members KEY.<ext>, KEY.json, KEY.txt, consecutive per key
* parquet: OUT/shard-00000.parquet, one row per image: key, jpg (the encoded bytes, whatever the
           format: img2dataset's column name), ext, caption, json (the sidecar), width, height
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from captioning.archives.synthetic.world import IMAGE_FORMATS, WorldImage, generate_image
from captioning.errors import CaptioningError

logger = logging.getLogger(__name__)

FORMATS = ("folder", "tar", "parquet")
PARQUET_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("jpg", pa.binary()),
        ("ext", pa.string()),
        ("caption", pa.string()),
        ("json", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)


@dataclass(frozen=True, slots=True)
class ArchiveConfig:
    images: int
    shards: int = 1
    seed: int = 0
    format: str = "tar"
    workers: int = 2
    start: int = 0  # index of the first image: archives with other starts never share keys
    image_format: str | None = None  # None: each image's drawn format (JPEG, PNG or WebP)

    def __post_init__(self) -> None:
        if self.images < 1:
            raise CaptioningError(f"--images must be at least 1, got {self.images}")
        if not 1 <= self.shards <= self.images:
            raise CaptioningError(f"--shards must be between 1 and --images, got {self.shards}")
        if self.format not in FORMATS:
            raise CaptioningError(
                f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}"
            )
        if self.workers < 1:
            raise CaptioningError(f"--workers must be at least 1, got {self.workers}")
        if self.image_format is not None and self.image_format not in IMAGE_FORMATS:
            raise CaptioningError(
                f"--image-format must be one of {', '.join(IMAGE_FORMATS)}, "
                f"got {self.image_format!r}"
            )


def _generate(args: tuple[int, int, str | None]) -> WorldImage:
    return generate_image(*args)


def generate_images(config: ArchiveConfig) -> Iterator[WorldImage]:
    """Images in key order, rendered on `workers` processes."""
    args = [(config.seed, config.start + i, config.image_format) for i in range(config.images)]
    if config.workers == 1:
        yield from map(_generate, args)
        return
    with ProcessPoolExecutor(config.workers) as pool:
        yield from pool.map(_generate, args, chunksize=16)


def _shard_of(i: int, config: ArchiveConfig) -> int:
    return i * config.shards // config.images


def _commit(fs: fsspec.AbstractFileSystem, tmp: str, final: str) -> None:
    fs.mv(tmp, final)


def write_archive(out: str, config: ArchiveConfig) -> list[str]:
    """Generate and write the archive; returns the files written (URLs or paths)."""
    fs, root = fsspec.core.url_to_fs(out)
    fs.makedirs(root, exist_ok=True)
    written: list[str] = []
    images = generate_images(config)
    if config.format == "folder":
        for img in images:
            for name, data in _sidecars(img):
                with fs.open(f"{root}/{name}", "wb") as f:
                    f.write(data)
            written.append(f"{root}/{img.key}.{img.extension}")
        return written

    ext = "tar" if config.format == "tar" else "parquet"
    current, writer, tmp_path = -1, None, ""
    for i, img in enumerate(images):
        shard = _shard_of(i, config)
        if shard != current:
            if writer is not None:
                writer.close()
                _commit(fs, tmp_path, written[-1])
            current = shard
            final = f"{root}/shard-{shard:05d}.{ext}"
            tmp_path = f"{root}/.shard-{shard:05d}.{ext}.tmp"
            written.append(final)
            writer = _TarShard(fs, tmp_path) if ext == "tar" else _ParquetShard(fs, tmp_path)
        assert writer is not None
        writer.add(img)
    if writer is not None:
        writer.close()
        _commit(fs, tmp_path, written[-1])
    logger.info("wrote %d images to %d %s shards under %s", config.images, len(written), ext, out)
    return written


def _sidecars(img: WorldImage) -> list[tuple[str, bytes]]:
    return [
        (f"{img.key}.{img.extension}", img.data),
        (f"{img.key}.json", json.dumps(img.annotation()).encode()),
        (f"{img.key}.txt", img.caption.encode()),
    ]


class _TarShard:
    def __init__(self, fs: fsspec.AbstractFileSystem, path: str):
        self._file = fs.open(path, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)

    def add(self, img: WorldImage) -> None:
        for name, data in _sidecars(img):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0  # reproducible bytes for a seed
            self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()
        self._file.close()


class _ParquetShard:
    ROWS_PER_GROUP = 256

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str):
        self._file = fs.open(path, "wb")
        self._writer = pq.ParquetWriter(self._file, PARQUET_SCHEMA)
        self._rows: list[dict] = []

    def add(self, img: WorldImage) -> None:
        self._rows.append(
            {
                "key": img.key,
                "jpg": img.data,
                "ext": img.extension,
                "caption": img.caption,
                "json": json.dumps(img.annotation()),
                "width": img.scene.width,
                "height": img.scene.height,
            }
        )
        if len(self._rows) >= self.ROWS_PER_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=PARQUET_SCHEMA))
            self._rows = []

    def close(self) -> None:
        self._flush()
        self._writer.close()
        self._file.close()
