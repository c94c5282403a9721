"""Session fixtures: the real packaged MiniLM and a tiny random sentence-transformer."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexing.embed import DEFAULT_EMBEDDER, TextEmbedder, resolve_embedder
from tests.indexing._helpers import build_tiny_sentence_transformer


@pytest.fixture(scope="session")
def minilm() -> TextEmbedder:
    """The packaged all-MiniLM-L6-v2 (90 MB), loaded once for the whole session."""
    return TextEmbedder(DEFAULT_EMBEDDER, device="cpu")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sentence_transformer(tmp_path_factory.mktemp("models") / "tiny-st")


@pytest.fixture(scope="session")
def tiny_embedder(tiny_model_dir: Path) -> TextEmbedder:
    """The tiny model, loaded through resolve_embedder as a local directory."""
    return TextEmbedder(resolve_embedder(str(tiny_model_dir)), device="cpu")
