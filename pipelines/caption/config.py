"""The caption job's settings as a frozen dataclass, without Beam (the CLI reads its defaults at
start-up)."""

from __future__ import annotations

from dataclasses import dataclass, field

from captioning.api import CaptionerOptions
from captioning.archives.records import ReadConfig
from captioning.images.decode import DecodeConfig
from pipelines.errors import UsageError

DECODE_ON = ("auto", "cpu", "device")


@dataclass(frozen=True, slots=True)
class CaptionConfig:
    input: str
    out: str
    model: str | None = None  # None = the shipped default
    batch_size: int = 32
    overwrite: bool = False
    captioner: CaptionerOptions = field(default_factory=CaptionerOptions)
    read: ReadConfig = field(default_factory=ReadConfig)
    # draft_size None: decode JPEGs at the model's input size (see run_caption)
    decode: DecodeConfig = field(default_factory=lambda: DecodeConfig(draft_size=None))
    model_copies: int | None = None  # >1 (or 1) shares the model across a worker's processes
    # Where plain JPEGs are decoded: "cpu" (DecodeImages, Pillow), "device" (the captioner's own
    # device, nvJPEG on a GPU: Hugging Face models without per-image text only), "auto" = device
    # when the captioner runs on a GPU and can, else cpu.
    decode_on: str = "auto"
    # The job fails (JobFailed, after writing its tables and run.json) when more than this share
    # of the images read failed; 1.0 never fails it, and also never stops a job early.
    max_failure_rate: float = 0.5

    def __post_init__(self) -> None:
        if self.decode_on not in DECODE_ON:
            raise UsageError(
                f"--decode-on must be one of {', '.join(DECODE_ON)}, got {self.decode_on!r}"
            )
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.model_copies is not None and self.model_copies < 1:
            raise UsageError(f"--model-copies must be at least 1, got {self.model_copies}")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise UsageError(
                "--max-failure-rate must be a share of the images between 0 and 1 "
                f"(0.5 = half), got {self.max_failure_rate}"
            )
