"""Beam's RunInference over our captioning backends: batches of ImageInput -> CaptionResults.

One ModelHandler serves every backend (native or Hugging Face): load_model builds the Captioner
named by the spec, run_inference captions a batch of preprocessed inputs with
`captioning.steps.caption_batch` (a batch that fails as a whole is retried one image at a time, so
one bad image costs one failure row, not a whole batch).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from captioning.api import Captioner, CaptionerOptions
from captioning.records import ImageInput
from captioning.registry import load_captioner
from captioning.steps import BrokenModelWatch, caption_batch

logger = logging.getLogger(__name__)
NAMESPACE = "imgindex"
STOP_AFTER_FAILED_BATCHES = 3


class ModelBrokenError(RuntimeError):
    """The model failed every image of the first batches it ran, all with one error: the job
    stops early rather than turn the whole input into identical failure rows.

    The message is one line; `run_caption` finds it again in whatever exception the runner
    raises (Beam wraps worker exceptions), by the class name followed by the message.
    """


class CaptionModelHandler(ModelHandler[ImageInput, PredictionResult, Captioner]):
    """Keyed by ImageInput: the record itself carries key, source and member to the output.

    Args:
        model_spec, options: the captioner to load (see `captioning.registry.load_captioner`).
        batch_size: images per model call.
        model_copies: share that many copies of the model across a worker's processes.
        on_load: called with each captioner this handler loads, in the process that loads it
            (with `model_copies`, the process that serves the shared model). Must pickle.
        stop_after_failed_batches: raise ModelBrokenError when this many first batches all fail
            at the caption stage with one error type and message; None never stops.
    """

    def __init__(
        self,
        model_spec: str | None,
        options: CaptionerOptions,
        batch_size: int,
        model_copies: int | None = None,
        *,
        on_load: Callable[[Captioner], None] | None = None,
        stop_after_failed_batches: int | None = STOP_AFTER_FAILED_BATCHES,
    ):
        # min = max: every batch is full except a bundle's last; Beam's adaptive sizing would
        # otherwise start at one image per batch, and our throughput depends on big batches.
        super().__init__(
            min_batch_size=batch_size, max_batch_size=batch_size, model_copies=model_copies
        )
        self._spec = model_spec
        self._options = options
        self._on_load = on_load
        self._watch = (
            BrokenModelWatch(stop_after_failed_batches) if stop_after_failed_batches else None
        )
        self._inference_ms = Metrics.distribution(NAMESPACE, "inference_ms_per_batch")
        self._model_ns = Metrics.counter(NAMESPACE, "inference_ns")

    def load_model(self) -> Captioner:
        self._options.set_up_process()  # once per worker process: threads, CPU heap policy
        captioner = load_captioner(self._spec, self._options)
        logger.info(
            "loaded captioner %s %s in process %d", captioner.name, captioner.version, os.getpid()
        )
        if self._on_load is not None:
            self._on_load(captioner)
        return captioner

    def get_metrics_namespace(self) -> str:
        return NAMESPACE

    def get_num_bytes(self, batch: Sequence[ImageInput]) -> int:
        # The bytes the model receives (preprocessed tensors); the default pickles the batch.
        def nbytes(inputs: Any) -> int:
            if isinstance(inputs, dict):
                return sum(nbytes(v) for v in inputs.values())
            return int(getattr(inputs, "nbytes", 0))

        return sum(nbytes(x.inputs) for x in batch)

    def run_inference(
        self,
        batch: Sequence[ImageInput],
        model: Captioner,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        # Inputs arrive preprocessed (DecodeImages ran the captioner's preprocessor): only CPU
        # tensors (or a plain JPEG's bytes) reach the model, which may live in another process
        # when it is shared.
        started = time.perf_counter_ns()
        results = caption_batch(model, [x.inputs for x in batch])
        elapsed_ns = time.perf_counter_ns() - started
        self._model_ns.inc(elapsed_ns)
        self._inference_ms.update(elapsed_ns // 1_000_000)
        if self._watch is not None and (broken := self._watch.see(results)) is not None:
            raise ModelBrokenError(
                f"the model failed every image of its first {self._watch.batches} batches "
                f"with {broken.error_type}: {broken.message}"
            )
        return [PredictionResult(x, r, self._spec) for x, r in zip(batch, results, strict=True)]
