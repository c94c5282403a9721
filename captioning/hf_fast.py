"""A loaded transformers model -> the same model with two narrow speed fixes transformers lacks.

Each fix changes how a result is computed, never the result (tests/captioning/test_hf_fast.py
holds each against the unpatched model):

- BLIP's vision attention (`BlipAttention`) is eager and not dispatched through transformers'
  attention registry, so `attn_implementation="sdpa"` cannot reach it. At 384 px it materialises
  (B, heads, 577, 577) probabilities per layer. `F.scaled_dot_product_attention` computes the same
  thing without them (flash/memory-efficient kernels on a GPU).
- GIT's generate expands `pixel_values` to batch x beams before its image encoder runs, so beam
  search encodes every image `num_beams` times. The encoder then runs on each distinct image once
  and its output is repeated, as for BLIP and the encoder-decoder families.

Written by hand because no library does either; both patch one model instance (an instance
attribute over the class's `forward`), never the transformers classes themselves.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["encode_each_image_once", "sdpa_blip_vision", "speed_up", "undo_speed_ups"]


def speed_up(model: nn.Module, family: str) -> list[str]:
    """Apply the fixes that fit `family` to `model` in place; return what was applied."""
    applied = []
    if family == "blip" and sdpa_blip_vision(model):
        applied.append("sdpa-vision")
    if family == "git":
        encoder = getattr(getattr(model, "git", None), "image_encoder", None)
        if encoder is not None:
            encode_each_image_once(encoder)
            applied.append("encode-once")
    if applied:
        logger.info("speed fixes for %s: %s", type(model).__name__, ", ".join(applied))
    return applied


def undo_speed_ups(model: nn.Module) -> None:
    """Drop every instance-level forward, so the transformers classes' own run again (A/B)."""
    for module in model.modules():
        module.__dict__.pop("forward", None)


# -- BLIP vision attention through SDPA -------------------------------------------------------
def sdpa_blip_vision(model: nn.Module) -> int:
    """Route every `BlipAttention` of `model.vision_model` through SDPA; return how many.

    Skips modules that do not look like the eager BlipAttention this was written against (a
    future transformers may change it), so an unknown layout runs unpatched rather than wrong.
    """
    vision = getattr(model, "vision_model", None)
    if vision is None:
        return 0
    count = 0
    for module in vision.modules():
        if type(module).__name__ != "BlipAttention":
            continue
        if not all(hasattr(module, a) for a in ("qkv", "projection", "num_heads", "head_dim")):
            logger.warning("BlipAttention without qkv/projection: left eager")
            continue
        module.forward = functools.partial(_blip_sdpa_forward, module)  # type: ignore[method-assign]
        count += 1
    return count


def _blip_sdpa_forward(
    module: Any, hidden_states: torch.Tensor, **_: Any
) -> tuple[torch.Tensor, None]:
    """BlipAttention.forward, with SDPA in place of matmul-softmax-matmul (no weights returned)."""
    b, t, d = hidden_states.shape
    qkv = module.qkv(hidden_states)  # (B, T, 3D)
    qkv = qkv.reshape(b, t, 3, module.num_heads, module.head_dim)  # (B, T, 3, H, Dh)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, Dh)
    drop = module.dropout.p if module.training else 0.0
    ctx = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=module.scale)
    ctx = ctx.transpose(1, 2).reshape(b, t, d)  # (B, H, T, Dh) -> (B, T, D)
    return module.projection(ctx), None


# -- one encoder pass per distinct image ------------------------------------------------------
def encode_each_image_once(encoder: nn.Module) -> None:
    """Make `encoder(pixel_values, ...)` run on each run of identical consecutive images once.

    `generate` expands inputs with `repeat_interleave`, so a beam-expanded batch is runs of equal
    rows. Equal rows are found exactly (elementwise), so distinct images are never merged.
    """
    encoder.forward = _once_per_image(encoder.forward)  # type: ignore[method-assign]


def _once_per_image(forward: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(forward)
    def run(pixel_values: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        n = pixel_values.shape[0]
        if n < 2:
            return forward(pixel_values, *args, **kwargs)
        flat = pixel_values.reshape(n, -1)  # (N, C*H*W)
        starts = torch.ones(n, dtype=torch.bool, device=pixel_values.device)  # (N,)
        starts[1:] = (flat[1:] != flat[:-1]).any(dim=1)  # a row that differs from the one before
        if bool(starts.all()):
            return forward(pixel_values, *args, **kwargs)
        distinct = starts.nonzero().squeeze(1)  # (U,)
        source = starts.cumsum(0) - 1  # (N,) row i's index among the U distinct rows
        out = forward(pixel_values[distinct], *args, **kwargs)  # outputs for (U, ...)
        return _take(out, source, len(distinct))

    return run


def _take(out: Any, index: torch.Tensor, rows: int) -> Any:
    """Every batch-first tensor in `out` (a tensor, tuple or ModelOutput) indexed by `index`."""
    if isinstance(out, torch.Tensor):
        return out.index_select(0, index.to(out.device)) if out.dim() and len(out) == rows else out
    if type(out) is tuple:
        return tuple(_take(x, index, rows) for x in out)
    if hasattr(out, "keys"):  # transformers ModelOutput: rebuild it with the same fields
        return type(out)(**{k: _take(v, index, rows) for k, v in out.items()})
    return out
