"""Typed records that flow between pipeline stages, and the Parquet schemas they are written with.

Every listed image ends as exactly one CaptionRow or one FailureRow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

STAGES = ("read", "decode", "caption")


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
    ]
)


@dataclass(frozen=True, slots=True)
class FailureRow:
    key: str
    source: str
    member: str
    stage: str  # read | decode | caption
    error_type: str  # a short stable code: truncated, decompression_bomb, corrupt_tar, ...
    message: str  # one human line
    run_id: str

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
    ]
)
