"""A model directory <-> (CaptionModel, Vocabulary): safetensors weights + config.json + vocab.json.

Weights are never unpickled: safetensors holds tensors only, the JSON files hold the rest.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from captioning.errors import CaptioningError
from captioning.native.config import ModelConfig
from captioning.native.model import CaptionModel
from captioning.native.vocab import Vocabulary

WEIGHTS, CONFIG, VOCAB = "model.safetensors", "config.json", "vocab.json"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"


class CheckpointError(CaptioningError):
    """A model directory that cannot be loaded; the message says what is missing or wrong."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    model: CaptionModel
    vocab: Vocabulary
    name: str  # e.g. "imgindex-sat"
    version: str  # e.g. "2026.11.27-seed0" or a content hash
    info: dict = field(default_factory=dict)  # training facts: data, epochs, scores


def _replace(path: Path, write) -> None:
    """Write through a temporary name in the same folder, then rename over the target."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a model is meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(directory: str | Path, ckpt: Checkpoint) -> Path:
    """Write the three files, each through a temporary name: a crash never leaves a torn file.

    The folder may hold other things (a trainer keeps its resume state in a subfolder).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in ckpt.model.state_dict().items()}
    meta = {
        "name": ckpt.name,
        "version": ckpt.version,
        "model": ckpt.model.config.to_dict(),
        "info": ckpt.info,
    }
    _replace(directory / WEIGHTS, lambda p: save_file(state, p))
    _replace(directory / VOCAB, ckpt.vocab.save)
    _replace(
        directory / CONFIG, lambda p: Path(p).write_text(json.dumps(meta, indent=2, sort_keys=True))
    )
    return directory


def read_model_config(directory: str | Path) -> dict:
    """config.json of a model directory, after checking that all three files are there."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"model directory not found: {directory}")
    missing = [f for f in (WEIGHTS, CONFIG, VOCAB) if not (directory / f).is_file()]
    if missing:
        raise CheckpointError(
            f"{directory} is not an imgindex model directory: missing {', '.join(missing)}"
        )
    try:
        meta = json.loads((directory / CONFIG).read_text())
        ModelConfig.from_dict(meta["model"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{directory / CONFIG} is not a valid model config: {e}") from e
    return meta


def load_checkpoint(
    directory: str | Path | None = None, device: str | torch.device = "cpu"
) -> Checkpoint:
    """Load a model directory (the shipped default when None), in eval mode."""
    directory = Path(directory) if directory is not None else DEFAULT_MODEL_DIR
    meta = read_model_config(directory)
    config = ModelConfig.from_dict(meta["model"])
    vocab = Vocabulary.load(directory / VOCAB)
    if len(vocab) != config.vocab_size:
        raise CheckpointError(
            f"{directory}: vocab.json has {len(vocab)} words but config.json says "
            f"{config.vocab_size}"
        )
    try:
        state = load_file(str(directory / WEIGHTS), device=str(device))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(
            f"{directory / WEIGHTS} is not a readable safetensors file: {e}"
        ) from e
    model = CaptionModel(config)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{directory / WEIGHTS} does not match config.json: missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )
    model.to(device).eval()
    return Checkpoint(
        model,
        vocab,
        meta.get("name", "imgindex-sat"),
        str(meta.get("version", "")),
        meta.get("info", {}),
    )
