"""Records the shard readers share (Shard, ShardEntry, ReadConfig, SourceFields); read failure ->
ShardEntry; ShardEntry -> the source's own fields as the tables store them (source_fields)."""

import json
import logging
import math
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
        sidecar: for ``kind="tar"``, the URL of the same-stem ``.parquet`` beside it (img2dataset
            writes ``00000.tar`` with a ``00000.parquet`` of every sample it attempted); it is read
            after the tar, for the rows the tar lacks (see ``iter_shard``). ``None``: no sidecar.
    """

    uri: str
    kind: str
    key: str | None = None
    sidecar: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in SHARD_KINDS:
            raise CaptioningError(f"Shard.kind must be one of {SHARD_KINDS}, got {self.kind!r}")
        if self.sidecar is not None and self.kind != "tar":
            raise CaptioningError(f"only a tar shard has a sidecar, not a {self.kind} shard")


@dataclass(frozen=True, slots=True)
class ShardEntry:
    """One image's bytes plus its sidecars, or a read failure (``data is None``, ``error`` set).

    ``caption`` is the source's own caption (a ``.txt`` sidecar, the caption column: for
    img2dataset the original alt text) and ``metadata`` the source's other fields (a ``.json``
    sidecar, the other scalar columns); a failure the source itself recorded (an img2dataset row
    whose download failed) keeps both. ``message`` is a one-line human message: the failure
    reason, or on a successful entry a non-fatal note (an unparseable JSON sidecar, extra image
    members that were ignored).
    """

    key: str
    source: str
    member: str
    data: bytes | None
    caption: str | None
    metadata: dict[str, Any] | None
    error: str | None = None
    message: str | None = None
    # The stage a failure belongs to: "read" (we could not read it) or "source" (the archive's
    # maker never got the image: an img2dataset row whose download failed).
    stage: str = "read"

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


@dataclass(frozen=True, slots=True)
class SourceFields:
    """What the source says about an image besides its bytes, as the tables store it.

    Attributes:
        url: where the image came from: the ``url`` field of its metadata (img2dataset's).
        alt_text: the source's own caption: the ``.txt`` sidecar or caption column, else the
            metadata's ``caption`` (img2dataset: the original alt text, never our caption).
        metadata: a JSON object of the remaining metadata fields (img2dataset: status,
            error_message, width, height, original_width, original_height, exif, sha256 and any
            --save_additional_columns), keys sorted, null fields left out; None when none are
            left. Fields that have their own column are left out when they say the same (url,
            caption, the key).
    """

    url: str | None
    alt_text: str | None
    metadata: str | None


def source_fields(entry: ShardEntry) -> SourceFields:
    """An entry's url, alt text and remaining metadata (see SourceFields)."""
    meta = dict(entry.metadata or {})
    raw_url = meta.pop("url", None)
    url = (raw_url.strip() or None) if isinstance(raw_url, str) else None
    if raw_url is not None and not isinstance(raw_url, str):
        meta["url"] = raw_url  # not a link: keep it as it was given
    raw_caption = meta.get("caption")
    listed = sidecar_caption(raw_caption) if isinstance(raw_caption, str) else None
    alt_text = entry.caption if entry.caption is not None else listed
    if raw_caption is None or (listed is not None and listed == alt_text):
        meta.pop("caption", None)
    if "key" in meta and str(meta["key"]) == entry.key:
        del meta["key"]
    meta = {name: value for name, value in meta.items() if value is not None}
    if not meta:
        return SourceFields(url, alt_text, None)
    metadata = json.dumps(
        _jsonable(meta), sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(",", ":")
    )
    return SourceFields(url, alt_text, metadata)


def _jsonable(value: Any) -> Any:
    """Parquet values (dates, decimals, NaN) -> what strict JSON holds; other types as text."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int | bool):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def failure_entry(
    shard: Shard,
    key: str,
    member: str,
    error: str,
    message: str,
    level: int = logging.WARNING,
    caption: str | None = None,
    metadata: dict[str, Any] | None = None,
    stage: str = "read",
) -> ShardEntry:
    """A failure entry; per-sample reasons that can be frequent log at DEBUG (counters count)."""
    message = _one_line(message)
    logger.log(level, "%s [%s] %s: %s", shard.uri, key, error, message)
    return ShardEntry(
        key, shard.uri, member, None, caption, metadata, error=error, message=message, stage=stage
    )


def _one_line(text: str) -> str:
    """Library errors (pyarrow's thrift ones) carry newlines and raw control bytes: one line."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def sidecar_caption(raw: bytes | str | None) -> str | None:
    if raw is None:
        return None
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
    return text.strip() or None


def parse_metadata(raw: bytes | str | None, what: str) -> tuple[dict[str, Any] | None, str | None]:
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
