"""A loaded transformers model -> the same model with narrow speed fixes transformers lacks.

Each fix changes how a result is computed, never the result (tests/captioning/hf/test_patches.py
holds each against the unpatched model):

- BLIP's vision attention (`BlipAttention`) is eager and not dispatched through transformers'
  attention registry, so `attn_implementation="sdpa"` cannot reach it. At 384 px it materialises
  (B, heads, 577, 577) probabilities per layer. `F.scaled_dot_product_attention` computes the same
  thing without them (flash/memory-efficient kernels on a GPU).
- Beam search expands its inputs to batch x beams (`repeat_interleave`) before work that depends
  only on the image, so that work ran `num_beams` times per image:
  - GIT's image encoder (its generate expands `pixel_values`);
  - the cross-attention key/value projections of the text decoder over the image features (BLIP,
    VisionEncoderDecoder, Florence-2: their encoder outputs are expanded), about 16 GFLOP per
    copy for BLIP-base's 577 image tokens.
  Those modules now compute each run of identical consecutive rows once and repeat the result.

Written by hand because no library does either; each patches one model instance (an instance
attribute over the class's `forward`), never the transformers classes themselves.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Collection
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "CROSS_KV",
    "FIXES",
    "once_per_distinct_row",
    "sdpa_blip_vision",
    "speed_up",
    "undo_speed_ups",
]

# What speed_up can apply; the benchmarks pass a subset to measure one kind at a time.
FIXES = ("sdpa-vision", "encode-once", "cross-kv-once")

# Names (suffixes) of modules that project a text decoder's cross-attention keys/values from the
# image side: BLIP / BERT-style decoders, GPT-2, BART (Florence-2) and its kin. Each is a
# cross-attention-only module, called on the encoder's output.
CROSS_KV = (
    "crossattention.self.key",
    "crossattention.self.value",
    "crossattention.c_attn",
    "encoder_attn.k_proj",
    "encoder_attn.v_proj",
)
_CROSS_KV_FAMILIES = ("blip", "vision-encoder-decoder", "florence2")


def speed_up(model: nn.Module, family: str, fixes: Collection[str] = FIXES) -> list[str]:
    """Apply those of `fixes` that fit `family` to `model` in place; return what was applied."""
    applied = []
    if "sdpa-vision" in fixes and family == "blip" and sdpa_blip_vision(model):
        applied.append("sdpa-vision")
    if "encode-once" in fixes and family == "git":
        encoder = getattr(getattr(model, "git", None), "image_encoder", None)
        if encoder is not None:
            once_per_distinct_row(encoder)
            applied.append("encode-once")
    if "cross-kv-once" in fixes and family in _CROSS_KV_FAMILIES:
        projections = [m for n, m in model.named_modules() if n.endswith(CROSS_KV)]
        for m in projections:
            once_per_distinct_row(m)
        if projections:
            applied.append("cross-kv-once")
    if applied:
        logger.info("speed fixes for %s: %s", type(model).__name__, ", ".join(applied))
    return applied


def undo_speed_ups(model: nn.Module) -> None:
    """Drop every instance-level forward, so the transformers classes' own run again (A/B)."""
    for module in model.modules():
        module.__dict__.pop("forward", None)


# -- BLIP vision attention through SDPA -------------------------------------------------------
# Parameters the SDPA forward stands in for: transformers 5.24 takes hidden_states and **kwargs;
# head_mask and output_attentions (older versions) are never set by our generate calls.
_BLIP_ATTENTION_ARGS = {"self", "hidden_states", "head_mask", "output_attentions", "kwargs"}
_BLIP_ATTENTION_PARTS = ("qkv", "projection", "num_heads", "head_dim", "scale", "dropout")


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
        if not all(hasattr(module, a) for a in _BLIP_ATTENTION_PARTS):
            logger.warning("BlipAttention without qkv/projection: left eager")
            continue
        takes = set(inspect.signature(type(module).forward).parameters) - _BLIP_ATTENTION_ARGS
        if takes:  # e.g. an attention mask this SDPA call would ignore
            logger.warning("BlipAttention.forward also takes %s: left eager", sorted(takes))
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


# -- one pass per distinct input row ----------------------------------------------------------
def once_per_distinct_row(module: nn.Module) -> None:
    """Make `module(x, ...)` compute each run of identical consecutive rows of `x` once.

    `generate` expands inputs with `repeat_interleave`, so a beam-expanded batch is runs of equal
    rows. Equal rows are found exactly (elementwise), and equal inputs give equal outputs, so the
    result is the same; a batch with no repeats goes through untouched.
    """
    module.forward = _once_per_row(module.forward)  # type: ignore[method-assign]


def _once_per_row(forward: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(forward)
    def run(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        n = x.shape[0]
        if n < 2:
            return forward(x, *args, **kwargs)
        starts = _run_starts(x.reshape(n, -1))  # (N, ...) -> (N, F) -> (N,)
        if bool(starts.all()):
            return forward(x, *args, **kwargs)
        distinct = starts.nonzero().squeeze(1)  # (U,)
        source = starts.cumsum(0) - 1  # (N,) row i's index among the U distinct rows
        out = forward(x[distinct], *args, **kwargs)  # outputs for (U, ...)
        return _take(out, source, len(distinct))

    return run


_PROBE = 64  # leading values compared first: rows of different images differ there already


def _run_starts(flat: torch.Tensor) -> torch.Tensor:
    """(N, F) -> (N,) bool: row i differs from row i-1 (row 0 always starts a run).

    Exact, but cheap when rows differ: only pairs whose first _PROBE values agree are compared in
    full, so a greedy batch of distinct images costs (N, 64) comparisons, not (N, F).
    """
    n = flat.shape[0]
    starts = torch.ones(n, dtype=torch.bool, device=flat.device)  # (N,)
    head = flat[:, :_PROBE]  # (N, min(F, 64))
    maybe_same = (head[1:] == head[:-1]).all(dim=1).nonzero().squeeze(1)  # (M,) pairs (i, i+1)
    if len(maybe_same):
        differs = (flat[maybe_same + 1] != flat[maybe_same]).any(dim=1)  # (M, F) -> (M,)
        starts[maybe_same + 1] = differs
    return starts


def _take(out: Any, index: torch.Tensor, rows: int) -> Any:
    """Every batch-first tensor in `out` (a tensor, tuple or ModelOutput) indexed by `index`."""
    if isinstance(out, torch.Tensor):
        return out.index_select(0, index.to(out.device)) if out.dim() and len(out) == rows else out
    if type(out) is tuple:
        return tuple(_take(x, index, rows) for x in out)
    if hasattr(out, "keys"):  # transformers ModelOutput: rebuild it with the same fields
        return type(out)(**{k: _take(v, index, rows) for k, v in out.items()})
    return out
