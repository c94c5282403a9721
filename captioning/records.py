"""Typed records that flow between pipeline stages, and the Parquet schemas they are written with.

Every listed image ends as exactly one CaptionRow or one FailureRow. Both carry what the source
said about the image (``captioning.archives.records.SourceFields``), so a row links back to where
the image came from: ``url``, ``alt_text`` (the source's own caption, e.g. img2dataset's original
alt text) and ``metadata`` (a JSON object of the source's other fields); each null when unknown.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

# "source": the archive's maker never got the image (img2dataset's failed downloads); such rows
# keep read == captioned + failed against the maker's own counts but are not our failures.
STAGES = ("source", "read", "decode", "caption")


@dataclass(frozen=True, slots=True)
class ImageInput:
    """A decoded image on its way to the model: `inputs` is the backend's preprocessed tensor."""

    key: str
    source: str
    member: str
    sha256: str
    width: int
    height: int
    format: str
    inputs: Any
    url: str | None = None
    alt_text: str | None = None
    metadata: str | None = None  # JSON object


@dataclass(frozen=True, slots=True)
class CaptionRow:
    key: str
    source: str  # URI of the shard or file
    member: str  # tar member / relative path / parquet row
    sha256: str  # of the image bytes as stored
    width: int
    height: int
    format: str
    caption: str
    candidates: list[str]  # every returned sequence, best first
    model: str
    model_version: str
    run_id: str
    captioned_at: str  # ISO-8601 UTC
    url: str | None = None  # where the source says the image came from
    alt_text: str | None = None  # the source's own caption, never the model's
    metadata: str | None = None  # JSON object of the source's other fields

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


CAPTION_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source", pa.string()),
        ("member", pa.string()),
        ("sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("format", pa.string()),
        ("caption", pa.string()),
        ("candidates", pa.list_(pa.string())),
        ("model", pa.string()),
        ("model_version", pa.string()),
        ("run_id", pa.string()),
        ("captioned_at", pa.string()),
        ("url", pa.string()),
        ("alt_text", pa.string()),
        ("metadata", pa.string()),
    ]
)


@dataclass(frozen=True, slots=True)
class FailureRow:
    key: str
    source: str
    member: str
    stage: str  # source | read | decode | caption (STAGES)
    error_type: str  # a short stable code: truncated, decompression_bomb, corrupt_tar, ...
    message: str  # one human line
    run_id: str
    url: str | None = None
    alt_text: str | None = None
    metadata: str | None = None  # JSON object

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FAILURE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source", pa.string()),
        ("member", pa.string()),
        ("stage", pa.string()),
        ("error_type", pa.string()),
        ("message", pa.string()),
        ("run_id", pa.string()),
        ("url", pa.string()),
        ("alt_text", pa.string()),
        ("metadata", pa.string()),
    ]
)
