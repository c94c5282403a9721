"""The update's caption job: the images the plan left without a caption -> the caption cache.

    ListWork -> Reshuffle -> ReadShards -> DecodeImages -> CaptionImages -> ToRows -> CacheCaptions
                                 |              |              (RunInference)   |
                                 +-> failures   +-> failures                    +-> failures
                                                                   MergeFailures -> CacheFailures

It is the caption job's own steps (pipelines.caption.pipeline.caption_steps), reading only the
members the plan names, and writing through CacheWriter instead of Beam's Parquet sink: every
`flush_rows` rows become one complete file under ROOT/captions/ (or ROOT/failures/), written
under a temporary name and renamed. A run killed at any moment leaves only whole files, which
the next update's plan reuses, so it redoes at most the images that were in flight.
"""

from __future__ import annotations

import uuid
from typing import Any

import apache_beam as beam
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from captioning.archives.records import Shard
from captioning.records import CAPTION_SCHEMA, FAILURE_SCHEMA
from indexing.collection import TMP_PREFIX
from pipelines.caption.config import CaptionConfig
from pipelines.caption.pipeline import caption_steps
from pipelines.caption.transforms import CountFailures


class CacheWriter(beam.DoFn):
    """Rows -> whole Parquet files named `<run_id>--<uuid>.parquet` under `directory`, one per
    `flush_rows` rows and one at the end of each bundle; each is written under a temporary name
    and renamed, so a reader (or the next run) only ever sees complete files."""

    def __init__(self, directory: str, run_id: str, schema: pa.Schema, flush_rows: int):
        self._dir, self._run_id = directory.rstrip("/"), run_id
        self._schema, self._flush_rows = schema, flush_rows

    def start_bundle(self) -> None:
        self._rows: list[dict[str, Any]] = []

    def process(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        if len(self._rows) >= self._flush_rows:
            self._flush()

    def finish_bundle(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        table = pa.Table.from_pylist(self._rows, schema=self._schema)
        fs, base = fsspec.core.url_to_fs(self._dir)
        fs.makedirs(base, exist_ok=True)
        name = f"{self._run_id}--{uuid.uuid4().hex}.parquet"
        tmp = f"{base}/{TMP_PREFIX}{name}"
        with fs.open(tmp, "wb") as f:
            pq.write_table(table, f)
        fs.mv(tmp, f"{base}/{name}")
        self._rows = []


def build_captioning(
    p: beam.Pipeline,
    work: list[tuple[Shard, frozenset[str]]],
    config: CaptionConfig,
    run_id: str,
    model: tuple[str, str],
    captions_dir: str,
    failures_dir: str,
    flush_rows: int,
) -> None:
    """Add the caption steps for `work` ((shard, members) pairs) to `p`; `model` is the
    (name, version) every row records."""
    captions, failures = caption_steps(
        p | "ListWork" >> beam.Create(work), config, run_id, model, progress_dir=None
    )
    _ = captions | "CacheCaptions" >> beam.ParDo(
        CacheWriter(captions_dir, run_id, CAPTION_SCHEMA, flush_rows)
    )
    _ = (
        failures
        | "MergeFailures" >> beam.Flatten()
        | "FailureDicts" >> beam.ParDo(CountFailures(None))
        | "CacheFailures" >> beam.ParDo(CacheWriter(failures_dir, run_id, FAILURE_SCHEMA, 64))
    )
