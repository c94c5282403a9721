"""Embedded captions of one key range -> a Parquet partition (mapping rows and embeddings, with
their final ids), and the key ranges and offsets that give each partition its ids.

The sharded build (indexing.shards, indexing.sharded, pipelines.index.sharded) gives every entry
the id the single-worker build gives it, its rank in (source, member, key, caption) order after
duplicate (source, member, key) rows are dropped (indexing.assemble.assemble_index), without one
worker ever sorting every row: a sample of sort keys cuts the key space into ranges
(range_boundaries), rows are routed to their range (range_of), each range is counted once its
duplicates are dropped, and the counts of the ranges below a range are its first id
(RangeLayout). A range is ordered and written by one worker (write_partition), so a partition
holds ids first_id .. first_id + count - 1 in order; concatenating the partitions in range order
(concat_partitions) gives the single-worker mapping and embeddings tables.

Layout of a partition, under a staging folder: ``mapping/part-RRRRR.parquet`` (MAPPING_SCHEMA)
and ``embeddings/part-RRRRR.parquet`` (embeddings_schema(D)), each written to a temporary name
and renamed, so a retried worker replaces its partition instead of adding one.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexing.assemble import CaptionText, EmbeddedCaption, assemble_index
from indexing.build import MAPPING_SCHEMA, UNIT_NORM_TOLERANCE, IndexEntry, embeddings_schema
from indexing.errors import IndexingError

logger = logging.getLogger(__name__)

MAPPING_PARTS = "mapping"
EMBEDDINGS_PARTS = "embeddings"
# Rows per Parquet row group read back while streaming partitions (~1.5 MB of vectors at D=384).
READ_BATCH_ROWS = 1024

SortKey = tuple[str, str, str]  # (source, member, key): what identifies an entry


class PartitionWriteError(IndexingError):
    """A partition or shard file could not be written (disk full, no permission, ...)."""


def sort_key(caption: CaptionText) -> SortKey:
    """The key a caption's entry is identified and ordered by (assemble_index's order)."""
    return (caption.source, caption.member, caption.key)


def range_boundaries(sample: Iterable[SortKey], ranges: int) -> tuple[SortKey, ...]:
    """Cut points that split the key space into at most ``ranges`` ranges of similar size.

    Args:
        sample: sort keys drawn at random from the collection (any order, repeats allowed).
        ranges: how many ranges are wanted (>= 1).

    Returns:
        Sorted, distinct keys; range r holds the keys k with boundaries[r-1] <= k < boundaries[r]
        (range_of). Fewer than ranges - 1 of them when the sample has fewer distinct keys.
    """
    if ranges < 1:
        raise ValueError(f"ranges must be >= 1, got {ranges}")
    keys = sorted(set(sample))
    if ranges == 1 or not keys:
        return ()
    cuts = {keys[len(keys) * r // ranges] for r in range(1, ranges)}
    return tuple(sorted(cuts - {keys[0]}))  # keys[0] as a cut would only leave range 0 empty


def range_of(key: SortKey, boundaries: Sequence[SortKey]) -> int:
    """The range number (0 .. len(boundaries)) that ``key`` belongs to."""
    return bisect.bisect_right(boundaries, key)


@dataclass(frozen=True, slots=True)
class RangeLayout:
    """How many entries each key range holds once its duplicates are dropped.

    Attributes:
        counts: entries of range r at counts[r] (0 for a range no row fell into).
    """

    counts: tuple[int, ...]

    @classmethod
    def from_counts(cls, counts: Iterable[tuple[int, int]]) -> RangeLayout:
        """(range number, entry count) pairs, in any order and with empty ranges left out."""
        by_range = dict(counts)
        if any(r < 0 or c < 0 for r, c in by_range.items()):
            raise ValueError(f"range numbers and counts must be >= 0, got {by_range}")
        size = max(by_range, default=-1) + 1
        return cls(tuple(by_range.get(r, 0) for r in range(size)))

    @property
    def total(self) -> int:
        """Entries in all ranges: the index's N."""
        return sum(self.counts)

    def first_id(self, number: int) -> int:
        """The id of range ``number``'s first entry: the entries of every range below it."""
        return sum(self.counts[:number])


@dataclass(frozen=True, slots=True)
class Partition:
    """One written partition: range number, ids first_id .. first_id + count - 1, the files."""

    number: int
    first_id: int
    count: int
    dimension: int
    mapping_path: str
    embeddings_path: str
    duplicates: int = 0  # rows of the range dropped because their (source, member, key) repeats


def partition_name(number: int) -> str:
    return f"part-{number:05d}.parquet"


def mapping_table(ids: np.ndarray, entries: Sequence[IndexEntry]) -> pa.Table:
    """int64 (N,) ids + the entries (their own ids ignored) -> a MAPPING_SCHEMA table."""
    columns = {
        name: [getattr(e, name) for e in entries] for name in MAPPING_SCHEMA.names if name != "id"
    }
    return pa.table({"id": ids, **columns}, schema=MAPPING_SCHEMA)


def embeddings_table(ids: np.ndarray, keys: Sequence[str], vectors: np.ndarray) -> pa.Table:
    """int64 (N,) ids, N keys and float32 (N, D) vectors -> an embeddings_schema(D) table."""
    flat = pa.array(vectors.reshape(-1), type=pa.float32())  # (N, D) -> (N*D,)
    embedding = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])  # (N*D,) -> N x [D]
    return pa.table(
        {"id": ids, "key": list(keys), "embedding": embedding},
        schema=embeddings_schema(vectors.shape[1]),
    )


def _check_vectors(vectors: np.ndarray, number: int) -> None:
    if not np.isfinite(vectors).all():
        raise ValueError(f"partition {number}: vectors contain NaN or inf")
    norms = np.linalg.norm(vectors, axis=1)  # (N, D) -> (N,)
    if len(norms) and np.abs(norms - 1.0).max() > UNIT_NORM_TOLERANCE:
        raise ValueError(
            f"partition {number}: vectors must be unit-norm (cosine as inner product), one has "
            f"norm {norms[np.argmax(np.abs(norms - 1.0))]:.4f}: use TextEmbedder.embed"
        )


def _write_atomically(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):  # e.g. its folder could not be made either
            tmp.unlink(missing_ok=True)
        raise PartitionWriteError(f"could not write {path}: {err}") from err


def write_partition(
    staging: str | os.PathLike[str],
    number: int,
    first_id: int,
    embedded: Iterable[EmbeddedCaption],
    dimension: int,
) -> Partition:
    """Order one range's embedded captions, drop repeated keys, and write its partition.

    Args:
        staging: the staging folder (local disk, or a folder every worker shares).
        number: the range number.
        first_id: RangeLayout.first_id(number).
        embedded: every embedded caption routed to this range, in any order.
        dimension: vector width D.

    Raises:
        PartitionWriteError: a file could not be written.
    """
    assembled = assemble_index(embedded, dimension)  # ids 0 .. n-1 in the single-worker order
    count = len(assembled.entries)
    ids = np.arange(first_id, first_id + count, dtype=np.int64)  # (n,)
    _check_vectors(assembled.vectors, number)
    root = Path(staging)
    mapping_path = root / MAPPING_PARTS / partition_name(number)
    embeddings_path = root / EMBEDDINGS_PARTS / partition_name(number)
    _write_atomically(mapping_table(ids, assembled.entries), mapping_path)
    keys = [e.key for e in assembled.entries]
    _write_atomically(embeddings_table(ids, keys, assembled.vectors), embeddings_path)
    return Partition(
        number=number,
        first_id=first_id,
        count=count,
        dimension=dimension,
        mapping_path=str(mapping_path),
        embeddings_path=str(embeddings_path),
        duplicates=assembled.duplicates,
    )


def read_vectors(
    partition: Partition, batch_rows: int = READ_BATCH_ROWS
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream a partition's embeddings: (int64 (B,) ids, float32 (B, D) vectors) per batch."""
    source = pq.ParquetFile(partition.embeddings_path)
    for batch in source.iter_batches(batch_size=batch_rows, columns=["id", "embedding"]):
        ids = batch.column(0).to_numpy().astype(np.int64, copy=False)  # (B,)
        flat = batch.column(1).flatten().to_numpy()  # (B*D,)
        yield ids, flat.reshape(len(ids), partition.dimension).astype(np.float32, copy=False)


def read_rows(partitions: Iterable[Partition], wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The vectors of the ``wanted`` ids (sorted int64), read by streaming the partitions.

    Returns:
        int64 (W,) ids in increasing order and float32 (W, D) vectors, row i for ids[i].
    """
    found_ids: list[np.ndarray] = []
    found: list[np.ndarray] = []
    dimension = 0
    for partition in partitions:
        dimension = partition.dimension
        first = int(np.searchsorted(wanted, partition.first_id))
        if first == len(wanted) or wanted[first] >= partition.first_id + partition.count:
            continue  # none of the wanted ids lies in this partition: not read
        for ids, vectors in read_vectors(partition):
            keep = np.isin(ids, wanted, assume_unique=True)  # (B,)
            found_ids.append(ids[keep])
            found.append(vectors[keep])  # (B, D) -> (b, D)
    if not found:
        return np.zeros(0, dtype=np.int64), np.zeros((0, dimension), dtype=np.float32)
    ids = np.concatenate(found_ids)  # (W,)
    order = np.argsort(ids, kind="stable")
    return ids[order], np.ascontiguousarray(np.concatenate(found)[order])  # (W, D)


def concat_partitions(paths: Iterable[str], schema: pa.Schema, out: Path) -> int:
    """Copy the tables at ``paths``, in order, into one Parquet file, one row group at a time.

    Returns:
        The rows written.
    """
    rows = 0
    with pq.ParquetWriter(out, schema) as writer:
        for path in paths:
            source = pq.ParquetFile(path)
            for group in range(source.num_row_groups):
                table = source.read_row_group(group).cast(schema)
                writer.write_table(table)
                rows += table.num_rows
    return rows
