"""Pipeline fixtures: a tiny caption model and the bad-input folder, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.pipelines.bad_inputs import write_bad_inputs


@pytest.fixture(scope="session")
def tiny_caption_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/conftest.py's `tiny_checkpoint`, built once so that module-scoped runs can share it.

    Same seed and config, so captions are deterministic (and nonsense: these tests check where
    each image ends up, not what is said about it).
    """
    from captioning.checkpoint import Checkpoint, save_checkpoint
    from captioning.model import CaptionModel, ModelConfig
    from captioning.vocab import Vocabulary

    torch.manual_seed(0)
    vocab = Vocabulary.build(["a large red circle left of a small blue square",
                              "two green triangles", "a small yellow star"])
    config = ModelConfig(vocab_size=len(vocab), image_size=32, encoder_channels=(8, 16),
                         embed_dim=16, hidden_dim=32, attention_dim=16, max_length=8)
    model = CaptionModel(config).eval()
    return save_checkpoint(tmp_path_factory.mktemp("models") / "tiny-model",
                           Checkpoint(model, vocab, "tiny", "t1"))


@pytest.fixture(scope="session")
def bad_input_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """(folder holding every bad input, (source name, member) -> stored image bytes)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    return root, write_bad_inputs(root)
