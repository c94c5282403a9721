"""Beam's RunInference over the text embedder: batches of CaptionText -> EmbeddedCaption
(SentenceEmbeddingHandler), or of distinct texts -> (text, vector) (TextEmbeddingHandler)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler

from indexing.assemble import CaptionText, EmbeddedCaption
from indexing.embed import EmbedderError, TextEmbedder, resolve_embedder

# pipelines.index.pipeline's namespace (it imports this module, so it cannot be imported here).
METRICS_NAMESPACE = "imgindex.index"


class SentenceEmbeddingHandler(ModelHandler[CaptionText, EmbeddedCaption, TextEmbedder]):
    """RunInference handler: CaptionText batches -> EmbeddedCaption, one per input.

    Identical caption texts in a batch go through the model once (TextEmbedder.embed dedupes).

    Args:
        embedder_name: ResolvedEmbedder.name (DEFAULT_EMBEDDER or an absolute local directory);
            resolved again where the model loads.
        embedder_sha256: the weights the launcher resolved; load_model refuses other weights, so
            the manifest written at the end names the model that made the vectors.
        batch_size: captions per batch.
        device: torch device; None lets sentence-transformers pick (a GPU when there is one).
        cpu_bf16: see TextEmbedder (bf16 autocast on CPUs with native bf16).
    """

    def __init__(
        self,
        embedder_name: str,
        embedder_sha256: str,
        batch_size: int,
        device: str | None = None,
        cpu_bf16: bool = True,
    ) -> None:
        super().__init__()
        self._embedder_name = embedder_name
        self._embedder_sha256 = embedder_sha256
        self._batch_size = batch_size
        self._device = device
        self._cpu_bf16 = cpu_bf16

    def load_model(self) -> TextEmbedder:
        resolved = resolve_embedder(self._embedder_name)
        if resolved.sha256 != self._embedder_sha256:
            raise EmbedderError(
                f"embedder {self._embedder_name!r} has weights with sha256 {resolved.sha256} "
                f"here but {self._embedder_sha256} where the pipeline was launched: install the "
                "same model on every worker"
            )
        return TextEmbedder(resolved, device=self._device, cpu_bf16=self._cpu_bf16)

    def run_inference(
        self,
        batch: Sequence[CaptionText],
        model: TextEmbedder,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[EmbeddedCaption]:
        texts = [c.caption for c in batch]
        # embed runs each distinct text through the model once and copies its row to repeats.
        repeats = len(texts) - len(set(texts))
        if repeats:
            Metrics.counter(METRICS_NAMESPACE, "repeated_captions_embedded_once").inc(repeats)
        vectors = model.embed(texts, batch_size=len(batch))  # (B, D)
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


class TextEmbeddingHandler(ModelHandler[str, tuple[str, np.ndarray], TextEmbedder]):
    """RunInference handler: batches of caption texts -> (text, unit vector (D,)), one per input.

    For texts already made distinct across the job (pipelines.index.dedupe), so each goes through
    the model once. Loads and checks the model as SentenceEmbeddingHandler does (same arguments).
    """

    def __init__(
        self,
        embedder_name: str,
        embedder_sha256: str,
        batch_size: int,
        device: str | None = None,
        cpu_bf16: bool = True,
    ) -> None:
        super().__init__()
        self._loader = SentenceEmbeddingHandler(
            embedder_name, embedder_sha256, batch_size, device, cpu_bf16
        )
        self._batch_size = batch_size

    def load_model(self) -> TextEmbedder:
        return self._loader.load_model()

    def run_inference(
        self,
        batch: Sequence[str],
        model: TextEmbedder,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[tuple[str, np.ndarray]]:
        vectors = model.embed(list(batch), batch_size=len(batch))  # (B, D)
        return list(zip(batch, vectors, strict=True))  # vector: (D,)

    def get_num_bytes(self, batch: Sequence[str]) -> int:
        return sum(len(text.encode("utf-8")) for text in batch)

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return self._loader.batch_elements_kwargs()
