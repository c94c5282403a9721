"""DoFns over captioning.steps: shards -> entries -> decoded images -> caption/failure rows.

Each DoFn adapts a pure step to Beam: it times the step (integer nanoseconds, summed exactly in a
counter per stage), routes failure rows to the FAILURES output and feeds the live progress.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from time import perf_counter_ns
from typing import Any, cast

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from captioning.api import CaptionerOptions, CaptionResult
from captioning.archives.listing import ReadConfig, Shard, ShardEntry, iter_shard
from captioning.images.decode import DecodeConfig
from captioning.records import CaptionRow, FailureRow, ImageInput
from captioning.registry import load_preprocessor
from captioning.steps import CaptionFailure, decode_entry, read_failure, result_row
from pipelines.caption.handler import NAMESPACE
from pipelines.caption.progress import ProgressWriter

FAILURES = "failures"


def failed_by_reason(reason: str) -> str:
    """The counter of failures with this error_type."""
    return f"failed_{reason}"


def failed_at_stage(stage: str) -> str:
    """The counter of failures at this stage (read, decode, caption)."""
    return f"{stage}_failed"


def stage_ns(stage: str) -> str:
    """The counter of nanoseconds spent in this stage (read, decode, inference)."""
    return f"{stage}_ns"


class ReadShard(beam.DoFn):
    """Shard -> its entries, streamed; an entry that could not be read goes to FAILURES.

    A (shard, members) pair reads only those members (the update captions what changed)."""

    def __init__(self, config: ReadConfig, run_id: str):
        self._config, self._run_id = config, run_id
        self._read = Metrics.counter(NAMESPACE, "read")
        self._ns = Metrics.counter(NAMESPACE, stage_ns("read"))

    def process(self, work: Shard | tuple[Shard, frozenset[str]]) -> Iterator:
        shard, members = work if isinstance(work, tuple) else (work, None)
        entries = iter_shard(shard, self._config)
        while True:
            started = perf_counter_ns()  # time in the reader only, not in fused downstream work
            entry = next(entries, None)
            self._ns.inc(perf_counter_ns() - started)
            if entry is None:
                return
            if members is not None and entry.member not in members:
                continue
            self._read.inc()
            if entry.data is None:
                yield beam.pvalue.TaggedOutput(FAILURES, read_failure(entry, self._run_id))
            else:
                yield entry


class DecodeImages(beam.DoFn):
    """ShardEntry -> ImageInput (the model's input for the image, and its provenance), or a
    decode failure (see `captioning.steps.decode_entry`).

    Decoding and the model's preprocessing (resize, normalise) run `threads` images ahead on a
    thread pool: Beam calls the fused inference step from inside this DoFn's yield, so while the
    model works on one batch the pool prepares the next images (Pillow and torch both release
    the GIL). Results leave in input order. The preprocessor is loaded without the model.
    """

    def __init__(
        self,
        config: DecodeConfig,
        run_id: str,
        model_spec: str | None,
        options: CaptionerOptions,
        decode_on: str = "cpu",
        threads: int = 2,
        ahead: int = 64,
    ):
        self._config, self._run_id = config, run_id
        self._spec, self._options = model_spec, options
        self._decode_on = decode_on
        self._threads, self._ahead = threads, ahead
        self._ns = Metrics.counter(NAMESPACE, stage_ns("decode"))

    def setup(self) -> None:
        self._preprocess = load_preprocessor(self._spec, self._options)
        capable = bool(getattr(self._preprocess, "decodes_on_device", False))
        on_gpu = self._options.resolved_device().type == "cuda"
        self._pass_jpeg = capable and (
            self._decode_on == "device" or (self._decode_on == "auto" and on_gpu)
        )
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="decode")

    def start_bundle(self) -> None:
        self._pending: deque[Future[tuple[ImageInput | FailureRow, int]]] = deque()

    def _timed_decode(self, entry: ShardEntry) -> tuple[ImageInput | FailureRow, int]:
        started = perf_counter_ns()
        result = decode_entry(entry, self._config, self._run_id, self._preprocess, self._pass_jpeg)
        return result, perf_counter_ns() - started

    def _emit(self, done: tuple[ImageInput | FailureRow, int], windowed: bool) -> Any:
        result, elapsed_ns = done
        # Counted here, on the DoFn's thread: Beam's metrics do not see the pool's threads.
        self._ns.inc(elapsed_ns)
        value: Any = result
        if windowed:  # finish_bundle has no input element to take a window from
            value = WindowedValue(result, MIN_TIMESTAMP, (GlobalWindow(),))
        if isinstance(result, FailureRow):
            return beam.pvalue.TaggedOutput(FAILURES, value)
        return value

    def process(self, entry: ShardEntry) -> Iterator:
        self._pending.append(self._pool.submit(self._timed_decode, entry))
        while len(self._pending) > self._ahead:
            yield self._emit(self._pending.popleft().result(), windowed=False)

    def finish_bundle(self) -> Iterator:
        while self._pending:
            yield self._emit(self._pending.popleft().result(), windowed=True)

    def teardown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class ToRows(beam.DoFn):
    """RunInference's PredictionResult -> a CaptionRow dict (main) or a FailureRow (FAILURES)."""

    def __init__(self, run_id: str, model_name: str, model_version: str, progress_dir: str | None):
        self._run_id, self._model, self._version = run_id, model_name, model_version
        self._progress_dir = progress_dir
        self._captioned = Metrics.counter(NAMESPACE, "captioned")

    def setup(self) -> None:
        self._progress = ProgressWriter(self._progress_dir) if self._progress_dir else None

    def process(self, result: PredictionResult) -> Iterator:
        x = cast(ImageInput, result.example)
        out = cast(CaptionResult | CaptionFailure, result.inference)
        row = result_row(x, out, self._run_id, self._model, self._version)
        if isinstance(row, FailureRow):  # counted by CountFailures, like every failure
            yield beam.pvalue.TaggedOutput(FAILURES, row)
            return
        assert isinstance(row, CaptionRow)
        self._captioned.inc()
        if self._progress:
            self._progress.add(captioned=1)
        yield row.to_dict()

    def teardown(self) -> None:
        if self._progress:
            self._progress.flush()


class CountFailures(beam.DoFn):
    """FailureRow -> dict for Parquet. Every failure of every stage passes here once: it is
    counted by reason and by stage, and feeds the local progress display."""

    def __init__(self, progress_dir: str | None):
        self._progress_dir = progress_dir

    def setup(self) -> None:
        self._progress = ProgressWriter(self._progress_dir) if self._progress_dir else None

    def process(self, row: FailureRow) -> Iterator[dict]:
        Metrics.counter(NAMESPACE, failed_by_reason(row.error_type)).inc()
        Metrics.counter(NAMESPACE, failed_at_stage(row.stage)).inc()
        if self._progress:
            self._progress.add(failed=1)
        yield row.to_dict()

    def teardown(self) -> None:
        if self._progress:
            self._progress.flush()
