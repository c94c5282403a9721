"""An image + the model -> the paper's figure: one panel per generated word, lit where it looked.

Drawn with Pillow alone (no plotting library): each panel is the image, darkened where the word's
attention is low, with the word beneath it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from captioning.native.captioner import NativeCaptioner

PANEL = 192
LABEL = 22
COLUMNS = 5


def attention_figure(captioner: NativeCaptioner, image: Image.Image) -> tuple[str, Image.Image]:
    """Caption `image` and draw where each word attended. Returns (caption, figure)."""
    out = captioner.run([captioner.preprocess(image)])
    tokens = out.tokens[0]
    words = [captioner.vocab.tokens[t] for t in tokens]
    g = captioner.model.config.grid_size
    alphas = out.alphas[0, : len(words)].reshape(len(words), g, g)  # (T, N) -> (T, G, G)
    base = image.resize((PANEL, PANEL), Image.Resampling.BILINEAR)
    panels = [(base, "<image>")]
    for word, alpha in zip(words, alphas, strict=True):
        heat = torch.nn.functional.interpolate(
            alpha[None, None].float(), size=(PANEL, PANEL), mode="bilinear", align_corners=False
        )[0, 0]  # (G, G) -> (PANEL, PANEL)
        heat = heat / heat.max().clamp(min=1e-8)
        shade = (0.25 + 0.75 * heat.cpu().numpy())[..., None]  # (P, P, 1): dim, never black
        lit = (np.asarray(base, dtype=np.float32) * shade).astype(np.uint8)
        panels.append((Image.fromarray(lit), word))
    rows = math.ceil(len(panels) / COLUMNS)
    cols = min(COLUMNS, len(panels))
    fig = Image.new("RGB", (cols * PANEL, rows * (PANEL + LABEL)), "white")
    draw = ImageDraw.Draw(fig)
    font = ImageFont.load_default()
    for i, (panel, word) in enumerate(panels):
        x, y = (i % COLUMNS) * PANEL, (i // COLUMNS) * (PANEL + LABEL)
        fig.paste(panel, (x, y))
        draw.text((x + 6, y + PANEL + 4), word, fill="black", font=font)
    return " ".join(words), fig
