"""Training settings and the per-epoch report, as frozen dataclasses (no torch: the CLI reads the
defaults at start-up)."""

from __future__ import annotations

from dataclasses import dataclass

from captioning.errors import CaptioningError
from captioning.runtime import CPU_HEAP_POLICIES


@dataclass(frozen=True, slots=True)
class TrainConfig:
    epochs: int = 14
    batch_size: int = 64
    learning_rate: float = 2e-3
    seed: int = 0
    val_fraction: float = 0.05
    max_val_images: int = 1000
    patience: int = 4  # epochs without a better validation CIDEr before stopping
    alpha_c: float = 0.05  # weight of the doubly stochastic attention regulariser (see README)
    grad_clip: float = 5.0
    concept_weight: float = 1.0  # auxiliary bag-of-words loss on the encoder (model.concept_loss)
    name: str = "imgindex-sat"
    # End after this epoch while the learning-rate schedule still spans `epochs` (the shipped
    # default is the first 11 epochs of a 16-epoch schedule); None = run the whole schedule.
    stop_after: int | None = None
    # On a CPU, "keep" = freed memory stays with the process for the next step (captioning/
    # runtime.py; docs/benchmarks.md), "system" = the C library's default
    cpu_heap: str = "keep"

    def __post_init__(self) -> None:
        if self.cpu_heap not in CPU_HEAP_POLICIES:
            raise CaptioningError(
                f"--cpu-heap must be {' or '.join(CPU_HEAP_POLICIES)}, got {self.cpu_heap!r}"
            )
        if self.epochs < 1:
            raise CaptioningError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise CaptioningError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not 0 < self.learning_rate < 1:
            raise CaptioningError(f"--lr must be in (0, 1), got {self.learning_rate}")
        if not 0 < self.val_fraction < 0.5:
            raise CaptioningError(f"--val-fraction must be in (0, 0.5), got {self.val_fraction}")
        if self.stop_after is not None and not 1 <= self.stop_after <= self.epochs:
            raise CaptioningError(
                f"--stop-after must be between 1 and --epochs ({self.epochs}), "
                f"got {self.stop_after}"
            )


@dataclass(frozen=True, slots=True)
class EpochReport:
    epoch: int  # 1-based
    train_loss: float
    val_cider: float
    val_attribute_accuracy: float | None
    images_per_second: float
    best: bool
