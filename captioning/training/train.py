"""TrainingData -> a model directory: teacher forcing, validation CIDEr, early stopping, resume.

The run is deterministic for a seed: the shuffle of epoch e and its dropout draw from seed + e, so a
run resumed after epoch e continues exactly as the uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from pycocoevalcap.cider.cider import Cider
from safetensors.torch import load_file, save_file

from captioning.archives.synthetic.world import named_pairs
from captioning.errors import CaptioningError, MissingInputError
from captioning.images.preprocess import normalize
from captioning.native.beam_search import DecodeOptions, decode
from captioning.native.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from captioning.native.model import CaptionModel, ModelConfig, caption_loss, concept_loss
from captioning.native.vocab import Vocabulary, tokenize
from captioning.runtime import CPU_HEAP_POLICIES, keep_freed_memory
from captioning.training.data import TrainingData

logger = logging.getLogger(__name__)

STATE_DIR = ".train-state"  # inside the output folder: the last epoch, for --resume


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
    # cpu_memory.py: 12-29% faster training here), "system" = the C library's default
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


ProgressFn = Callable[[int, int, int, float], None]  # epoch, step, steps, loss


def split(data: TrainingData, val_fraction: float) -> tuple[list[int], list[int]]:
    """Train/validation rows by a hash of the key: stable when the archive grows."""
    train: list[int] = []
    val: list[int] = []
    for i, ex in enumerate(data.examples):
        bucket = zlib.crc32(ex.key.encode()) % 10_000
        (val if bucket < val_fraction * 10_000 else train).append(i)
    if not val or not train:
        raise CaptioningError(
            f"{len(data.examples)} images are too few to split off a validation set"
        )
    return train, val


def _lr(config: TrainConfig, epoch: int) -> float:
    """Cosine decay per epoch, computed from the epoch alone so that a resume needs no scheduler."""
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * epoch / config.epochs))


def _encode_captions(vocab: Vocabulary, captions: list[str], max_length: int) -> torch.Tensor:
    rows = [vocab.encode(c, max_length) for c in captions]
    out = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)  # (B, T), 0 = <pad>
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


def validate(
    model: CaptionModel,
    vocab: Vocabulary,
    data: TrainingData,
    rows: list[int],
    batch_size: int = 128,
    options: DecodeOptions | None = None,
) -> tuple[float, float | None]:
    """Captions of `rows` (greedy unless `options` say otherwise) -> (CIDEr-D, attribute acc.)."""
    model.eval()
    options = DecodeOptions(max_length=model.config.max_length) if options is None else options
    device = next(model.parameters()).device
    preds: dict[str, list[str]] = {}
    refs: dict[str, list[str]] = {}
    correct, judged = 0, 0
    for start in range(0, len(rows), batch_size):
        idx = rows[start : start + batch_size]
        out = decode(model, normalize(data.images[idx].to(device)), options)
        for i, tokens in zip(idx, out.tokens, strict=True):
            ex = data.examples[i]
            caption = vocab.decode(tokens)
            preds[ex.key] = [" ".join(tokenize(caption)) or "<empty>"]
            refs[ex.key] = [" ".join(tokenize(r)) for r in ex.references]
            if ex.truth is not None:
                judged += 1
                correct += named_pairs(caption) == set(ex.truth)
    cider, _ = Cider().compute_score(refs, preds)
    return float(cider), (correct / judged if judged else None)


def _save_state(out: Path, ckpt: Checkpoint, optimizer: torch.optim.Optimizer, state: dict) -> None:
    d = out / STATE_DIR
    save_checkpoint(d, ckpt)
    opt = optimizer.state_dict()
    tensors = {f"{pid}.{name}": v for pid, s in opt["state"].items() for name, v in s.items()}
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        str(d / "optimizer.safetensors"),
    )
    state = {**state, "param_groups": opt["param_groups"]}
    (d / "state.json").write_text(json.dumps(state, indent=2))


def _load_state(out: Path, model: CaptionModel, optimizer: torch.optim.Optimizer) -> dict:
    d = out / STATE_DIR
    state = json.loads((d / "state.json").read_text())
    tensors = load_file(str(d / "optimizer.safetensors"))
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        pid, name = k.split(".", 1)
        opt_state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": opt_state, "param_groups": state.pop("param_groups")})
    return state


def train(
    data: TrainingData,
    out_dir: str | Path,
    config: TrainConfig,
    resume: bool = False,
    architecture: dict | None = None,
    on_step: ProgressFn | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    device: str | torch.device = "cpu",
) -> list[EpochReport]:
    """Train and keep the best epoch (by validation CIDEr) as the model in out_dir.

    `architecture` overrides ModelConfig fields (encoder_channels, hidden_dim, ...) of a new
    model; a resumed run keeps the architecture it was started with. On a GPU `device` the
    images are copied there once (uint8); the run is seeded the same way, but GPU kernels do not
    promise the bit-for-bit results the CPU run gives.
    """
    device = torch.device(device)
    if device.type == "cpu" and config.cpu_heap == "keep":
        keep_freed_memory()  # process-wide
    out = Path(out_dir)
    image_size = data.images.shape[-1]
    train_rows, val_rows = split(data, config.val_fraction)
    val_rows = val_rows[: config.max_val_images]
    torch.manual_seed(config.seed)
    if resume:
        if not (out / STATE_DIR / "state.json").is_file():
            raise MissingInputError(f"nothing to resume in {out}: no {STATE_DIR}/state.json")
        last = load_checkpoint(out / STATE_DIR)
        model, vocab = last.model, last.vocab
    else:
        vocab = Vocabulary.build(data.examples[i].caption for i in train_rows)
        model = CaptionModel(
            ModelConfig(vocab_size=len(vocab), image_size=image_size, **(architecture or {}))
        )
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    state: dict[str, Any] = {"epoch": 0, "best_cider": -1.0, "bad_epochs": 0, "history": []}
    if resume:
        state = _load_state(out, model, optimizer)
        logger.info("resuming after epoch %d", state["epoch"])

    captions = _encode_captions(vocab, [e.caption for e in data.examples], model.config.max_length)
    captions = captions.to(device)  # (N, T)
    images = data.images.to(device)  # (N, 3, S, S) uint8: a no-op on the CPU
    reports = [EpochReport(**h) for h in state["history"]]
    end_epoch = config.epochs if config.stop_after is None else config.stop_after
    for epoch in range(state["epoch"], end_epoch):
        if state["bad_epochs"] >= config.patience:
            break
        for group in optimizer.param_groups:
            group["lr"] = _lr(config, epoch)
        gen = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        torch.manual_seed(config.seed * 1000 + epoch)
        order = torch.tensor(train_rows)[torch.randperm(len(train_rows), generator=gen)]
        order = order.to(device)
        model.train()
        steps = math.ceil(len(order) / config.batch_size)
        total, started = 0.0, time.perf_counter()
        for step in range(steps):
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            caps = captions[idx]
            caps = caps[:, : int((caps != 0).sum(1).max())]  # (B, T): drop all-padding columns
            logits, alphas, concepts = model.forward_train(normalize(images[idx]), caps)
            loss = caption_loss(logits, alphas, caps, config.alpha_c)
            if config.concept_weight:
                loss = loss + config.concept_weight * concept_loss(concepts, caps)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            total += loss.item()
            if on_step:
                on_step(epoch + 1, step + 1, steps, loss.item())
        rate = len(order) / (time.perf_counter() - started)
        cider, attr = validate(model, vocab, data, val_rows)
        best = cider > state["best_cider"]
        report = EpochReport(epoch + 1, total / steps, cider, attr, rate, best)
        reports.append(report)
        info = {
            "train": asdict(config),
            "epoch": epoch + 1,
            "val_cider": cider,
            "val_attribute_accuracy": attr,
            "train_images": len(train_rows),
        }
        ckpt = Checkpoint(model, vocab, config.name, f"seed{config.seed}-epoch{epoch + 1}", info)
        if best:
            state["best_cider"], state["bad_epochs"] = cider, 0
            save_checkpoint(out, ckpt)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        state["history"] = [asdict(r) for r in reports]
        _save_state(out, ckpt, optimizer, state)
        if on_epoch:
            on_epoch(report)
    return reports
