"""RGB PIL image -> model input: uint8 (3, S, S) to store, float (B, 3, S, S) to compute."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_model_input(image: Image.Image, size: int) -> torch.Tensor:
    """Squash to size x size (aspect is not kept: the model is trained on squashed images)."""
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode}: decode it first")
    # reducing_gap: a box pre-reduction for big images, then an antialiased bilinear resize.
    small = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    arr = np.asarray(small, dtype=np.uint8)  # (S, S, 3)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)  # (S, S, 3) -> (3, S, S)


def normalize(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float32 in [-1, 1]."""
    return batch.float().div_(127.5).sub_(1.0)
