"""Caption Parquet files (CAPTION_SCHEMA, under OUT/captions/) -> one FAISS index directory.

The Beam shell is ReadCaptions -> ToCaptionText -> EmbedCaptions (pipelines.index.dedupe: each
distinct caption text embedded once per job), then one of two builds that write the same index
(same ids, vectors, index type, tuned parameters and search results):

- parallel (BuildIndex, pipelines.index.sharded): key-range partitions written by many workers,
  the quantizer trained once on a sample, shards filled by the workers and merged; no step holds
  every vector or caption. Used from PARALLEL_MIN_ROWS caption rows (IndexConfig.parallel).
- single-worker: GatherEmbeddings (ToList) -> WriteIndex, which holds every vector and caption in
  one worker (indexing.assemble.write_embedded_index); for small collections, where the
  parallel build's extra shuffles and files cost more than they save.

The work is done by indexing.assemble, build, ann, partitions, shards and sharded (tested without
Beam).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import ReadFromParquet
from apache_beam.metrics import Metrics
from apache_beam.runners.runner import PipelineState

from indexing.ann import AUTO, DEFAULT_TARGET_RECALL, AnnConfig, parse_size
from indexing.assemble import (
    DETAIL_COLUMNS,
    INDEX_COLUMNS,
    INTEGER_COLUMNS,
    SOURCE_COLUMNS,
    CaptionText,
    EmbeddedCaption,
    caption_text,
    write_embedded_index,
)
from indexing.build import MANIFEST_FILE, Manifest, check_index_target
from indexing.embed import DEFAULT_EMBEDDER, ResolvedEmbedder, resolve_embedder
from indexing.sharded import remove_work_dir, work_dir_for
from pipelines import imgindex_version
from pipelines.errors import UsageError
from pipelines.index.dedupe import EmbedDistinctTexts
from pipelines.index.handler import TextEmbeddingHandler
from pipelines.index.sharded import BuildIdentity, BuildShardedIndex
from pipelines.options import pipeline_options

logger = logging.getLogger(__name__)

CAPTIONS_SUBDIR = "captions"  # where the caption pipeline writes its Parquet files under OUT
METRICS_NAMESPACE = "imgindex.index"
# Caption rows (read from the files' footers) from which the parallel build is used by default.
PARALLEL_MIN_ROWS = 50_000
# Rows per key range of the parallel build: what one worker orders, writes and fills a shard from.
ROWS_PER_PARTITION = 50_000


@dataclass(frozen=True)
class IndexConfig:
    """What to index and where.

    Attributes:
        captions_dir: the caption run's output folder (holding captions/*.parquet) or that
            captions folder itself; a local path or any URL Beam's FileSystems can read.
        out_dir: the index directory to write (local disk).
        embedder: DEFAULT_EMBEDDER or a local sentence-transformers directory.
        batch_size: captions per embedding batch (RunInference's batch size).
        overwrite: replace an existing index at out_dir.
        index_type: "auto" or an indexing.ann index type (flat, ivf-flat, ivf-sq8, ivf-pq, hnsw);
            auto picks from the collection size and the memory budget (indexing.ann.choose).
        memory_budget: most resident memory the index may take, e.g. "4GB"; None: no limit.
        target_recall: recall@10 against exact search that the search parameters are tuned to.
        parallel: build with many workers (pipelines.index.sharded) or in one; None: in
            parallel from PARALLEL_MIN_ROWS caption rows. Both write the same index.
        rows_per_partition: rows per key range (partition and shard) of the parallel build.
    """

    captions_dir: str
    out_dir: str
    embedder: str = DEFAULT_EMBEDDER
    batch_size: int = 256
    overwrite: bool = False
    index_type: str = AUTO
    memory_budget: str | None = None
    target_recall: float = DEFAULT_TARGET_RECALL
    parallel: bool | None = None
    rows_per_partition: int = ROWS_PER_PARTITION

    @property
    def ann(self) -> AnnConfig:
        """The index choice and tuning config these fields describe (a one-off build)."""
        budget = None if self.memory_budget is None else parse_size(self.memory_budget)
        return AnnConfig(self.index_type, budget, self.target_recall, mutable=False)

    def __post_init__(self) -> None:
        if not self.out_dir:
            raise UsageError("IndexConfig.out_dir is empty: pass the index directory to write")
        if "://" in self.out_dir:
            raise UsageError(
                f"out_dir must be a local directory (indexes are written to local disk), got "
                f"{self.out_dir!r}: write locally, then copy the directory"
            )
        if not self.embedder:
            raise UsageError(f"IndexConfig.embedder is empty: pass {DEFAULT_EMBEDDER!r} or a dir")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise UsageError(f"batch_size must be an int, got {type(self.batch_size).__name__}")
        if self.batch_size <= 0:
            raise UsageError(f"batch_size must be positive, got {self.batch_size}")
        rows = self.rows_per_partition
        if isinstance(rows, bool) or not isinstance(rows, int) or rows <= 0:
            raise UsageError(f"rows_per_partition must be a positive int, got {rows!r}")
        if self.parallel not in (None, True, False):
            raise UsageError(f"parallel must be True, False or None (auto), got {self.parallel!r}")
        _ = self.ann  # validates index_type, memory_budget and target_recall
        find_caption_files(self.captions_dir)  # raises with "run `imgindex caption` first"


@dataclass(frozen=True, slots=True)
class CaptionFiles:
    """The caption files of a run: the glob Beam reads and the files it matched (sorted)."""

    pattern: str
    paths: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class IndexSummary:
    """What run_index built: entry count, vector width, wall seconds, index directory."""

    count: int
    dimension: int
    seconds: float
    out_dir: str


def _match(pattern: str) -> tuple[str, ...]:
    try:
        [result] = FileSystems.match([pattern])
    except BeamIOError:  # e.g. a folder that does not exist on some filesystems
        return ()
    return tuple(sorted(m.path for m in result.metadata_list))


def find_caption_files(captions_dir: str) -> CaptionFiles:
    """Find the caption Parquet files of a caption run.

    Args:
        captions_dir: the run's output folder (files in its captions/ subfolder win) or the
            captions folder itself.

    Raises:
        ValueError: neither holds *.parquet files.
    """
    if not captions_dir:
        raise UsageError("IndexConfig.captions_dir is empty: pass the caption run's output folder")
    for pattern in (
        FileSystems.join(captions_dir, CAPTIONS_SUBDIR, "*.parquet"),
        FileSystems.join(captions_dir, "*.parquet"),
    ):
        if paths := _match(pattern):
            return CaptionFiles(pattern, paths)
    raise UsageError(f"no caption files under {captions_dir}: run `imgindex caption` first")


def check_caption_columns(paths: Iterable[str]) -> tuple[str, ...]:
    """Check that every caption file has string columns INDEX_COLUMNS (reads footers only).

    Returns:
        The columns to read: INDEX_COLUMNS, then the SOURCE_COLUMNS (url, alt_text, metadata)
        and DETAIL_COLUMNS (sha256, size, caption provenance) that every file has with their
        type (strings, INTEGER_COLUMNS integers); a caption run written before them has none,
        and its entries get None for them.

    Raises:
        UsageError: a file is not Parquet, lacks a column or has one of another type.
    """
    optional = (*SOURCE_COLUMNS, *DETAIL_COLUMNS)
    carried = set(optional)
    for path in paths:
        try:
            with FileSystems.open(path) as stream:
                schema = pq.read_schema(stream)
        except (OSError, pa.ArrowException) as err:
            raise UsageError(f"caption file {path} is not a readable Parquet file: {err}") from err
        if missing := [name for name in INDEX_COLUMNS if name not in schema.names]:
            raise UsageError(
                f"caption file {path} lacks column(s) {', '.join(missing)} (it has "
                f"{', '.join(schema.names) or 'none'}): it was not written by `imgindex caption`; "
                "point --captions at a caption run's output"
            )
        for name in INDEX_COLUMNS:
            if not _is_string(schema.field(name).type):
                kind = schema.field(name).type
                raise UsageError(f"caption file {path}: column {name} is {kind}, expected string")
        carried &= {
            n
            for n in schema.names
            if (pa.types.is_integer if n in INTEGER_COLUMNS else _is_string)(schema.field(n).type)
        }
    if left_out := [name for name in optional if name not in carried]:
        logger.info("indexing without %s: not in every caption file", ", ".join(left_out))
    return (*INDEX_COLUMNS, *(name for name in optional if name in carried))


def _is_string(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def check_out_dir(out_dir: str, overwrite: bool) -> None:
    """Refuse an out_dir that write_index would refuse, before any work is done."""
    check_index_target(Path(out_dir), overwrite)


class ToCaptionText(beam.DoFn):
    """Parquet row dicts -> CaptionText; rows that cannot be indexed are counted by reason."""

    def __init__(self) -> None:
        self._read = Metrics.counter(METRICS_NAMESPACE, "captions_read")

    def process(self, row: dict[str, Any]) -> Iterator[CaptionText]:
        self._read.inc()
        result = caption_text(row)
        if isinstance(result, str):
            Metrics.counter(METRICS_NAMESPACE, f"skipped_{result}").inc()
            return
        yield result


class WriteIndex(beam.DoFn):
    """The gathered list of EmbeddedCaption -> the index directory; yields its Manifest."""

    def __init__(
        self,
        out_dir: str,
        embedder: ResolvedEmbedder,
        caption_files: Sequence[str],
        overwrite: bool,
        ann: AnnConfig | None = None,
    ) -> None:
        self._out_dir = out_dir
        self._embedder = embedder
        self._caption_files = tuple(caption_files)
        self._overwrite = overwrite
        self._ann = ann or AnnConfig()
        self._write_ms = Metrics.distribution(METRICS_NAMESPACE, "write_index_ms")
        self._indexed = Metrics.counter(METRICS_NAMESPACE, "captions_indexed")
        self._duplicates = Metrics.counter(METRICS_NAMESPACE, "skipped_duplicate")

    def process(self, embedded: list[EmbeddedCaption]) -> Iterator[Manifest]:
        start = time.perf_counter()
        manifest, duplicates = write_embedded_index(
            embedded,
            self._out_dir,
            self._embedder,
            self._caption_files,
            self._overwrite,
            imgindex_version(),
            self._ann,
        )
        self._write_ms.update(int((time.perf_counter() - start) * 1000))
        self._indexed.inc(manifest.count)
        self._duplicates.inc(duplicates)
        yield manifest


def count_caption_rows(paths: Iterable[str]) -> int:
    """Rows in the caption files, from their Parquet footers (nothing else is read)."""
    rows = 0
    for path in paths:
        with FileSystems.open(path) as stream:
            rows += pq.read_metadata(stream).num_rows
    return rows


def build_index_pipeline(
    p: beam.Pipeline, config: IndexConfig, work_dir: str | None = None
) -> beam.PCollection:
    """Add the index steps to ``p``.

    Checks out_dir, the caption files' columns and the embedder before adding any step, so
    misconfiguration fails before the pipeline runs.

    Args:
        work_dir: where the parallel build stages its partitions and shards
            (indexing.sharded.work_dir_for(out_dir) when None); remove it if the run fails.

    Returns:
        A PCollection with the single Manifest of the written index.
    """
    check_out_dir(config.out_dir, config.overwrite)
    files = find_caption_files(config.captions_dir)
    columns = check_caption_columns(files.paths)
    embedder = resolve_embedder(config.embedder)
    rows = count_caption_rows(files.paths)
    parallel = rows >= PARALLEL_MIN_ROWS if config.parallel is None else config.parallel
    logger.info(
        "indexing %d caption rows in %d files (%s) with %s, %s",
        rows, len(files.paths), files.pattern, embedder.name,
        "in parallel" if parallel else "in one worker",
    )  # fmt: skip
    handler = TextEmbeddingHandler(embedder.name, embedder.sha256, config.batch_size)
    embedded = (
        p
        | "ReadCaptions" >> ReadFromParquet(files.pattern, columns=list(columns))
        | "ToCaptionText" >> beam.ParDo(ToCaptionText())
        | "EmbedCaptions" >> EmbedDistinctTexts(handler)
    )
    if parallel:
        work = work_dir or str(work_dir_for(Path(config.out_dir)))
        ranges = max(1, -(-rows // config.rows_per_partition))  # ceil
        identity = BuildIdentity(embedder, files.paths, imgindex_version())
        build = BuildShardedIndex(
            work, config.out_dir, config.overwrite, ranges, identity, config.ann
        )
        return embedded | "BuildIndex" >> build
    return (
        embedded
        # Holds every vector (~1.5 KB per caption at D=384) and caption in one worker.
        | "GatherEmbeddings" >> beam.combiners.ToList()
        | "WriteIndex"
        >> beam.ParDo(
            WriteIndex(config.out_dir, embedder, files.paths, config.overwrite, config.ann)
        )
    )


def run_index(config: IndexConfig, beam_args: Sequence[str] | None = None) -> IndexSummary:
    """Build the index of config.captions_dir into config.out_dir and wait for it.

    Args:
        config: what to index and where.
        beam_args: Beam pipeline flags (e.g. ["--direct_num_workers=2"]); the local in-process
            runner (pipelines.options.LOCAL_RUNNER) when no runner is given. The build writes
            to the local disk of the workers that run it (partitions, shards, the index), so use
            a local runner, or workers that share out_dir's filesystem.

    Returns:
        The summary, read back from the written manifest.

    Raises:
        FileExistsError: out_dir is not empty and overwrite is False (before anything runs).
        ValueError: no caption files, a caption file lacks a column, or a bad embedder.
        RuntimeError: the pipeline ended in a state other than DONE.
    """
    start = time.perf_counter()
    pipeline = beam.Pipeline(options=pipeline_options(beam_args))
    work = work_dir_for(Path(config.out_dir))
    build_index_pipeline(pipeline, config, str(work))
    try:
        state = pipeline.run().wait_until_finish()
    finally:
        remove_work_dir(work)  # gone already when the parallel build published it
    if state != PipelineState.DONE:
        raise RuntimeError(f"the index pipeline ended in state {state}, not DONE")
    manifest_path = Path(config.out_dir) / MANIFEST_FILE
    manifest = Manifest.from_json(manifest_path.read_text(encoding="utf-8"))
    summary = IndexSummary(
        count=manifest.count,
        dimension=manifest.dimension,
        seconds=time.perf_counter() - start,
        out_dir=config.out_dir,
    )
    logger.info(
        "indexed %d captions (dimension %d) into %s in %.1fs",
        summary.count,
        summary.dimension,
        summary.out_dir,
        summary.seconds,
    )
    return summary
