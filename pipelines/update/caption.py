"""The update's caption job: the images the plan left without a caption -> the caption cache.

    ListWork -> Reshuffle -> ReadMembers -> DecodeImages -> CaptionImages -> ToRows -> CacheCaptions
                                 |               |              (RunInference)   |
                                 +-> failures    +-> failures                    +-> failures
                                                                   MergeFailures -> CacheFailures

It is the caption job's own steps (pipelines/caption/transforms.py), reading only the members
the plan names, and writing through CacheWriter instead of Beam's Parquet sink: every
`flush_rows` rows become one complete file under ROOT/captions/ (or ROOT/failures/), written
under a temporary name and renamed. A run killed at any moment leaves only whole files, which
the next update's plan reuses, so it redoes at most the images that were in flight.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference

from captioning.archives.listing import iter_shard
from captioning.archives.records import ReadConfig, Shard
from captioning.records import CAPTION_SCHEMA, FAILURE_SCHEMA
from captioning.steps import read_failure
from indexing.collection import TMP_PREFIX
from pipelines.caption.config import CaptionConfig
from pipelines.caption.handler import NAMESPACE, CaptionModelHandler
from pipelines.caption.transforms import FAILURES, CountFailures, DecodeImages, ToRows


class ReadMembers(beam.DoFn):
    """(shard, members wanted) -> those members' entries; unreadable ones go to FAILURES."""

    def __init__(self, config: ReadConfig, run_id: str):
        self._config, self._run_id = config, run_id
        self._read = Metrics.counter(NAMESPACE, "read")

    def process(self, work: tuple[Shard, frozenset[str]]) -> Iterator[Any]:
        shard, members = work
        for entry in iter_shard(shard, self._config):
            if entry.member not in members:
                continue
            self._read.inc()
            if entry.data is None:
                yield beam.pvalue.TaggedOutput(FAILURES, read_failure(entry, self._run_id))
            else:
                yield entry


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
    read = (
        p
        | "ListWork" >> beam.Create(work)
        | "Reshuffle" >> beam.Reshuffle()
        | "ReadMembers"
        >> beam.ParDo(ReadMembers(config.read, run_id)).with_outputs(FAILURES, main="entries")
    )
    decoded = read.entries | "DecodeImages" >> beam.ParDo(
        DecodeImages(config.decode, run_id, config.model, config.captioner, config.decode_on)
    ).with_outputs(FAILURES, main="images")
    handler = CaptionModelHandler(
        config.model, config.captioner, config.batch_size, config.model_copies
    )
    rows = (
        decoded.images
        | "CaptionImages" >> RunInference(handler)
        | "ToRows"
        >> beam.ParDo(ToRows(run_id, model[0], model[1], None)).with_outputs(
            FAILURES, main="captions"
        )
    )
    _ = rows.captions | "CacheCaptions" >> beam.ParDo(
        CacheWriter(captions_dir, run_id, CAPTION_SCHEMA, flush_rows)
    )
    _ = (
        (read[FAILURES], decoded[FAILURES], rows[FAILURES])
        | "MergeFailures" >> beam.Flatten()
        | "FailureDicts" >> beam.ParDo(CountFailures(None))
        | "CacheFailures" >> beam.ParDo(CacheWriter(failures_dir, run_id, FAILURE_SCHEMA, 64))
    )
