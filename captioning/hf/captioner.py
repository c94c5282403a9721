"""Hugging Face image-to-text models as a Captioner: RGB images -> CaptionResults, batch by batch.

Families (detected from config.json by captioning.hf.resolve): BLIP, GIT, VisionEncoderDecoder,
BLIP-2, Florence-2 and generic image-text-to-text VLMs (an instruction prompt through the chat
template). `preprocess` runs the image processor (and, for VLMs, the whole processor) on one image,
so it overlaps with inference; `caption` collates, generates and strips prompts and special tokens.

Batching never changes a caption: every image of a batch gets the same prompt ids, so a fixed
family's text side needs no padding at all; VLM prompts whose image-token count differs per image
are left-padded (right padding would make the model continue from pad tokens).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from captioning.api import CaptionerOptions, CaptionResult
from captioning.errors import CaptioningError
from captioning.hf.identity import model_version
from captioning.hf.loading import load_model, load_processor
from captioning.hf.patches import speed_up
from captioning.hf.processors import (
    PER_IMAGE_TEXT,
    HFPreprocessor,
    default_prompt,
    make_preprocessor,
)
from captioning.hf.resolve import ModelLoadError, resolve
from captioning.images.decode import DecodeConfig, DecodeError
from captioning.images.device_decode import decode_batch

logger = logging.getLogger(__name__)

__all__ = ["HFCaptioner", "ModelLoadError"]

# Beam search generates batch x beams sequences and reorders every cache along them each step.
# Measured on CPU, base sizes, 3 beams, 32 images, float32 (benchmarks/captioners.py, default vs
# --beam-sequences 96): GIT 1.17 images/s in calls of 24 sequences vs 0.81 in one call of 96,
# ViT-GPT2 1.39 vs 1.23. So on a CPU a big batch runs as sub-batches of at most this many
# sequences. GPUs, and greedy decoding, take the whole batch.
MAX_BEAM_SEQUENCES = 24
# Token-sequence keys of a processor's output: left-padded when collated; the rest concatenated.
_SEQUENCE_KEYS: dict[str, int | None] = {
    "input_ids": None,
    "attention_mask": 0,
    "token_type_ids": 0,
    "mm_token_type_ids": 0,
}


class HFCaptioner:
    """A transformers image-to-text model behind the Captioner protocol."""

    def __init__(self, name_or_path: str, options: CaptionerOptions | None = None):
        options = CaptionerOptions() if options is None else options
        self.options = options
        self.resolved = resolve(
            name_or_path,
            trust_remote_code=options.trust_remote_code,
            allow_pickle=options.allow_pickle,
        )
        self.family = self.resolved.family
        if self.family == "vision-encoder-decoder" and options.prompt is not None:
            raise CaptioningError(
                "--prompt: vision-encoder-decoder models take no prompt; leave it out"
            )
        self.device = options.resolved_device()
        self.dtype = options.resolved_dtype()
        self.processor, self.image_processor, self.tokenizer = load_processor(
            self.resolved, options
        )
        self.prompt = default_prompt(self.resolved) if options.prompt is None else options.prompt
        self._preprocessor = make_preprocessor(  # checks the prompt before the weights load
            self.resolved, self.processor, self.image_processor, self.prompt
        )
        self.model = load_model(self.resolved, options)
        self.speed_fixes = speed_up(self.model, self.family)
        self.name = f"hf:{name_or_path}"
        self.version = model_version(self.resolved)
        self._prompt_ids = self._fixed_prompt_ids() if self.family not in PER_IMAGE_TEXT else None
        gc = self.model.generation_config
        eos = gc.eos_token_id if gc.eos_token_id is not None else self.tokenizer.eos_token_id
        if self.family == "blip":  # BLIP ends captions with [SEP], not its config's eos
            eos = self.model.config.text_config.sep_token_id
        self._eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        pad = gc.pad_token_id if gc.pad_token_id is not None else self.tokenizer.pad_token_id
        self._pad = pad if pad is not None else next(iter(self._eos), 0)
        logger.info(
            "loaded %s (%s, %s, %s) on %s",
            self.name,
            self.family,
            type(self.model).__name__,
            self.dtype,
            self.device,
        )

    # -- prompts ---------------------------------------------------------------------------
    def _fixed_prompt_ids(self) -> torch.Tensor | None:
        """(1, L) ids every image's decoder starts from, the same for the whole batch."""
        tok, cfg = self.tokenizer, self.model.config
        words = tok(self.prompt, add_special_tokens=False).input_ids if self.prompt else []
        if self.family == "blip":  # [DEC] prompt [SEP]; BLIP's generate drops the last token
            ids = [cfg.text_config.bos_token_id, *words, cfg.text_config.sep_token_id]
        elif self.family == "git":  # [CLS] prompt, as GIT was trained
            ids = [tok.cls_token_id, *words]
        elif self.family == "blip-2":  # query-token placeholders, then <bos> prompt
            bos = cfg.text_config.bos_token_id  # None for T5: its encoder needs no <bos>
            ids = [cfg.image_token_id] * cfg.num_query_tokens + [bos] * (bos is not None) + words
        else:
            return None
        return torch.tensor([ids], dtype=torch.long)

    # -- the Captioner protocol ------------------------------------------------------------
    def preprocessor(self) -> HFPreprocessor:
        """The per-image step alone, picklable: it can run in another process than the model."""
        return self._preprocessor

    def preprocess(self, image: Image.Image) -> dict[str, torch.Tensor]:
        """One RGB image -> this model's input tensors for it (batch dimension 1), picklable."""
        return self.preprocessor()(image)

    def preprocess_encoded(
        self, datas: Sequence[bytes]
    ) -> list[dict[str, torch.Tensor] | DecodeError]:
        """JPEG files -> this model's inputs, decoded and preprocessed on the model's device.

        nvJPEG decodes the batch on a GPU (captioning.images.device_decode; Pillow for what it
        refuses), then the model's own image processor resizes and normalises the tensors where
        they are, so the pixels go through the same code as preprocess(). A file that cannot be
        decoded gives its DecodeError in its place.
        """
        if not self._preprocessor.decodes_on_device:
            raise CaptioningError(
                f"{self.name}: its processor needs text per image; decode on the CPU"
            )
        # Full-size decodes on both paths (no JPEG draft): nvJPEG has none, so neither does the
        # Pillow fallback; the size guard already ran on the header (decode.read_header).
        decoded = decode_batch(datas, self.device, DecodeConfig(draft_size=None))
        out: list[dict[str, torch.Tensor] | DecodeError] = [
            e if e is not None else {} for e in decoded.errors
        ]
        good = [i for i, im in enumerate(decoded.images) if im is not None]
        if good:
            pv = self.image_processor(
                images=[decoded.images[i] for i in good], device=self.device, return_tensors="pt"
            )["pixel_values"]  # (G, 3, S, S)
            for j, i in enumerate(good):
                out[i] = {"pixel_values": pv[j : j + 1]}  # (1, 3, S, S)
        return out

    @torch.inference_mode()
    def caption(self, inputs: Sequence[dict[str, torch.Tensor]]) -> list[CaptionResult]:
        if not inputs:
            return []
        results: list[CaptionResult | None] = [None] * len(inputs)
        step = len(inputs)
        if self.device.type == "cpu" and self.options.beam_size > 1:
            step = max(1, MAX_BEAM_SEQUENCES // self.options.beam_size)
        for group in _groups(inputs):  # one group unless image-side shapes differ (dynamic VLMs)
            for s in range(0, len(group), step):
                idx = group[s : s + step]
                for i, r in zip(idx, self._caption_batch([inputs[i] for i in idx]), strict=True):
                    results[i] = r
        return [r for r in results if r is not None]

    # -- internals -------------------------------------------------------------------------
    def _caption_batch(self, inputs: list[dict[str, torch.Tensor]]) -> list[CaptionResult]:
        batch = self._collate(inputs)
        b = len(inputs)
        if self._prompt_ids is not None:
            ids = self._prompt_ids.expand(b, -1).clone()  # (1, L) -> (B, L); BLIP writes into it
            batch["input_ids"], batch["attention_mask"] = ids, torch.ones_like(ids)
        batch = {k: self._to_device(v) for k, v in batch.items()}
        echo = batch.get("input_ids")
        if self.family == "blip" and echo is not None:
            echo = echo[:, :-1]  # what BLIP's text decoder actually starts from
        out = self.model.generate(**batch, **self._generate_kwargs())
        n = self.options.num_return_sequences
        seqs = out.sequences  # (B*n, T)
        if echo is not None and _echoes(seqs, echo, n):
            seqs = seqs[:, echo.shape[1] :]  # decoder-only: drop the prompt it repeats
        texts = [self._decode(row) for row in seqs.tolist()]
        scores = self._scores(out, seqs, n)
        return [
            CaptionResult(
                texts[i * n],
                tuple(texts[i * n : (i + 1) * n]),
                None if scores is None else scores[i * n],
            )
            for i in range(b)
        ]

    def _generate_kwargs(self) -> dict[str, Any]:
        o = self.options
        kw: dict[str, Any] = {
            "do_sample": False,
            "num_beams": o.beam_size,
            "max_new_tokens": o.max_length,
            "num_return_sequences": o.num_return_sequences,
            "return_dict_in_generate": True,
            "output_scores": True,
        }
        if self.family != "blip":  # BLIP's generate sets its own pad id
            kw["pad_token_id"] = self._pad
        if o.min_new_tokens is not None:
            kw["min_new_tokens"] = o.min_new_tokens
        if o.beam_size > 1:  # stop once beam_size hypotheses have ended, as the native decoder
            kw.update(length_penalty=o.length_penalty, early_stopping=True)
        return kw

    def _collate(self, inputs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        batch = {}
        for key in inputs[0]:
            parts = [x[key] for x in inputs]
            if key in _SEQUENCE_KEYS and parts[0].dim() == 2:
                fill = _SEQUENCE_KEYS[key]
                fill = self._pad if fill is None else fill
                batch[key] = _left_pad(parts, fill)  # B x (1, L_i) -> (B, max L)
            else:
                batch[key] = torch.cat(parts)  # B x (1, ...) -> (B, ...)
        return batch

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            t = t.to(self.dtype)
        if self.device.type == "cuda" and t.device.type == "cpu":
            # pinned host memory lets the copy run asynchronously with the host's next work
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _decode(self, ids: list[int]) -> str:
        for j, t in enumerate(ids):
            if t in self._eos and j > 0:  # j > 0: VED/GPT-2 starts from its eos token
                ids = ids[:j]
                break
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def _scores(self, out: Any, seqs: torch.Tensor, n: int) -> list[float] | None:
        """Beam: the length-normalised beam score; greedy: mean log-probability of the tokens."""
        if getattr(out, "sequences_scores", None) is not None:
            return out.sequences_scores.float().tolist()
        if not out.scores:
            return None
        new = out.sequences[:, -len(out.scores) :]  # (B*n, T_new)
        # one step at a time: a (B*n, V) float32 buffer, not (B*n, T_new, V) (GBs at GPU batches)
        tok = torch.stack(
            [
                step.float().log_softmax(-1).gather(-1, new[:, t : t + 1]).squeeze(-1)  # (B*n,)
                for t, step in enumerate(out.scores)
            ],
            dim=1,
        )  # (B*n, T_new)
        ended = torch.zeros_like(new, dtype=torch.bool)
        for e in self._eos:
            ended |= new == e
        # count tokens up to and including the first eos
        keep = (ended.cumsum(1) - ended.long()) == 0  # (B*n, T_new)
        # masked, not multiplied: padding after an early eos can have log-probability -inf (a
        # forced eos at the last step, as BART/Florence-2 set, bans every other token)
        return (tok.masked_fill(~keep, 0.0).sum(1) / keep.sum(1).clamp(min=1)).tolist()


def _left_pad(parts: list[torch.Tensor], fill: int) -> torch.Tensor:
    width = max(p.shape[1] for p in parts)
    out = torch.full((len(parts), width), fill, dtype=parts[0].dtype)
    for i, p in enumerate(parts):
        out[i, width - p.shape[1] :] = p[0]
    return out


def _echoes(seqs: torch.Tensor, prompt: torch.Tensor, n: int) -> bool:
    """Whether generate returned the prompt in front of the new tokens (decoder-only models)."""
    length = prompt.shape[1]
    return seqs.shape[1] >= length and bool(
        (seqs[:, :length] == prompt.repeat_interleave(n, dim=0)).all()
    )


def _groups(inputs: Sequence[dict[str, torch.Tensor]]) -> list[list[int]]:
    """Indices of inputs whose non-sequence tensors have equal shapes (so they can be stacked)."""
    groups: dict[tuple, list[int]] = {}
    for i, x in enumerate(inputs):
        key = tuple(
            (k, tuple(v.shape[1:])) for k, v in sorted(x.items()) if k not in _SEQUENCE_KEYS
        )
        groups.setdefault(key, []).append(i)
    return list(groups.values())
