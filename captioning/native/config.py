"""The Show-Attend-Tell model's architecture as a frozen dataclass (no torch: the CLI reads its
defaults at start-up). Defaults are the shipped default model's."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True, slots=True)
class ModelConfig:
    vocab_size: int
    # defaults = the shipped default model (and `make train-default`'s recipe)
    image_size: int = 128
    encoder_channels: tuple[int, ...] = (48, 96, 192, 256)
    embed_dim: int = 128
    hidden_dim: int = 256
    attention_dim: int = 128
    dropout: float = 0.2
    max_length: int = 24  # words, without <start>/<end>

    def __post_init__(self) -> None:
        stride = 2 ** len(self.encoder_channels)
        if self.image_size % stride:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of {stride} "
                f"(2 ** number of encoder stages); try {self.image_size // stride * stride}"
            )
        if self.vocab_size < 5:
            raise ValueError(f"vocab_size {self.vocab_size} is too small: train on more captions")

    @property
    def grid_size(self) -> int:
        return self.image_size // 2 ** len(self.encoder_channels)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["encoder_channels"] = list(self.encoder_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(
                f"unknown model config keys {sorted(unknown)}: is this an imgindex model?"
            )
        d = dict(d)
        if "encoder_channels" in d:
            d["encoder_channels"] = tuple(d["encoder_channels"])
        return cls(**d)
