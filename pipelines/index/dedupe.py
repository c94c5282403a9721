"""CaptionText -> EmbeddedCaption, each distinct caption text through the model once per job.

Generated and model-written captions repeat: the synthetic world's canonical captions, and any
captioner's stock phrases. TextEmbedder.embed already embeds a repeat once within one batch; this
transform does it across the whole job: the distinct texts (Distinct, a shuffle keyed by text) go
through RunInference(TextEmbeddingHandler), and each (text, vector) is joined back to the rows
that carry the text (CoGroupByKey on the text). Every row of one text meets its vector in one
place; Beam's grouped values are iterables, which runners such as Dataflow page in rather than
hold, so a text repeated by millions of rows is not a list in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference

from indexing.assemble import CaptionText, EmbeddedCaption
from pipelines.index.handler import METRICS_NAMESPACE, TextEmbeddingHandler


class AttachVectors(beam.DoFn):
    """(text, {"captions": rows, "vectors": [vector]}) -> one EmbeddedCaption per row."""

    def __init__(self) -> None:
        self._distinct = Metrics.counter(METRICS_NAMESPACE, "distinct_caption_texts")
        self._repeats = Metrics.counter(METRICS_NAMESPACE, "repeated_captions_embedded_once")

    def process(self, joined: tuple[str, Mapping[str, Iterable[Any]]]) -> Iterator[EmbeddedCaption]:
        text, groups = joined
        vectors: list[np.ndarray] = list(groups["vectors"])
        if len(vectors) != 1:
            raise RuntimeError(f"caption text {text!r} got {len(vectors)} vectors, expected 1")
        rows = 0
        for caption in groups["captions"]:
            rows += 1
            yield EmbeddedCaption(caption, vectors[0])  # vector: (D,), shared by the repeats
        self._distinct.inc()
        self._repeats.inc(max(0, rows - 1))


def _text(caption: CaptionText) -> str:
    return caption.caption


def _keyed_by_text(caption: CaptionText) -> tuple[str, CaptionText]:
    return caption.caption, caption


class EmbedDistinctTexts(beam.PTransform):
    """CaptionText -> EmbeddedCaption; each distinct text embedded once (module docstring)."""

    def __init__(self, handler: TextEmbeddingHandler) -> None:
        super().__init__()
        self._handler = handler

    def expand(self, captions: beam.PCollection) -> beam.PCollection:
        vectors = (
            captions
            | "CaptionTexts" >> beam.Map(_text)
            | "DistinctTexts" >> beam.Distinct()
            | "EmbedTexts" >> RunInference(self._handler)
        )
        keyed = captions | "KeyByText" >> beam.Map(_keyed_by_text)
        return (
            {"captions": keyed, "vectors": vectors}
            | "JoinVectors" >> beam.CoGroupByKey()
            | "AttachVectors" >> beam.ParDo(AttachVectors())
        )
