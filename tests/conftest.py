"""Shared fixtures: tiny seeded models built in the test, never a network."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tiny models run fastest on one thread, and tests must not slow down whatever else shares the
# cores (an op split over threads waits for every thread). Subprocesses inherit OMP_NUM_THREADS.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def build_tiny_checkpoint(directory):
    """A 2-stage, randomly initialised Show-Attend-Tell model saved through the real code.

    Seeded, so its captions are deterministic (and nonsense: tests using it check plumbing).
    """
    from captioning.native.checkpoint import Checkpoint, save_checkpoint
    from captioning.native.model import CaptionModel, ModelConfig
    from captioning.native.vocab import Vocabulary

    torch.manual_seed(0)
    vocab = Vocabulary.build(
        [
            "a large red circle left of a small blue square",
            "two green triangles",
            "a small yellow star",
        ]
    )
    config = ModelConfig(
        vocab_size=len(vocab),
        image_size=32,
        encoder_channels=(8, 16),
        embed_dim=16,
        hidden_dim=32,
        attention_dim=16,
        max_length=8,
    )
    model = CaptionModel(config).eval()
    return save_checkpoint(directory, Checkpoint(model, vocab, "tiny", "t1"))


@pytest.fixture
def tiny_checkpoint(tmp_path):
    return build_tiny_checkpoint(tmp_path / "tiny-model")
