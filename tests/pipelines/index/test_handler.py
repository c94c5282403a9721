"""SentenceEmbeddingHandler: repeated captions in a batch reach the model once."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from indexing.assemble import CaptionText
from indexing.embed import resolve_embedder
from pipelines.index.handler import SentenceEmbeddingHandler
from tests.indexing._helpers import CountingEmbedder


def test_repeated_captions_are_embedded_once_and_match_one_at_a_time(
    tiny_embedder_dir: Path,
) -> None:
    model = CountingEmbedder(resolve_embedder(str(tiny_embedder_dir)), device="cpu")
    model.calls.clear()
    handler = SentenceEmbeddingHandler(model.name, model.sha256, batch_size=6)
    texts = ["a red circle", "a blue star", "a red circle", "a red circle", "x", "a blue star"]
    batch = [CaptionText(f"k{i}", t, "s", f"{i}.png") for i, t in enumerate(texts)]
    results = list(handler.run_inference(batch, model))
    assert model.calls == [["a red circle", "a blue star", "x"]]
    assert [r.caption for r in results] == batch
    for result in results:
        single = model.embed([result.caption.caption], batch_size=1)[0]  # (D,)
        np.testing.assert_allclose(result.vector, single, atol=1e-5)
