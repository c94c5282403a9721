"""Beam's RunInference over our captioning backends: batches of ImageInput -> CaptionResults.

One ModelHandler serves every backend (native or Hugging Face): load_model builds the Captioner
named by the spec, run_inference captions a batch of preprocessed inputs. A batch that fails as a
whole is retried one image at a time, so one bad image costs one failure row, not a whole batch.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from captioning.api import Captioner, CaptionerOptions, CaptionResult
from captioning.images.decode import DecodeError
from captioning.images.device_decode import EncodedImage
from captioning.records import ImageInput
from captioning.registry import load_captioner

logger = logging.getLogger(__name__)
NAMESPACE = "imgindex"
LOAD_LOG_ENV = "IMGINDEX_MODEL_LOAD_LOG"  # a file to append one line per model load


@dataclass(frozen=True, slots=True)
class CaptionFailure:
    error_type: str
    message: str
    stage: str = "caption"  # "decode" for an image the model's device could not decode


class CaptionModelHandler(ModelHandler[ImageInput, PredictionResult, Captioner]):
    """Keyed by ImageInput: the record itself carries key, source and member to the output."""

    def __init__(
        self,
        model_spec: str | None,
        options: CaptionerOptions,
        batch_size: int,
        model_copies: int | None = None,
    ):
        # min = max: every batch is full except a bundle's last; Beam's adaptive sizing would
        # otherwise start at one image per batch, and our throughput depends on big batches.
        super().__init__(
            min_batch_size=batch_size, max_batch_size=batch_size, model_copies=model_copies
        )
        self._spec = model_spec
        self._options = options
        self._inference_ms = Metrics.distribution(NAMESPACE, "inference_ms_per_batch")
        self._model_ms = Metrics.counter(NAMESPACE, "inference_ms")

    def load_model(self) -> Captioner:
        self._options.set_up_process()  # once per worker process: threads, CPU heap policy
        captioner = load_captioner(self._spec, self._options)
        logger.info(
            "loaded captioner %s %s in process %d", captioner.name, captioner.version, os.getpid()
        )
        if log := os.environ.get(LOAD_LOG_ENV):  # lets a test count model loads across processes
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\n")
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
        # tensors reach the model, which may live in another process when it is shared. The
        # exception: plain JPEGs for a captioner that decodes on its device arrive as
        # EncodedImage and are decoded and preprocessed there, in one batch.
        started = time.perf_counter()
        results: list[CaptionResult | CaptionFailure | None] = [None] * len(batch)
        inputs = [x.inputs for x in batch]
        encoded = [i for i, v in enumerate(inputs) if isinstance(v, EncodedImage)]
        prepared = self._decode(model, [inputs[i].data for i in encoded])
        for i, p in zip(encoded, prepared, strict=True):
            if isinstance(p, CaptionFailure):
                results[i] = p
            else:
                inputs[i] = p
        todo = [i for i, r in enumerate(results) if r is None]
        for i, r in zip(todo, self._caption(model, [inputs[i] for i in todo]), strict=True):
            results[i] = r
        done = time.perf_counter()
        self._model_ms.inc(int((done - started) * 1000))
        self._inference_ms.update(int((done - started) * 1000))
        return [PredictionResult(x, r, self._spec) for x, r in zip(batch, results, strict=True)]

    @staticmethod
    def _decode(model: Captioner, datas: list[bytes]) -> list[Any]:
        """EncodedImages' bytes -> the model's inputs, or a decode CaptionFailure per file; a
        batch that fails as a whole (a device error) is retried one file at a time."""
        if not datas:
            return []
        try:
            prepared = model.preprocess_encoded(datas)  # type: ignore[attr-defined]
        except Exception as e:  # noqa: BLE001 - one failure row per file, never a lost batch
            if len(datas) == 1:
                return [CaptionFailure(type(e).__name__, _one_line(e), stage="decode")]
            logger.warning("decoding %d files on the device failed (%s); one by one", len(datas), e)
            return [CaptionModelHandler._decode(model, [d])[0] for d in datas]
        return [
            CaptionFailure(p.reason, p.message, stage="decode") if isinstance(p, DecodeError) else p
            for p in prepared
        ]

    def _caption(self, model: Captioner, inputs: list[Any]) -> list[CaptionResult | CaptionFailure]:
        if not inputs:
            return []
        try:
            return list(model.caption(inputs))
        except Exception as e:  # noqa: BLE001 - becomes a failure row per image, see below
            if len(inputs) == 1:
                return [CaptionFailure(type(e).__name__, _one_line(e))]
            logger.warning("a batch of %d failed (%s); retrying one by one", len(inputs), e)
            return [self._one(model, i) for i in inputs]

    @staticmethod
    def _one(model: Captioner, inputs: Any) -> CaptionResult | CaptionFailure:
        try:
            return model.caption([inputs])[0]
        except Exception as e:  # noqa: BLE001 - the image's failure row records it
            return CaptionFailure(type(e).__name__, _one_line(e))


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:500]
