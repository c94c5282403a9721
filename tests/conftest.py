"""Shared fixtures: tiny seeded models built in the test, never a network."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch

# Non-loopback network is blocked in this process and in every process the suite starts (the CLI,
# Beam workers): the guard installs itself through sitecustomize on PYTHONPATH.
_NETGUARD = Path(__file__).parent / "netguard"
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(_NETGUARD), os.environ.get("PYTHONPATH")) if p
)
sys.path.insert(0, str(_NETGUARD))
import sitecustomize  # noqa: E402 - installs the guard in this process

assert sitecustomize.__file__ == str(_NETGUARD / "sitecustomize.py"), sitecustomize.__file__

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
    from captioning.native.config import ModelConfig
    from captioning.native.model import CaptionModel
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


@pytest.fixture(autouse=True)
def network_is_blocked():
    """Every test runs with the guard in place (a test cannot have removed it)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(OSError, match="blocks network access"):
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed
    finally:
        probe.close()
    yield
