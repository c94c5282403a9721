"""Pipeline fixtures: a tiny caption model and the bad-input folder, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import build_tiny_checkpoint
from tests.indexing._helpers import build_tiny_sentence_transformer
from tests.pipelines.bad_inputs import write_bad_inputs


@pytest.fixture(scope="session")
def tiny_caption_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/conftest.py's `tiny_checkpoint`, built once so that module-scoped runs share it."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("models") / "tiny-model")


@pytest.fixture(scope="session")
def bad_input_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """(folder holding every bad input, (source name, member) -> stored image bytes)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    return root, write_bad_inputs(root)


@pytest.fixture(scope="session")
def tiny_embedder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random sentence-transformer directory (indexing tests build the same)."""
    return build_tiny_sentence_transformer(tmp_path_factory.mktemp("embedder") / "tiny-st")
