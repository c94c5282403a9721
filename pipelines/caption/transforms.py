"""DoFns over the pure cores: shards -> entries -> decoded images -> caption/failure rows."""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, cast

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue
from PIL import Image

from captioning.api import CaptionerOptions, CaptionResult
from captioning.archives.listing import ReadConfig, Shard, ShardEntry, iter_shard
from captioning.images.decode import DecodeConfig, DecodeError, decode_image
from captioning.images.device_decode import EncodedImage, plain_jpeg_header
from captioning.records import CaptionRow, FailureRow, ImageInput
from captioning.registry import load_preprocessor
from pipelines.caption.handler import NAMESPACE, CaptionFailure
from pipelines.caption.progress import ProgressWriter

FAILURES = "failures"


def _failed(reason: str) -> None:
    Metrics.counter(NAMESPACE, f"failed_{reason}").inc()


class ReadShard(beam.DoFn):
    """Shard -> its entries, streamed; an entry that could not be read goes to FAILURES."""

    def __init__(self, config: ReadConfig, run_id: str):
        self._config, self._run_id = config, run_id
        self._read = Metrics.counter(NAMESPACE, "read")
        self._ms = Metrics.counter(NAMESPACE, "read_ms")

    def process(self, shard: Shard) -> Iterator:
        entries = iter_shard(shard, self._config)
        while True:
            started = time.perf_counter()  # time in the reader only, not in fused downstream work
            entry = next(entries, None)
            self._ms.inc(int((time.perf_counter() - started) * 1000))
            if entry is None:
                return
            self._read.inc()
            if entry.data is None:
                reason = entry.error or "read_error"
                _failed(reason)
                yield beam.pvalue.TaggedOutput(
                    FAILURES,
                    FailureRow(
                        entry.key,
                        entry.source,
                        entry.member,
                        "read",
                        reason,
                        entry.message or reason,
                        self._run_id,
                    ),
                )
            else:
                yield entry


def decode_entry(
    entry: ShardEntry,
    config: DecodeConfig,
    run_id: str,
    preprocess: Callable[[Image.Image], Any],
    pass_jpeg: bool = False,
) -> ImageInput | FailureRow:
    """One entry's bytes -> an ImageInput (the model's preprocessed input and the image's
    provenance), or a decode FailureRow.

    With `pass_jpeg`, a plain JPEG (no EXIF turn) is not decoded here: only its header is read
    (size, format, the size guard) and its bytes go on as an EncodedImage, for the captioner to
    decode on its device; a file whose pixels turn out broken fails there, with stage "decode".
    """
    assert entry.data is not None
    digest = hashlib.sha256(entry.data).hexdigest()
    try:
        header = plain_jpeg_header(entry.data, config) if pass_jpeg else None
        if header is not None:
            return ImageInput(
                entry.key,
                entry.source,
                entry.member,
                digest,
                header.width,
                header.height,
                header.format,
                EncodedImage(entry.data),
            )
        decoded = decode_image(entry.data, config)
    except DecodeError as e:
        return FailureRow(
            entry.key, entry.source, entry.member, "decode", e.reason, e.message, run_id
        )
    return ImageInput(
        entry.key,
        entry.source,
        entry.member,
        digest,
        decoded.width,
        decoded.height,
        decoded.format,
        preprocess(decoded.image),
    )


class DecodeImages(beam.DoFn):
    """ShardEntry -> ImageInput (the model's input for the image, and its provenance), or a
    decode failure.

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
        self._ms = Metrics.counter(NAMESPACE, "decode_ms")

    def setup(self) -> None:
        self._preprocess = load_preprocessor(self._spec, self._options)
        capable = bool(getattr(self._preprocess, "decodes_on_device", False))
        on_gpu = self._options.resolved_device().type == "cuda"
        self._pass_jpeg = capable and (
            self._decode_on == "device" or (self._decode_on == "auto" and on_gpu)
        )
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="decode")

    def start_bundle(self) -> None:
        self._pending: deque[Future[tuple[ImageInput | FailureRow, float]]] = deque()

    def _timed_decode(self, entry: ShardEntry) -> tuple[ImageInput | FailureRow, float]:
        started = time.perf_counter()
        result = decode_entry(entry, self._config, self._run_id, self._preprocess, self._pass_jpeg)
        return result, time.perf_counter() - started

    def _emit(self, done: tuple[ImageInput | FailureRow, float], windowed: bool) -> Any:
        result, seconds = done
        # Counted here, on the DoFn's thread: Beam's metrics do not see the pool's threads.
        self._ms.inc(int(seconds * 1000))
        value: Any = result
        if windowed:  # finish_bundle has no input element to take a window from
            value = WindowedValue(result, MIN_TIMESTAMP, (GlobalWindow(),))
        if isinstance(result, FailureRow):
            _failed(result.error_type)
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
    """RunInference's PredictionResult -> a CaptionRow (main) or a FailureRow (FAILURES)."""

    def __init__(self, run_id: str, model_name: str, model_version: str, progress_dir: str | None):
        self._run_id, self._model, self._version = run_id, model_name, model_version
        self._progress_dir = progress_dir
        self._captioned = Metrics.counter(NAMESPACE, "captioned")

    def setup(self) -> None:
        self._progress = ProgressWriter(self._progress_dir) if self._progress_dir else None

    def process(self, result: PredictionResult) -> Iterator:
        x = cast(ImageInput, result.example)
        out = result.inference
        if isinstance(out, CaptionFailure):
            _failed(out.error_type)  # its progress is counted by CountFailures, like every failure
            yield beam.pvalue.TaggedOutput(
                FAILURES,
                FailureRow(
                    x.key, x.source, x.member, out.stage, out.error_type, out.message, self._run_id
                ),
            )
            return
        assert isinstance(out, CaptionResult)
        self._captioned.inc()
        if self._progress:
            self._progress.add(captioned=1)
        yield CaptionRow(
            key=x.key,
            source=x.source,
            member=x.member,
            sha256=x.sha256,
            width=x.width,
            height=x.height,
            format=x.format,
            caption=out.caption,
            candidates=list(out.candidates),
            model=self._model,
            model_version=self._version,
            run_id=self._run_id,
            captioned_at=datetime.now(UTC).isoformat(timespec="seconds"),
        ).to_dict()

    def teardown(self) -> None:
        if self._progress:
            self._progress.flush()


class CountFailures(beam.DoFn):
    """FailureRow -> dict for Parquet; also feeds the local progress display."""

    def __init__(self, progress_dir: str | None):
        self._progress_dir = progress_dir

    def setup(self) -> None:
        self._progress = ProgressWriter(self._progress_dir) if self._progress_dir else None

    def process(self, row: FailureRow) -> Iterator[dict]:
        if self._progress:
            self._progress.add(failed=1)
        yield row.to_dict()

    def teardown(self) -> None:
        if self._progress:
            self._progress.flush()
