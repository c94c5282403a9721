"""Records the shard readers share (Shard, ShardEntry, ReadConfig); read failure -> ShardEntry."""

import json
import logging
from dataclasses import dataclass
from typing import Any

from captioning.errors import CaptioningError

# The readers log under the public module's name, as they did before the split into modules.
logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tiff", ".tif")
TAR_EXTENSIONS = (".tar", ".tar.gz", ".tgz")  # "r|*" streams the compressed ones just as well
PARQUET_EXTENSIONS = (".parquet",)
SHARD_KINDS = ("tar", "parquet", "file")

# Keys of failures that belong to no sample are in angle brackets.
SHARD_KEY = "<shard>"  # the whole file: cannot open, not a tar/parquet, no image column
TRUNCATED_KEY = "<truncated>"  # reading stopped at a cut-off tar
CORRUPT_KEY = "<corrupt>"  # reading stopped at damage it cannot skip (pax header, bad gzip)
UNREADABLE_KEY = "<unreadable>"  # reading stopped on an I/O error


@dataclass(frozen=True, slots=True)
class Shard:
    """One unit of parallel reading.

    Attributes:
        uri: full URL with protocol, e.g. ``"file:///data/shard-00000.tar"``.
        kind: ``"tar"``, ``"parquet"`` or ``"file"`` (a single image from a folder input).
        key: for ``kind="file"``, the sample key ``list_shards`` derived from the input root;
            ``None`` for tar/parquet (and for a hand-built file shard: the basename is used).
    """

    uri: str
    kind: str
    key: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in SHARD_KINDS:
            raise CaptioningError(f"Shard.kind must be one of {SHARD_KINDS}, got {self.kind!r}")


@dataclass(frozen=True, slots=True)
class ShardEntry:
    """One image's bytes plus its sidecars, or a read failure (``data is None``, ``error`` set).

    ``message`` is a one-line human message: the failure reason, or on a successful entry a
    non-fatal note (an unparseable JSON sidecar, extra image members that were ignored).
    """

    key: str
    source: str
    member: str
    data: bytes | None
    caption: str | None
    metadata: dict[str, Any] | None
    error: str | None = None
    message: str | None = None

    @property
    def failed(self) -> bool:
        return self.data is None


@dataclass(frozen=True, slots=True)
class ReadConfig:
    """How to read Parquet shards (tar and folder layouts are fixed by convention)."""

    image_column: str = "jpg"
    caption_column: str = "caption"
    key_column: str = "key"
    parquet_batch_rows: int = 64

    def __post_init__(self) -> None:
        for name in ("image_column", "caption_column", "key_column"):
            if not getattr(self, name):
                raise CaptioningError(f"ReadConfig.{name} must be a non-empty column name")
        if self.parquet_batch_rows < 1:
            raise CaptioningError(
                f"ReadConfig.parquet_batch_rows must be >= 1, got {self.parquet_batch_rows}"
            )


DEFAULT_READ_CONFIG = ReadConfig()


def _failure(
    shard: Shard, key: str, member: str, error: str, message: str, level: int = logging.WARNING
) -> ShardEntry:
    """A failure entry; per-sample reasons that can be frequent log at DEBUG (counters count)."""
    message = _one_line(message)
    logger.log(level, "%s [%s] %s: %s", shard.uri, key, error, message)
    return ShardEntry(key, shard.uri, member, None, None, None, error=error, message=message)


def _one_line(text: str) -> str:
    """Library errors (pyarrow's thrift ones) carry newlines and raw control bytes: one line."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def _caption(raw: bytes | str | None) -> str | None:
    if raw is None:
        return None
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
    return text.strip() or None


def _metadata(raw: bytes | str | None, what: str) -> tuple[dict[str, Any] | None, str | None]:
    """Parse a JSON object; an unparseable one is a note, not a failure of the image."""
    if raw is None:
        return None, None
    try:
        parsed = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"unparseable {what}: {exc}"
    if not isinstance(parsed, dict):
        return None, f"{what} is a JSON {type(parsed).__name__}, not an object"
    return parsed, None
