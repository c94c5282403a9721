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
    VisionEncoderDecoder with GPT-2, Florence-2's BART), about 16 GFLOP per copy for
    BLIP-base's 577 image tokens.
  Those modules now compute each run of identical consecutive rows once and repeat the result.

Written by hand because no library does either. Each patches one model instance (an instance
attribute over the class's `forward`), never the transformers classes themselves, and only:
- on the transformers versions the fixes were checked against (TESTED_TRANSFORMERS); on any other
  version the model runs unpatched;
- on modules that are instances of the transformers classes they were written for (never chosen
  by name, so a look-alike class from remote code or another library is left alone).
Every patched module records what it replaced, so `speed_up` twice is `speed_up` once and
`undo_speed_ups` restores exactly that, leaving other instance-level forwards (hooks) in place.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "FIXES",
    "TESTED_TRANSFORMERS",
    "cross_kv_projections",
    "once_per_distinct_row",
    "sdpa_blip_vision",
    "speed_up",
    "transformers_is_tested",
    "undo_speed_ups",
]

# What speed_up can apply; the benchmarks pass a subset to measure one kind at a time.
FIXES = ("sdpa-vision", "encode-once", "cross-kv-once")

# The transformers versions whose BLIP, GIT, GPT-2 and BART code the fixes were checked against
# (pyproject.toml's range); a release outside it may change what a patched module computes.
TESTED_TRANSFORMERS = (">=5.24", "<6")

_CROSS_KV_FAMILIES = ("blip", "vision-encoder-decoder", "florence2")
_RECORD = "_imgindex_speed_up"  # instance attribute of each patched module: its _Patch


@dataclass(frozen=True, slots=True)
class _Patch:
    fix: str  # one of FIXES, for messages
    replaced: Callable[..., Any] | None  # the instance-level forward before it; None: the class's
    forward: Callable[..., Any]  # the forward the fix installed


def speed_up(model: nn.Module, family: str, fixes: Collection[str] = FIXES) -> list[str]:
    """Apply those of `fixes` that fit `family` to `model` in place.

    Idempotent: modules patched by an earlier call are left as they are.

    Args:
        model: a loaded transformers model.
        family: its family in the registry ("blip", "git", ...): which fixes can apply.
        fixes: a subset of FIXES.

    Returns:
        Those of `fixes` now in effect on `model`, in FIXES order; [] on a transformers version
        outside TESTED_TRANSFORMERS.
    """
    if not transformers_is_tested():
        return []
    applied = []
    if "sdpa-vision" in fixes and family == "blip" and sdpa_blip_vision(model):
        applied.append("sdpa-vision")
    if "encode-once" in fixes and family == "git":
        encoders = _git_image_encoders(model)
        for encoder in encoders:
            once_per_distinct_row(encoder, batch_fields=_ENCODER_BATCH_FIELDS, fix="encode-once")
        if encoders:
            applied.append("encode-once")
    if "cross-kv-once" in fixes and family in _CROSS_KV_FAMILIES:
        projections = cross_kv_projections(model)
        for m in projections:
            once_per_distinct_row(m, fix="cross-kv-once")
        if projections:
            applied.append("cross-kv-once")
    if applied:
        logger.info("speed fixes for %s: %s", type(model).__name__, ", ".join(applied))
    return applied


def undo_speed_ups(model: nn.Module) -> None:
    """Restore every forward speed_up replaced, so the transformers classes' own run again (A/B).

    Instance-level forwards speed_up did not install (another library's hooks) stay. A patched
    forward that something else has since wrapped is left patched, with a warning: removing it
    would remove the wrapper too.
    """
    for module in model.modules():
        record: _Patch | None = module.__dict__.get(_RECORD)
        if record is None:
            continue
        if module.__dict__.get("forward") is not record.forward:
            logger.warning(
                "%s.forward was replaced after speed_up (%s): left as it is",
                type(module).__name__,
                record.fix,
            )
            continue
        del module.__dict__[_RECORD]
        if record.replaced is None:
            del module.__dict__["forward"]
        else:
            module.forward = record.replaced  # type: ignore[method-assign]


def transformers_is_tested() -> bool:
    """Whether the installed transformers is in TESTED_TRANSFORMERS (says so once if not)."""
    import transformers  # here: transformers swaps its module object in sys.modules as it loads

    return _is_tested(transformers.__version__)


@functools.cache
def _is_tested(version: str) -> bool:
    try:
        tested = SpecifierSet(",".join(TESTED_TRANSFORMERS)).contains(
            Version(version), prereleases=True
        )
    except InvalidVersion:
        tested = False
    if not tested:
        logger.warning(
            "transformers %s is outside the versions the speed fixes were tested on (%s): "
            "running the models unpatched",
            version,
            ",".join(TESTED_TRANSFORMERS),
        )
    return tested


def _patch(module: nn.Module, fix: str, make: Callable[[nn.Module], Callable[..., Any]]) -> None:
    """Make `make(module)` the module's forward, once, recording what it replaced."""
    if _RECORD in module.__dict__:
        return
    replaced = module.__dict__.get("forward")
    forward = make(module)
    module.forward = forward  # type: ignore[method-assign]
    setattr(module, _RECORD, _Patch(fix, replaced, forward))


# -- BLIP vision attention through SDPA -------------------------------------------------------
# Parameters the SDPA forward stands in for: transformers 5.24 takes hidden_states and **kwargs;
# head_mask and output_attentions (older versions) are never set by our generate calls.
_BLIP_ATTENTION_ARGS = {"self", "hidden_states", "head_mask", "output_attentions", "kwargs"}
_BLIP_ATTENTION_PARTS = ("qkv", "projection", "num_heads", "head_dim", "scale", "dropout")


def sdpa_blip_vision(model: nn.Module) -> int:
    """Route every transformers `BlipAttention` in `model` through SDPA; return how many are.

    Skips modules that do not look like the eager BlipAttention this was written against (a
    subclass may change it), and modules whose forward is already replaced on the instance (a
    hook this would drop), so those run unpatched rather than wrong.
    """
    from transformers.models.blip.modeling_blip import BlipAttention

    count = 0
    for module in model.modules():
        if not isinstance(module, BlipAttention):
            continue
        if _RECORD in module.__dict__:
            count += 1
            continue
        if not all(hasattr(module, a) for a in _BLIP_ATTENTION_PARTS):
            logger.warning("BlipAttention without qkv/projection: left eager")
            continue
        takes = set(inspect.signature(type(module).forward).parameters) - _BLIP_ATTENTION_ARGS
        if takes:  # e.g. an attention mask this SDPA call would ignore
            logger.warning("BlipAttention.forward also takes %s: left eager", sorted(takes))
            continue
        if "forward" in module.__dict__:
            logger.warning("BlipAttention has an instance-level forward (a hook?): left eager")
            continue
        _patch(module, "sdpa-vision", _sdpa_forward)
        count += 1
    return count


def _sdpa_forward(module: nn.Module) -> Callable[..., Any]:
    return functools.partial(_blip_sdpa_forward, module)


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


# -- which modules see beam-expanded image rows -----------------------------------------------
# The fields of GitVisionModel's BaseModelOutput, all computed from the batched pixels.
_ENCODER_BATCH_FIELDS = frozenset({"last_hidden_state", "hidden_states", "attentions"})


def _git_image_encoders(model: nn.Module) -> list[nn.Module]:
    from transformers.models.git.modeling_git import GitVisionModel

    return [m for m in model.modules() if isinstance(m, GitVisionModel)]


def cross_kv_projections(model: nn.Module) -> list[nn.Module]:
    """The key/value projections of a text decoder's cross-attention over the image features:
    BLIP's text decoder, GPT-2 (VisionEncoderDecoder) and BART (Florence-2) layers."""
    from transformers.models.bart.modeling_bart import BartDecoderLayer
    from transformers.models.blip.modeling_blip_text import BlipTextLayer
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    found: list[nn.Module] = []
    for m in model.modules():
        if isinstance(m, BlipTextLayer) and hasattr(m, "crossattention"):  # decoders only
            found += [m.crossattention.self.key, m.crossattention.self.value]
        elif isinstance(m, GPT2Block) and hasattr(m, "crossattention"):  # add_cross_attention
            found.append(m.crossattention.c_attn)  # keys and values in one projection
        elif isinstance(m, BartDecoderLayer):
            found += [m.encoder_attn.k_proj, m.encoder_attn.v_proj]
    return found


# -- one pass per distinct input row ----------------------------------------------------------
def once_per_distinct_row(
    module: nn.Module, batch_fields: Collection[str] = (), fix: str = "once-per-distinct-row"
) -> None:
    """Make `module(x, ...)` compute each run of identical consecutive rows of `x` once.

    `generate` expands inputs with `repeat_interleave`, so a beam-expanded batch is runs of equal
    rows. Equal rows are found exactly (elementwise), and equal inputs give equal outputs, so the
    result is the same; a batch with no repeats goes through untouched. What counts as a per-row
    result is said by the module's output contract, see `_expand`. Patching twice is a no-op.

    Args:
        module: a module whose output rows depend only on the same input rows.
        batch_fields: when it returns a ModelOutput, the fields computed from the batched input.
        fix: the name recorded with the patch (speed_up's is one of FIXES).
    """
    _patch(module, fix, lambda m: _once_per_row(m.forward, batch_fields))


def _once_per_row(
    forward: Callable[..., Any], batch_fields: Collection[str] = ()
) -> Callable[..., Any]:
    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[0] < 2:
            return forward(*args, **kwargs)
        n = x.shape[0]
        starts = _run_starts(x.reshape(n, -1))  # (N, ...) -> (N, F) -> (N,)
        if bool(starts.all()):
            return forward(*args, **kwargs)
        distinct = starts.nonzero().squeeze(1)  # (U,)
        source = starts.cumsum(0) - 1  # (N,) row i's index among the U distinct rows
        out = forward(x[distinct], *args[1:], **kwargs)  # outputs for (U, ...)
        try:
            return _expand(out, source, len(distinct), batch_fields)
        except _NotPerRow as why:
            logger.debug("%s: ran on all %d rows instead", why, n)
            return forward(*args, **kwargs)

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


class _NotPerRow(Exception):
    """An output _expand cannot map back to all rows with certainty."""


def _expand(out: Any, index: torch.Tensor, rows: int, batch_fields: Collection[str]) -> Any:
    """The output for U distinct rows -> the output for all N rows: `index` (N,) picks each row.

    Only tensors that came from the batched input are indexed along dimension 0, and each must
    have U rows: the output itself when it is a tensor (the module maps rows to rows), or the
    `batch_fields` of a ModelOutput (tensors or tuples of tensors). Its other fields are returned
    as computed, even when their first dimension happens to be U: they do not depend on the batch.
    Any other output (a plain tuple, whose positions say nothing) raises _NotPerRow.
    """
    if isinstance(out, torch.Tensor):
        return _take(out, index, rows)
    if not hasattr(out, "keys"):
        raise _NotPerRow(f"{type(out).__name__} output")
    fields: dict[str, Any] = {}
    for k, v in out.items():  # transformers ModelOutput: rebuild it with the same fields
        if k not in batch_fields:
            fields[k] = v
        elif type(v) is tuple:
            fields[k] = tuple(_take(t, index, rows) for t in v)
        else:
            fields[k] = _take(v, index, rows)
    return type(out)(**fields)


def _take(t: Any, index: torch.Tensor, rows: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dim() == 0 or len(t) != rows:
        raise _NotPerRow(f"a per-row output of shape {getattr(t, 'shape', type(t))}")
    return t.index_select(0, index.to(t.device))  # (U, ...) -> (N, ...)
