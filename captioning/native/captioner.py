"""The project's own Show-Attend-Tell model as a Captioner: RGB images -> CaptionResults.

A model directory (default: the shipped one) is loaded through captioning.native.checkpoint; the
CNN encoder runs in chunks in the requested dtype, the LSTM decoder in float32, and decoding is
greedy or beam search (captioning.native.beam_search).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image

from captioning.api import CaptionerOptions, CaptionResult
from captioning.images.preprocess import normalize, to_model_input
from captioning.native.beam_search import Decoded, DecodeOptions, decode
from captioning.native.checkpoint import DEFAULT_MODEL_DIR, load_checkpoint


def native_encoder_dtype(options: CaptionerOptions, device: torch.device) -> torch.dtype:
    """The dtype the native CNN encoder runs in (see CaptionerOptions.dtype)."""
    if options.dtype != "auto":
        return getattr(torch, options.dtype)
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu" and _cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def _cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class _InferenceEncoder(torch.nn.Module):
    """The encoder as the captioner runs it: `chunk` images at a time, convolutions in `dtype`.

    Chunks: convolution costs the same per image at any batch size once the batch fills the cores,
    and past ~32 images of 128 px its activations outgrow the caches (dev CPU, float32, batch 128:
    7.8 ms per image in one call, 6.3 in chunks; captioner_cpu.py --encoder-only), while the LSTM
    decoder keeps gaining
    from the whole batch. dtype: in bf16 the convolutions run on the CPU's AVX-512 BF16 units
    (about 2x faster there) or a GPU's tensor cores; the decoder gets float32 features, so that
    attention and the LSTM, where word choices are made, stay in float32.
    """

    def __init__(self, encoder: torch.nn.Module, dtype: torch.dtype, chunk: int = 32):
        super().__init__()
        self.inner, self.dtype, self.chunk = encoder, dtype, chunk

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        parts = []
        for start in range(0, images.shape[0], self.chunk):
            x = images[start : start + self.chunk]  # (b, 3, S, S)
            if self.dtype == torch.float32:
                parts.append(self.inner(x))
                continue
            with torch.autocast(x.device.type, dtype=self.dtype):
                feats = self.inner(x)  # (b, N, C)
            parts.append(feats.float())
        return parts[0] if len(parts) == 1 else torch.cat(parts)  # (B, N, C)


class NativeCaptioner:
    """The project's own Show-Attend-Tell model from a model directory (default: shipped one)."""

    def __init__(
        self, model_dir: str | Path | None = None, options: CaptionerOptions | None = None
    ):
        options = CaptionerOptions() if options is None else options
        self.options = options
        self.device = options.resolved_device()
        ckpt = load_checkpoint(model_dir or DEFAULT_MODEL_DIR, self.device)
        self.model, self.vocab = ckpt.model, ckpt.vocab
        self.name, self.version = ckpt.name, ckpt.version
        self.image_size = self.model.config.image_size
        self.encoder_dtype = native_encoder_dtype(options, self.device)
        # this captioner's own model instance; decoding only calls encoder(images)
        self.model.encoder = _InferenceEncoder(self.model.encoder, self.encoder_dtype)  # type: ignore[assignment]
        self.decode_options = DecodeOptions(
            options.beam_size, options.max_length, options.length_penalty
        )

    def preprocessor(self) -> Callable[[Image.Image], torch.Tensor]:
        return functools.partial(to_model_input, size=self.image_size)  # -> (3, S, S) uint8

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return to_model_input(image, self.image_size)  # (3, S, S) uint8

    def run(self, inputs: Sequence[torch.Tensor]) -> Decoded:
        batch = torch.stack(list(inputs)).to(self.device, non_blocking=True)  # (B, 3, S, S)
        return decode(self.model, normalize(batch), self.decode_options)

    def caption(self, inputs: Sequence[torch.Tensor]) -> list[CaptionResult]:
        if not inputs:
            return []
        out = self.run(inputs)
        n = self.options.num_return_sequences
        return [
            CaptionResult(
                self.vocab.decode(t), tuple(self.vocab.decode(c) for c in cands[:n]), float(s)
            )
            for t, cands, s in zip(out.tokens, out.candidates, out.scores.tolist(), strict=True)
        ]
