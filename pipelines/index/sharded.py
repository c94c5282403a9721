"""EmbeddedCaption -> an index directory, built by many workers and never gathered in one: the
Beam shell over indexing.partitions, indexing.shards and indexing.sharded.

Steps (fixed labels), each holding at most one key range, one sample or one list of file names:

- SortKeys, SampleKeys, Boundaries: a fixed-size sample of (source, member, key) cuts the key space
  into ``ranges`` ranges (a side input).
- RangeOfKey, DistinctKeys, RangeNumbers, CountPerRange, GatherCounts, Layout: entries per range,
  repeated keys counted once, so each range knows its first id (RangeLayout, a side input).
- KeyByRange, GroupByRange, WritePartitions: each range is ordered and written by one worker as a
  mapping and an embeddings Parquet partition holding its final ids.
- GatherPartitions, PlanShards: the entry count picks the index type (indexing.ann) and the ids to
  hold out, train on and measure (ShardPlan, a side input).
- ReadSample, GatherSample, TrainTemplate: the vectors of those ids only (a fixed-size sample: at
  most 64 per IVF list, 1,000 held out, 10,000 for the fit), the quantizer trained once, and the
  trained, empty index serialised (a side input).
- FillShards: each worker adds its partition to a copy of the empty index and writes a shard.
- GatherShards, WriteIndex: one worker merges the shards, tunes, streams the partitions into
  mapping.parquet and embeddings.parquet, and moves the directory into place.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.pvalue import AsList, AsSingleton

from indexing.ann import AnnConfig
from indexing.assemble import EmbeddedCaption
from indexing.build import Manifest
from indexing.embed import ResolvedEmbedder, TextEmbedder, resolve_embedder
from indexing.partitions import (
    Partition,
    RangeLayout,
    SortKey,
    range_boundaries,
    range_of,
    read_rows,
    sort_key,
    write_partition,
)
from indexing.sharded import STAGING_DIR, Sample, finish_index
from indexing.shards import SHARDS_DIR, ShardPlan, fill_shard, shard_plan, to_bytes, train_template
from pipelines.index.handler import METRICS_NAMESPACE


@dataclass(frozen=True, slots=True)
class BuildIdentity:
    """What an index's manifest records about where it came from (Manifest's other fields)."""

    embedder: ResolvedEmbedder
    caption_files: tuple[str, ...]
    imgindex_version: str


# Sort keys sampled per range to place the range boundaries (their sizes vary by ~1/sqrt of it).
KEYS_PER_RANGE = 64
MAX_KEY_SAMPLE = 200_000


class WritePartition(beam.DoFn):
    """(range number, its embedded captions) -> the range's Partition, written to staging."""

    def __init__(self, staging: str) -> None:
        self._staging = staging
        self._written = Metrics.counter(METRICS_NAMESPACE, "partitions_written")
        self._duplicates = Metrics.counter(METRICS_NAMESPACE, "skipped_duplicate")

    def process(
        self, element: tuple[int, Iterable[EmbeddedCaption]], layout: RangeLayout
    ) -> Iterator[Partition]:
        number, rows = element
        rows = list(rows)  # one range: about rows_per_partition rows
        dimension = int(rows[0].vector.shape[0])
        partition = write_partition(self._staging, number, layout.first_id(number), rows, dimension)
        self._written.inc()
        self._duplicates.inc(partition.duplicates)
        yield partition


def plan_shards(
    partitions: Sequence[Partition], embedder: ResolvedEmbedder, ann: AnnConfig
) -> ShardPlan:
    """The ShardPlan for every written partition (no partition: the embedder gives D)."""
    count = sum(p.count for p in partitions)
    if partitions:
        dimension = partitions[0].dimension
    else:  # nothing to index: ask the model for its width, as the single-worker build does
        dimension = TextEmbedder(resolve_embedder(embedder.name)).dimension
    return shard_plan(count, dimension, ann)


def read_sample(partition: Partition, shards: ShardPlan) -> Iterator[Sample]:
    """The vectors of the ShardPlan's sample ids that lie in one partition (if any)."""
    ids, vectors = read_rows([partition], shards.sample_ids())
    if len(ids):
        yield Sample(ids, vectors)


def train(parts: list[Sample], shards: ShardPlan) -> tuple[bytes, Sample]:
    """The gathered sample -> (the trained empty index as bytes, the vectors the end needs)."""
    if parts:
        ids = np.concatenate([p.ids for p in parts])  # (S,)
        vectors = np.concatenate([p.vectors for p in parts])  # (S, D)
    else:
        ids, vectors = np.zeros(0, np.int64), np.zeros((0, shards.dimension), np.float32)
    order = np.argsort(ids, kind="stable")  # id order: the single-worker build's training order
    sample = Sample(ids[order], vectors[order])
    template = train_template(shards.plan, shards, sample.ids, sample.vectors)
    return to_bytes(template), sample.subset(shards.final_ids())


class FillShard(beam.DoFn):
    """Partition -> the path of its shard of the trained empty index (none for hnsw, ivf-pq)."""

    def __init__(self, staging: str) -> None:
        self._staging = staging
        self._written = Metrics.counter(METRICS_NAMESPACE, "shards_written")

    def process(
        self, partition: Partition, shards: ShardPlan, trained: tuple[bytes, Sample]
    ) -> Iterator[str]:
        if not shards.sharded:
            return
        path = Path(self._staging) / SHARDS_DIR / f"shard-{partition.number:05d}.faiss"
        fill_shard(trained[0], partition, shards.holdout, path)
        self._written.inc()
        yield str(path)


class FinishIndex(beam.DoFn):
    """The shard paths -> the index directory (indexing.sharded.finish_index) -> its Manifest."""

    def __init__(self, work_dir: str, out_dir: str, overwrite: bool, identity: BuildIdentity,
                 ann: AnnConfig) -> None:  # fmt: skip
        self._work_dir = work_dir
        self._out_dir = out_dir
        self._overwrite = overwrite
        self._identity = identity
        self._ann = ann
        self._indexed = Metrics.counter(METRICS_NAMESPACE, "captions_indexed")

    def process(
        self,
        shard_paths: list[str],
        partitions: list[Partition],
        shards: ShardPlan,
        trained: tuple[bytes, Sample],
    ) -> Iterator[Manifest]:
        partitions = sorted(partitions, key=lambda p: p.number)  # ids increasing
        identity = self._identity
        manifest = Manifest(
            embedder_name=identity.embedder.name,
            embedder_sha256=identity.embedder.sha256,
            dimension=shards.dimension,
            count=shards.count,
            caption_files=identity.caption_files,
            imgindex_version=identity.imgindex_version,
        )
        written = finish_index(
            Path(self._work_dir), Path(self._out_dir), self._overwrite, shards, partitions,
            sorted(shard_paths), trained[0], trained[1], manifest, self._ann,
        )  # fmt: skip
        self._indexed.inc(written.count)
        yield written


def _range_of(key: SortKey, boundaries: tuple[SortKey, ...]) -> tuple[int, SortKey]:
    return range_of(key, boundaries), key


def _keyed_by_range(
    item: EmbeddedCaption, boundaries: tuple[SortKey, ...]
) -> tuple[int, EmbeddedCaption]:
    return range_of(sort_key(item.caption), boundaries), item


class BuildShardedIndex(beam.PTransform):
    """EmbeddedCaption -> the single Manifest of the index written to out_dir (module docstring).

    Args:
        work_dir: indexing.sharded.work_dir_for(out_dir); the caller removes it if the job fails.
        out_dir: the index directory (local disk, or a filesystem every worker shares).
        overwrite: replace an existing index at out_dir.
        ranges: how many key ranges (partitions) to cut the rows into.
        identity: what the manifest records besides the index: embedder, caption files, version.
        ann: the index type, budget and target recall.
    """

    def __init__(self, work_dir: str, out_dir: str, overwrite: bool, ranges: int,
                 identity: BuildIdentity, ann: AnnConfig) -> None:  # fmt: skip
        super().__init__()
        self._work_dir = work_dir
        self._staging = str(Path(work_dir) / STAGING_DIR)
        self._out_dir = out_dir
        self._overwrite = overwrite
        self._ranges = ranges
        self._identity = identity
        self._ann = ann

    def _layout(self, keys: beam.PCollection, boundaries: AsSingleton) -> beam.PCollection:
        return (
            keys
            | "RangeOfKey" >> beam.Map(_range_of, boundaries)
            | "DistinctKeys" >> beam.Distinct()
            | "RangeNumbers" >> beam.Map(lambda numbered: numbered[0])
            | "CountPerRange" >> beam.combiners.Count.PerElement()
            | "GatherCounts" >> beam.combiners.ToList()
            | "Layout" >> beam.Map(RangeLayout.from_counts)
        )

    def expand(self, embedded: beam.PCollection) -> beam.PCollection:
        keys = embedded | "SortKeys" >> beam.Map(lambda item: sort_key(item.caption))
        sample_size = min(MAX_KEY_SAMPLE, KEYS_PER_RANGE * self._ranges)
        boundaries = AsSingleton(
            keys
            | "SampleKeys" >> beam.combiners.Sample.FixedSizeGlobally(sample_size)
            | "Boundaries" >> beam.Map(range_boundaries, self._ranges)
        )
        layout = AsSingleton(self._layout(keys, boundaries))
        partitions = (
            embedded
            | "KeyByRange" >> beam.Map(_keyed_by_range, boundaries)
            | "GroupByRange" >> beam.GroupByKey()
            | "WritePartitions" >> beam.ParDo(WritePartition(self._staging), layout)
        )
        shards = AsSingleton(
            partitions
            | "GatherPartitions" >> beam.combiners.ToList()
            | "PlanShards" >> beam.Map(plan_shards, self._identity.embedder, self._ann)
        )
        trained = AsSingleton(
            partitions
            | "ReadSample" >> beam.FlatMap(read_sample, shards)
            | "GatherSample" >> beam.combiners.ToList()
            | "TrainTemplate" >> beam.Map(train, shards)
        )
        return (
            partitions
            | "FillShards" >> beam.ParDo(FillShard(self._staging), shards, trained)
            | "GatherShards" >> beam.combiners.ToList()
            | "WriteIndex"
            >> beam.ParDo(
                FinishIndex(
                    self._work_dir, self._out_dir, self._overwrite, self._identity, self._ann
                ),
                AsList(partitions),
                shards,
                trained,
            )  # fmt: skip
        )
