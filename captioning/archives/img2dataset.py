"""img2dataset's output layouts: a tar -> its sidecar's path; a row img2dataset failed -> failure.

img2dataset (1.47) writes, per shard ``NNNNN`` of its output folder (shard ids zero-padded):

* ``--output_format webdataset``: ``NNNNN.tar`` with ``KEY.jpg``, ``KEY.json`` (the row's metadata)
  and ``KEY.txt`` (the caption) for each sample it downloaded; ``NNNNN.parquet``, the sidecar, with
  one row per sample it *attempted* and no image column; ``NNNNN_stats.json`` with its counts.
* ``--output_format parquet``: ``NNNNN.parquet`` with the same columns plus the image bytes in a
  ``jpg`` column (named by ``--encode_format``), null on the rows it failed; ``NNNNN_stats.json``.
* ``--output_format files``: ``NNNNN/KEY.jpg`` (+ ``.json``, ``.txt``), ``NNNNN.parquet`` as in
  webdataset, ``NNNNN_stats.json``.

Each row has its input columns (``url``, ``caption``, any ``--save_additional_columns``), then
``key``, ``status`` (``"success"``, ``"failed_to_download"``, ``"failed_to_resize"``),
``error_message``, ``width``, ``height``, ``original_width``, ``original_height`` and, by default,
``exif`` and ``sha256``. Counts balance: ``count = successes + failed_to_download +
failed_to_resize``, so a failed row becomes a read failure entry with the status as its error and
img2dataset's error_message as its message, and read = captioned + failed holds against them.
"""

import logging
import posixpath
from typing import Any

from captioning.archives.records import TAR_EXTENSIONS, Shard, ShardEntry, failure_entry

SUCCESS = "success"
# Both columns, side by side, are what tells img2dataset's rows from another table's "status".
STATUS_COLUMNS = ("status", "error_message")
SIDECAR_EXTENSION = ".parquet"


def has_status_columns(columns: list[str]) -> bool:
    """Whether a Parquet file's columns are img2dataset's: ``status`` and ``error_message``."""
    return all(name in columns for name in STATUS_COLUMNS)


def sidecar_path(tar_path: str) -> str | None:
    """``dir/00000.tar`` -> ``dir/00000.parquet``, the sidecar img2dataset writes beside it;
    None for a name that is not a tar's."""
    directory, name = posixpath.split(tar_path)
    lower = name.lower()
    for ext in sorted(TAR_EXTENSIONS, key=len, reverse=True):
        if lower.endswith(ext) and len(name) > len(ext):
            return posixpath.join(directory, name[: -len(ext)] + SIDECAR_EXTENSION)
    return None


def status_failure(
    shard: Shard,
    key: str,
    member: str,
    values: dict[str, Any],
    caption: str | None,
    metadata: dict[str, Any] | None,
) -> ShardEntry | None:
    """The failure entry of a row img2dataset did not download (status other than success), with
    the row's caption and metadata; None for a success row or one without a status."""
    status = values.get("status")
    if status is None or status == SUCCESS:
        return None
    message = values.get("error_message") or f"img2dataset status {status}"
    return failure_entry(
        shard, key, member, str(status), str(message), logging.DEBUG, caption, metadata, "source"
    )
