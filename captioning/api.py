"""What every captioner shares: the Captioner protocol, its options, results and model specs.

The Beam ModelHandler (pipelines/caption/handler.py) and the CLI only see `Captioner`:
`preprocessor()` is the per-image CPU work (it runs before batching, so it overlaps with inference
of the previous batch); `caption` is the batched model call. `captioning.registry` builds one from
a `ModelSpec`; the backends live in `captioning.native` and `captioning.hf`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from captioning.errors import CaptioningError
from captioning.runtime import CPU_HEAP_POLICIES, set_up_process

if TYPE_CHECKING:  # torch is imported where it is used: the CLI reads these options at start-up
    import torch
    from PIL import Image

DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass(frozen=True, slots=True)
class CaptionResult:
    caption: str
    candidates: tuple[str, ...]  # every returned sequence, best first (caption is candidates[0])
    score: float | None = None  # the model's own score of the caption, when it has one


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A --model value parsed once: `None`/"default"/"native" -> the shipped model;
    `native:DIR` or a plain DIR -> our model in DIR; `hf:NAME_OR_PATH` -> a Hugging Face model."""

    kind: str  # "native" or "hf"
    location: str | None  # None: the shipped default model

    @classmethod
    def parse(cls, spec: str | None) -> ModelSpec:
        if spec is None or spec in ("", "default", "native"):
            return cls("native", None)
        if spec.startswith("hf:"):
            if not spec[3:].strip():
                raise CaptioningError("--model hf: needs a name or path, e.g. hf:./blip-base")
            return cls("hf", spec[3:])
        return cls("native", spec.removeprefix("native:"))


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    name: str
    version: str
    input_size: int | None  # the side the model resizes images to, when known


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
    # torch CPU threads for this process, set by set_up_process(); None = torch's default (one
    # per core). Cores / processes when several workers share a machine: more threads than free
    # cores make every op wait for a descheduled thread (measured: 5x slower decoding).
    threads: int | None = None
    # On a CPU: "keep" = freed memory stays with the process for the next batch (glibc only; see
    # captioning/runtime.py), "system" = the C library's default, which returns it.
    cpu_heap: str = "keep"

    def __post_init__(self) -> None:
        self._check_decoding()
        if self.device != "auto" and not self.device.startswith(("cpu", "cuda", "mps")):
            raise CaptioningError(
                f"--device must be auto, cpu, cuda[:N] or mps, got {self.device!r}"
            )
        if self.dtype not in DTYPES:
            raise CaptioningError(f"--dtype must be {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.threads is not None and self.threads < 1:
            raise CaptioningError(f"--threads must be at least 1, got {self.threads}")
        if self.cpu_heap not in CPU_HEAP_POLICIES:
            raise CaptioningError(
                f"--cpu-heap must be {' or '.join(CPU_HEAP_POLICIES)}, got {self.cpu_heap!r}"
            )

    def _check_decoding(self) -> None:
        if self.beam_size < 1:
            raise CaptioningError(f"--beam-size must be at least 1, got {self.beam_size}")
        if self.max_length < 1:
            raise CaptioningError(f"--max-length must be at least 1, got {self.max_length}")
        if self.length_penalty < 0:
            raise CaptioningError(f"length penalty must be >= 0, got {self.length_penalty}")
        if self.num_return_sequences < 1:
            raise CaptioningError(
                f"--num-return-sequences must be at least 1, got {self.num_return_sequences}"
            )
        if self.num_return_sequences > self.beam_size:
            raise CaptioningError(
                f"--num-return-sequences {self.num_return_sequences} needs "
                f"--beam-size of at least {self.num_return_sequences}, got {self.beam_size}"
            )
        if self.min_new_tokens is not None and not 0 <= self.min_new_tokens <= self.max_length:
            raise CaptioningError(
                f"--min-new-tokens must be between 0 and --max-length "
                f"({self.max_length}), got {self.min_new_tokens}"
            )

    def resolved_device(self) -> torch.device:
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolved_dtype(self) -> torch.dtype:
        import torch

        if self.dtype == "auto":
            return torch.bfloat16 if self.resolved_device().type == "cuda" else torch.float32
        return getattr(torch, self.dtype)

    def set_up_process(self) -> None:
        """Apply the process-wide CPU settings these options ask for (threads, heap policy).

        Loading a captioner never does this by itself (library code leaves the process alone):
        the CLI calls it once, and the Beam handler once per worker process before its model."""
        set_up_process(self.threads, self.cpu_heap, self.resolved_device().type)


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
