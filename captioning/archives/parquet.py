"""Parquet Shard (any fsspec URL) -> ShardEntry per row, streamed one row group/batch at a time.

A file with img2dataset's ``status`` and ``error_message`` columns is img2dataset's: a row whose
status is not ``"success"`` is a failure entry with that status and message. Such a file without
an image column is a sidecar (webdataset and files layouts): only its failed rows are entries,
because its downloaded samples are the images beside it.
"""

import logging
import posixpath
from collections.abc import Iterator
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from captioning.archives.img2dataset import has_status_columns, status_failure
from captioning.archives.records import (
    CORRUPT_KEY,
    SHARD_KEY,
    ReadConfig,
    Shard,
    ShardEntry,
    failure_entry,
    parse_metadata,
    sidecar_caption,
)

# The readers log under the public module's name, as they did before the split into modules.
logger = logging.getLogger(__name__)


def _is_binary(type_: pa.DataType) -> bool:
    return (
        pa.types.is_binary(type_)
        or pa.types.is_large_binary(type_)
        or pa.types.is_fixed_size_binary(type_)
        or pa.types.is_binary_view(type_)
    )


def iter_parquet(shard: Shard, config: ReadConfig, sidecar: bool = False) -> Iterator[ShardEntry]:
    """Stream a Parquet shard's rows; damage becomes failure entries (see ``iter_shard``).

    Args:
        sidecar: the file is a tar's sidecar: without an image column and without img2dataset's
            status columns it holds nothing to read, which is no failure.
    """
    stem = posixpath.basename(shard.uri).rsplit(".", 1)[0]
    try:
        f = fsspec.open(shard.uri, "rb").open()
    except OSError as exc:
        yield failure_entry(shard, SHARD_KEY, "", "read_error", f"cannot open {shard.uri}: {exc}")
        return
    with f:
        try:
            parquet = pq.ParquetFile(f)
            schema = parquet.schema_arrow
        except (pa.ArrowException, OSError) as exc:
            yield failure_entry(
                shard, SHARD_KEY, "", "corrupt_parquet", f"not a readable parquet: {exc}"
            )
            return
        image = config.image_column
        img2dataset = has_status_columns(schema.names)
        if image not in schema.names and img2dataset:
            # img2dataset's metadata: the images it downloaded are in the tar or folder beside it.
            yield from _parquet_rows(shard, parquet, schema, config, stem, images=False)
            return
        if image not in schema.names and sidecar:
            logger.debug("%s: no image column, no img2dataset status: nothing to read", shard.uri)
            return
        if image not in schema.names:
            message = (
                f"no image column {image!r}; columns are {schema.names}: "
                "select another with --image-column"
            )
            yield failure_entry(shard, SHARD_KEY, "", "missing_column", message)
            return
        if not _is_binary(schema.field(image).type):
            message = f"image column {image!r} holds {schema.field(image).type}, not bytes"
            yield failure_entry(shard, SHARD_KEY, "", "bad_column_type", message)
            return
        yield from _parquet_rows(shard, parquet, schema, config, stem, images=True)


def _parquet_rows(
    shard: Shard,
    parquet: pq.ParquetFile,
    schema: pa.Schema,
    config: ReadConfig,
    stem: str,
    images: bool,
) -> Iterator[ShardEntry]:
    """Every row as an entry; with `images` False (a sidecar) only the rows img2dataset failed."""
    named = (config.image_column, config.key_column, config.caption_column, "json")
    # Other scalar columns become metadata; other binary columns (a second image) are not read.
    extras = [f.name for f in schema if f.name not in named and not _is_binary(f.type)]
    columns = [c for c in named if c in schema.names] + extras
    img2dataset = has_status_columns(schema.names)
    row = 0
    # One row group at a time, so a damaged group costs its own rows (as failures) and no more.
    for group in range(parquet.metadata.num_row_groups):
        group_end = row + parquet.metadata.row_group(group).num_rows
        batches = parquet.iter_batches(
            batch_size=config.parquet_batch_rows, row_groups=[group], columns=columns
        )
        while True:
            try:
                batch = next(batches, None)
                rows = None if batch is None else batch.to_pylist()
            except (pa.ArrowException, OSError) as exc:
                message = f"row group {group} is unreadable: {exc}"
                logger.warning("%s: rows %d-%d: %s", shard.uri, row, group_end - 1, message)
                if not images:
                    # Which of a sidecar's lost rows img2dataset failed is unknown (the others
                    # are images beside it): one failure stands for them.
                    lost_rows = f"rows {row}-{group_end - 1}: {message}"
                    yield failure_entry(shard, CORRUPT_KEY, "", "corrupt_parquet", lost_rows)
                    break
                for lost in range(row, group_end):
                    key, member = f"{stem}-{lost:09d}", f"row {lost}"
                    yield failure_entry(
                        shard, key, member, "corrupt_parquet", message, logging.DEBUG
                    )
                break
            if rows is None:
                break
            for values in rows:
                entry = _parquet_entry(
                    shard, values, row, stem, config, extras, images, img2dataset
                )
                if entry is not None:
                    yield entry
                row += 1
        row = max(row, group_end)


def _parquet_entry(
    shard: Shard,
    values: dict[str, Any],
    row: int,
    stem: str,
    config: ReadConfig,
    extras: list[str],
    images: bool,
    img2dataset: bool,
) -> ShardEntry | None:
    key_value = values.get(config.key_column)
    key = str(key_value) if key_value is not None else f"{stem}-{row:09d}"
    member = f"row {row}"
    metadata: dict[str, Any] | None = {name: values[name] for name in extras} or None
    parsed, note = parse_metadata(values.get("json"), "'json' column")
    if parsed is not None:
        metadata = {**(metadata or {}), **parsed}
    caption = sidecar_caption(values.get(config.caption_column))
    failed = status_failure(shard, key, member, values, caption, metadata) if img2dataset else None
    if failed is not None or not images:
        return failed  # a sidecar's success row: its image is read from beside the sidecar
    data = values[config.image_column]
    if data is None:
        message = f"null {config.image_column!r}"
        return failure_entry(
            shard, key, member, "missing_image", message, logging.DEBUG, caption, metadata
        )
    return ShardEntry(key, shard.uri, member, data, caption, metadata, message=note)
