"""Captioning backends behind one interface: RGB images -> CaptionResults, a batch at a time.

The Beam ModelHandler (pipelines/handlers.py) and the CLI only see `Captioner`: `preprocess` is the
per-image CPU work (it runs before batching, so it overlaps with inference of the previous batch);
`caption` is the batched model call.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from captioning.checkpoint import DEFAULT_MODEL_DIR, load_checkpoint, read_model_config
from captioning.cpu_memory import CPU_HEAP_POLICIES, keep_freed_memory
from captioning.decoding import Decoded, DecodeOptions, decode
from captioning.preprocess import normalize, to_model_input

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CaptionResult:
    caption: str
    candidates: tuple[str, ...]  # every returned sequence, best first (caption is candidates[0])
    score: float | None = None  # the model's own score of the caption, when it has one


@dataclass(frozen=True, slots=True)
class CaptionerOptions:
    device: str = "auto"  # "auto" = cuda when present, else cpu
    beam_size: int = 3
    max_length: int = 24
    length_penalty: float = 1.0
    # Hugging Face models: the dtype of the whole model. Native model: the dtype its CNN encoder
    # computes in (through autocast; the LSTM decoder stays float32). "auto" = bfloat16 on cuda
    # and on CPUs with native bf16 (AVX-512 BF16 / AMX) for the native model; float32 otherwise.
    dtype: str = "auto"  # float32, float16, bfloat16, auto
    num_return_sequences: int = 1  # candidates per image, best first; at most beam_size
    min_new_tokens: int | None = None
    prompt: str | None = None  # None = the family's default instruction or task prompt
    trust_remote_code: bool = False  # run Python shipped with the model (auto_map, Florence-2)
    allow_pickle: bool = False  # load pytorch_model.bin (pickle) when there are no safetensors
    # torch CPU threads for this process, set when the model loads; None = torch's default (one per
    # core). Cores / processes when several workers share a machine: more threads than free cores
    # make every op wait for a descheduled thread (measured: 5x slower decoding).
    threads: int | None = None
    # On a CPU: "keep" = freed memory stays with the process for the next batch (glibc only; see
    # captioning/cpu_memory.py), "system" = the C library's default, which returns it.
    cpu_heap: str = "keep"

    def __post_init__(self) -> None:
        DecodeOptions(self.beam_size, self.max_length, self.length_penalty)  # validates
        if self.device != "auto" and not self.device.startswith(("cpu", "cuda", "mps")):
            raise ValueError(f"--device must be auto, cpu, cuda[:N] or mps, got {self.device!r}")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError(
                f"--dtype must be auto, float32, float16 or bfloat16, got {self.dtype!r}"
            )
        if self.num_return_sequences < 1:
            raise ValueError(
                f"--num-return-sequences must be at least 1, got {self.num_return_sequences}"
            )
        if self.num_return_sequences > self.beam_size:
            raise ValueError(
                f"--num-return-sequences {self.num_return_sequences} needs "
                f"--beam-size of at least {self.num_return_sequences}, "
                f"got {self.beam_size}"
            )
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {self.threads}")
        if self.cpu_heap not in CPU_HEAP_POLICIES:
            raise ValueError(
                f"--cpu-heap must be {' or '.join(CPU_HEAP_POLICIES)}, got {self.cpu_heap!r}"
            )
        if self.min_new_tokens is not None and not 0 <= self.min_new_tokens <= self.max_length:
            raise ValueError(
                f"--min-new-tokens must be between 0 and --max-length "
                f"({self.max_length}), got {self.min_new_tokens}"
            )

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def set_up_process(self) -> None:
        """The process-wide CPU settings these options ask for (threads, heap policy)."""
        if self.threads is not None:
            torch.set_num_threads(self.threads)  # process-wide: see threads above
        if self.cpu_heap == "keep" and self.resolved_device().type == "cpu":
            keep_freed_memory()

    def resolved_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if self.resolved_device().type == "cuda" else torch.float32
        return getattr(torch, self.dtype)


class Captioner(Protocol):
    name: str
    version: str

    def preprocessor(self) -> Callable[[Image.Image], Any]:
        """The per-image step alone (resize, normalise) -> CPU tensors; `load_preprocessor`
        builds the same callable without loading the model. The pipeline runs it while decoding,
        so only CPU tensors reach the model, which moves them to its own device (and may live in
        another process when shared across workers)."""
        ...

    def preprocess(self, image: Image.Image) -> Any: ...

    def caption(self, inputs: Sequence[Any]) -> list[CaptionResult]: ...


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
        self, model_dir: str | Path | None = None, options: CaptionerOptions = CaptionerOptions()
    ):
        self.options = options
        options.set_up_process()
        self.device = options.resolved_device()
        ckpt = load_checkpoint(model_dir, self.device)
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


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    name: str
    version: str
    input_size: int | None  # the side the model resizes images to, when known


def model_identity(
    spec: str | None, options: CaptionerOptions = CaptionerOptions()
) -> ModelIdentity:
    """Name, version and input size of the model a spec names, checked without loading weights.

    The pipeline's launcher calls this so that a bad --model fails before the job starts, and to
    let the decoder skip detail the model would throw away (JPEG draft mode).
    """
    if spec is not None and spec.startswith("hf:"):
        from captioning.hf import hf_identity

        return ModelIdentity(*hf_identity(spec[3:], options))
    directory = (
        DEFAULT_MODEL_DIR
        if spec in (None, "", "default", "native")
        else Path(spec.removeprefix("native:"))
    )
    meta = read_model_config(directory)
    return ModelIdentity(
        meta.get("name", "imgindex-sat"),
        str(meta.get("version", "")),
        int(meta["model"]["image_size"]),
    )


def load_preprocessor(
    spec: str | None, options: CaptionerOptions = CaptionerOptions()
) -> Callable[[Image.Image], Any]:
    """The captioner's per-image step without its model: what `preprocessor()` returns, for
    workers that decode ahead of inference and should not hold the model's weights."""
    if spec is not None and spec.startswith("hf:"):
        from captioning.hf import hf_preprocessor

        return hf_preprocessor(spec[3:], options)
    size = model_identity(spec, options).input_size
    assert size is not None  # native models always record it
    return functools.partial(to_model_input, size=size)


def load_captioner(spec: str | None, options: CaptionerOptions = CaptionerOptions()) -> Captioner:
    """`None` -> the shipped default; `native:DIR` or a plain DIR -> our model; `hf:NAME` -> HF."""
    if spec is None or spec in ("", "default", "native"):
        return NativeCaptioner(DEFAULT_MODEL_DIR, options)
    if spec.startswith("hf:"):
        from captioning.hf import HFCaptioner  # heavy import, only when asked for

        return HFCaptioner(spec[3:], options)
    return NativeCaptioner(spec.removeprefix("native:"), options)
