"""Features -> word ids: greedy decoding and batched beam search over a CaptionModel.

Both decode a whole batch at once. Beam search keeps (B, K) hypotheses in flat (B*K) tensors;
a finished hypothesis is frozen (it may only emit <pad> at no cost) so that every image's beams
advance in lock-step and the batch never falls back to a Python loop per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from captioning.errors import CaptioningError
from captioning.native.model import CaptionModel
from captioning.native.vocab import END_ID, PAD_ID, START_ID


@dataclass(frozen=True, slots=True)
class DecodeOptions:
    beam_size: int = 1  # 1 = greedy
    max_length: int = 24
    length_penalty: float = 1.0  # score / length ** length_penalty; 0 = raw log-probability

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise CaptioningError(f"beam size must be at least 1, got {self.beam_size}")
        if self.max_length < 1:
            raise CaptioningError(f"max length must be at least 1, got {self.max_length}")
        if self.length_penalty < 0:
            raise CaptioningError(f"length penalty must be >= 0, got {self.length_penalty}")


@dataclass(frozen=True, slots=True)
class Decoded:
    tokens: list[list[int]]  # per image, word ids without <start>/<end>
    scores: torch.Tensor  # (B,) length-normalised log-probability of the chosen caption
    alphas: torch.Tensor  # (B, T, N) attention of each emitted word over the grid
    candidates: list[list[list[int]]]  # per image, every hypothesis, best first (tokens[i] first)


@torch.inference_mode()
def greedy(model: CaptionModel, images: torch.Tensor, max_length: int = 24) -> Decoded:
    """The most likely word at every step; stops when every image has emitted <end>."""
    feats = model.encoder(images)  # (B, N, C)
    dec = model.decoder
    feats_proj = dec.attention.project(feats)  # (B, N, A)
    state = dec.init_state(feats)
    b = feats.size(0)
    tokens = torch.full((b,), START_ID, dtype=torch.long, device=images.device)
    finished = torch.zeros(b, dtype=torch.bool, device=images.device)
    score = torch.zeros(b, device=images.device)
    out, alphas = [], []
    for _ in range(max_length + 1):  # + 1 for <end>
        logits, state, alpha = dec.step(tokens, state, feats, feats_proj)  # (B, V), .., (B, N)
        logp, tokens = torch.log_softmax(logits, dim=1).max(dim=1)  # (B,), (B,)
        score = score + torch.where(finished, 0.0, logp)
        tokens = torch.where(finished, PAD_ID, tokens)
        out.append(tokens)
        alphas.append(alpha)
        finished = finished | (tokens == END_ID)
        if bool(finished.all()):
            break
    seqs = [_strip(row) for row in torch.stack(out, 1).tolist()]
    steps = max((len(s) for s in seqs), default=0)
    return Decoded(
        tokens=seqs,
        scores=score,
        alphas=torch.stack(alphas, 1)[:, :steps],
        candidates=[[s] for s in seqs],
    )


def _strip(seq: list[int]) -> list[int]:
    out = []
    for t in seq:
        if t in (END_ID, PAD_ID):
            break
        out.append(t)
    return out


@torch.inference_mode()
def beam_search(model: CaptionModel, images: torch.Tensor, options: DecodeOptions) -> Decoded:
    """Decode images (B, 3, S, S); with beam_size 1 this is exactly greedy decoding."""
    k = options.beam_size
    feats = model.encoder(images)  # (B, N, C)
    b, n, c = feats.shape
    dec = model.decoder
    feats = feats.repeat_interleave(k, dim=0)  # (B, N, C) -> (B*K, N, C)
    feats_proj = dec.attention.project(feats)  # (B*K, N, A)
    state = dec.init_state(feats)
    tokens = torch.full((b * k,), START_ID, dtype=torch.long, device=images.device)
    # All K beams start identical: only the first may expand, or the top-K would be K copies.
    scores = torch.full((b, k), float("-inf"), device=images.device)
    scores[:, 0] = 0.0
    finished = torch.zeros(b * k, dtype=torch.bool, device=images.device)
    lengths = torch.zeros(b * k, device=images.device)  # words emitted, <end> included
    history = torch.zeros(b * k, 0, dtype=torch.long, device=images.device)
    alpha_history = torch.zeros(b * k, 0, n, device=images.device)
    offsets = (torch.arange(b, device=images.device) * k).unsqueeze(1)  # (B, 1)
    # A finished hypothesis continues only with <pad>, at no cost.
    frozen = torch.full((1, model.config.vocab_size), float("-inf"), device=images.device)
    frozen[0, PAD_ID] = 0.0

    for _ in range(options.max_length + 1):  # + 1 for <end>
        logits, state, alpha = dec.step(tokens, state, feats, feats_proj)  # (B*K, V), .., (B*K, N)
        logp = torch.log_softmax(logits, dim=1)  # (B*K, V)
        vocab = logp.size(1)
        logp = torch.where(finished.unsqueeze(1), frozen, logp)
        total = (scores.reshape(-1, 1) + logp).reshape(b, k * vocab)  # (B, K*V)
        scores, flat = total.topk(k, dim=1)  # (B, K)
        parent = (flat // vocab + offsets).reshape(-1)  # (B*K,) rows in the flat beam
        tokens = (flat % vocab).reshape(-1)  # (B*K,)

        state = (state[0][parent], state[1][parent])
        was_finished = finished[parent]
        lengths = lengths[parent] + (~was_finished).float()
        finished = was_finished | (tokens == END_ID)
        history = torch.cat([history[parent], tokens.unsqueeze(1)], dim=1)  # (B*K, t+1)
        alpha_history = torch.cat([alpha_history[parent], alpha[parent].unsqueeze(1)], dim=1)
        if bool(finished.all()):
            break

    norm = scores / lengths.reshape(b, k).clamp(min=1) ** options.length_penalty  # (B, K)
    order = norm.argsort(dim=1, descending=True, stable=True) + offsets  # (B, K) flat rows
    rows, finite = history.tolist(), torch.isfinite(norm).reshape(-1).tolist()
    candidates = [[_strip(rows[r]) for r in image if finite[r]] for image in order.tolist()]
    best = order[:, 0]  # (B,) rows of the best hypotheses
    seqs = [c[0] for c in candidates]
    steps = max((len(s) for s in seqs), default=0)
    alphas = alpha_history[best, :steps]  # (B, T, N)
    return Decoded(tokens=seqs, scores=norm.max(dim=1).values, alphas=alphas, candidates=candidates)


def decode(model: CaptionModel, images: torch.Tensor, options: DecodeOptions) -> Decoded:
    """Greedy when beam_size is 1, beam search otherwise."""
    if options.beam_size == 1:
        return greedy(model, images, options.max_length)
    return beam_search(model, images, options)
