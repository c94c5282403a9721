"""Caption Parquet files (CAPTION_SCHEMA, under OUT/captions/) -> one FAISS index directory.

The Beam shell is ReadFromParquet -> RunInference(SentenceEmbeddingHandler) -> ToList ->
WriteIndex; the work is done by pure functions (find_caption_files, check_caption_columns,
caption_text, assemble_index, write_embedded_index) tested without Beam, and by indexing.build.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import ReadFromParquet
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, RunInference
from apache_beam.runners.runner import PipelineState

from indexing.build import (
    MANIFEST_FILE,
    IndexEntry,
    Manifest,
    check_index_target,
    write_index,
)
from indexing.embed import (
    DEFAULT_EMBEDDER,
    EmbedderError,
    ResolvedEmbedder,
    TextEmbedder,
    resolve_embedder,
)
from pipelines import imgindex_version
from pipelines.errors import UsageError
from pipelines.options import pipeline_options

logger = logging.getLogger(__name__)

CAPTIONS_SUBDIR = "captions"  # where the caption pipeline writes its Parquet files under OUT
INDEX_COLUMNS = ("key", "caption", "source", "member")  # the CAPTION_SCHEMA columns an index uses
METRICS_NAMESPACE = "imgindex.index"


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
    """

    captions_dir: str
    out_dir: str
    embedder: str = DEFAULT_EMBEDDER
    batch_size: int = 256
    overwrite: bool = False

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
        find_caption_files(self.captions_dir)  # raises with "run `imgindex caption` first"


@dataclass(frozen=True, slots=True)
class CaptionFiles:
    """The caption files of a run: the glob Beam reads and the files it matched (sorted)."""

    pattern: str
    paths: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CaptionText:
    """One caption row on its way to the embedder (an IndexEntry without its id)."""

    key: str
    caption: str
    source: str
    member: str


@dataclass(frozen=True, slots=True, eq=False)  # eq=False: ndarray == is elementwise
class EmbeddedCaption:
    """A caption and its unit-norm float32 vector, shape (D,)."""

    caption: CaptionText
    vector: np.ndarray


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


def check_caption_columns(paths: Iterable[str]) -> None:
    """Check that every caption file has string columns INDEX_COLUMNS (reads footers only).

    Raises:
        ValueError: a file is not Parquet, lacks a column or has one of another type.
    """
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
            kind = schema.field(name).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                raise UsageError(f"caption file {path}: column {name} is {kind}, expected string")


def caption_text(row: Mapping[str, Any]) -> CaptionText | str:
    """Turn a caption Parquet row into a CaptionText, or the reason it cannot be indexed.

    Returns:
        The CaptionText, or a short stable reason: "missing_<column>" for a null key, source or
        member, "empty_caption" for a null or blank caption.
    """
    for name in ("key", "source", "member"):
        if row.get(name) is None:
            return f"missing_{name}"
    caption = row.get("caption")
    if caption is None or not caption.strip():
        return "empty_caption"
    return CaptionText(key=row["key"], caption=caption, source=row["source"], member=row["member"])


@dataclass(frozen=True, slots=True)
class AssembledIndex:
    """Entries with ids 0..N-1 in (source, member, key) order and their vectors (N, D)."""

    entries: list[IndexEntry]
    vectors: np.ndarray
    duplicates: int  # rows dropped because their (source, member, key) was already indexed


def assemble_index(embedded: Iterable[EmbeddedCaption], dimension: int) -> AssembledIndex:
    """Order embedded captions deterministically and give them ids.

    Sorting on (source, member, key, caption) makes ids independent of the order in which the
    runner delivers elements, so a rerun over the same captions gives the same index. Of rows
    that share (source, member, key) only the first in that order is kept.

    Args:
        embedded: the embedded captions, in any order.
        dimension: vector width D, used for the shape of an empty result.
    """
    ordered = sorted(
        embedded,
        key=lambda e: (e.caption.source, e.caption.member, e.caption.key, e.caption.caption),
    )
    kept: list[EmbeddedCaption] = []
    for item in ordered:
        last = kept[-1].caption if kept else None
        here = item.caption
        if last is not None and (last.source, last.member, last.key) == (
            here.source,
            here.member,
            here.key,
        ):
            continue
        kept.append(item)
    entries = [
        IndexEntry(
            id=i,
            key=e.caption.key,
            caption=e.caption.caption,
            source=e.caption.source,
            member=e.caption.member,
        )
        for i, e in enumerate(kept)
    ]
    if kept:
        vectors = np.stack([e.vector for e in kept]).astype(np.float32, copy=False)  # N x (D,)
    else:
        vectors = np.zeros((0, dimension), dtype=np.float32)  # (0, D)
    return AssembledIndex(entries, vectors, duplicates=len(ordered) - len(kept))


def write_embedded_index(
    embedded: Iterable[EmbeddedCaption],
    out_dir: str,
    embedder: ResolvedEmbedder,
    caption_files: Sequence[str],
    overwrite: bool,
) -> tuple[Manifest, int]:
    """Assemble embedded captions into an index and write it with write_index.

    Returns:
        The written manifest and the number of duplicate rows dropped.
    """
    embedded = list(embedded)
    if embedded:
        dimension = int(embedded[0].vector.shape[0])
    else:
        # No vector to read the width from (every caption was empty): ask the model.
        logger.warning("no captions to index: writing an empty index to %s", out_dir)
        dimension = TextEmbedder(resolve_embedder(embedder.name)).dimension
    assembled = assemble_index(embedded, dimension)
    if assembled.duplicates:
        logger.warning(
            "dropped %d caption rows whose (source, member, key) repeats", assembled.duplicates
        )
    manifest = Manifest(
        embedder_name=embedder.name,
        embedder_sha256=embedder.sha256,
        dimension=dimension,
        count=len(assembled.entries),
        caption_files=tuple(caption_files),
        imgindex_version=imgindex_version(),
    )
    write_index(out_dir, assembled.entries, assembled.vectors, manifest, overwrite=overwrite)
    return manifest, assembled.duplicates


def check_out_dir(out_dir: str, overwrite: bool) -> None:
    """Refuse an out_dir that write_index would refuse, before any work is done."""
    check_index_target(Path(out_dir), overwrite)


class SentenceEmbeddingHandler(ModelHandler[CaptionText, EmbeddedCaption, TextEmbedder]):
    """RunInference handler: CaptionText batches -> EmbeddedCaption, one per input.

    Args:
        embedder_name: ResolvedEmbedder.name (DEFAULT_EMBEDDER or an absolute local directory);
            resolved again where the model loads.
        embedder_sha256: the weights the launcher resolved; load_model refuses other weights, so
            the manifest written at the end names the model that made the vectors.
        batch_size: captions per batch.
        device: torch device; None lets sentence-transformers pick (a GPU when there is one).
    """

    def __init__(
        self, embedder_name: str, embedder_sha256: str, batch_size: int, device: str | None = None
    ) -> None:
        super().__init__()
        self._embedder_name = embedder_name
        self._embedder_sha256 = embedder_sha256
        self._batch_size = batch_size
        self._device = device

    def load_model(self) -> TextEmbedder:
        resolved = resolve_embedder(self._embedder_name)
        if resolved.sha256 != self._embedder_sha256:
            raise EmbedderError(
                f"embedder {self._embedder_name!r} has weights with sha256 {resolved.sha256} "
                f"here but {self._embedder_sha256} where the pipeline was launched: install the "
                "same model on every worker"
            )
        return TextEmbedder(resolved, device=self._device)

    def run_inference(
        self,
        batch: Sequence[CaptionText],
        model: TextEmbedder,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[EmbeddedCaption]:
        vectors = model.embed([c.caption for c in batch], batch_size=len(batch))  # (B, D)
        return [
            EmbeddedCaption(caption, vector)  # vector: (D,)
            for caption, vector in zip(batch, vectors, strict=True)
        ]

    def get_num_bytes(self, batch: Sequence[CaptionText]) -> int:
        return sum(len(c.caption.encode("utf-8")) for c in batch)

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        # A batch job: nothing is waiting on latency, so always fill batches to batch_size
        # instead of letting BatchElements grow them from 1 (bundle ends still flush short ones).
        return {"min_batch_size": self._batch_size, "max_batch_size": self._batch_size}


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
    ) -> None:
        self._out_dir = out_dir
        self._embedder = embedder
        self._caption_files = tuple(caption_files)
        self._overwrite = overwrite
        self._write_ms = Metrics.distribution(METRICS_NAMESPACE, "write_index_ms")
        self._indexed = Metrics.counter(METRICS_NAMESPACE, "captions_indexed")
        self._duplicates = Metrics.counter(METRICS_NAMESPACE, "skipped_duplicate")

    def process(self, embedded: list[EmbeddedCaption]) -> Iterator[Manifest]:
        start = time.perf_counter()
        manifest, duplicates = write_embedded_index(
            embedded, self._out_dir, self._embedder, self._caption_files, self._overwrite
        )
        self._write_ms.update(int((time.perf_counter() - start) * 1000))
        self._indexed.inc(manifest.count)
        self._duplicates.inc(duplicates)
        yield manifest


def build_index_pipeline(p: beam.Pipeline, config: IndexConfig) -> beam.PCollection:
    """Add the index steps to ``p``.

    Checks out_dir, the caption files' columns and the embedder before adding any step, so
    misconfiguration fails before the pipeline runs.

    Returns:
        A PCollection with the single Manifest of the written index.
    """
    check_out_dir(config.out_dir, config.overwrite)
    files = find_caption_files(config.captions_dir)
    check_caption_columns(files.paths)
    embedder = resolve_embedder(config.embedder)
    logger.info(
        "indexing %d caption files (%s) with %s", len(files.paths), files.pattern, embedder.name
    )
    handler = SentenceEmbeddingHandler(embedder.name, embedder.sha256, config.batch_size)
    return (
        p
        | "ReadCaptions" >> ReadFromParquet(files.pattern, columns=list(INDEX_COLUMNS))
        | "ToCaptionText" >> beam.ParDo(ToCaptionText())
        | "EmbedCaptions" >> RunInference(handler)
        # One flat index needs every vector in one process. ToList holds them all in memory
        # (~1.5 KB per caption at D=384), fine to tens of millions; sharded indexes built per
        # group and merged are a later issue.
        | "GatherEmbeddings" >> beam.combiners.ToList()
        | "WriteIndex"
        >> beam.ParDo(WriteIndex(config.out_dir, embedder, files.paths, config.overwrite))
    )


def run_index(config: IndexConfig, beam_args: Sequence[str] | None = None) -> IndexSummary:
    """Build the index of config.captions_dir into config.out_dir and wait for it.

    Args:
        config: what to index and where.
        beam_args: Beam pipeline flags (e.g. ["--runner=DirectRunner"]); the local in-process
            runner (pipelines.options.LOCAL_RUNNER) when no runner is given. WriteIndex writes
            to the local disk of the worker that runs it, so use a local runner (or a worker
            that shares out_dir's filesystem).

    Returns:
        The summary, read back from the written manifest.

    Raises:
        FileExistsError: out_dir is not empty and overwrite is False (before anything runs).
        ValueError: no caption files, a caption file lacks a column, or a bad embedder.
        RuntimeError: the pipeline ended in a state other than DONE.
    """
    start = time.perf_counter()
    pipeline = beam.Pipeline(options=pipeline_options(beam_args))
    build_index_pipeline(pipeline, config)
    state = pipeline.run().wait_until_finish()
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
