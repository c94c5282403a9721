"""TrainingData -> a model directory: teacher forcing, validation CIDEr, early stopping, resume.

The run is deterministic for a seed: the shuffle of epoch e and its dropout draw from seed + e, so a
run resumed after epoch e continues exactly as the uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from pycocoevalcap.cider.cider import Cider

from captioning.archives.synthetic.world import named_pairs
from captioning.errors import CaptioningError
from captioning.images.preprocess import normalize
from captioning.native.beam_search import DecodeOptions, decode
from captioning.native.checkpoint import Checkpoint, save_checkpoint
from captioning.native.config import ModelConfig
from captioning.native.model import CaptionModel, caption_loss, concept_loss
from captioning.native.vocab import Vocabulary, tokenize
from captioning.runtime import keep_freed_memory
from captioning.training.config import EpochReport, TrainConfig
from captioning.training.data import TrainingData
from captioning.training.state import STATE_DIR, Progress, load_state, save_state

logger = logging.getLogger(__name__)

__all__ = ["STATE_DIR", "EpochReport", "TrainConfig", "split", "train", "validate"]


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


@dataclass(slots=True)
class _Run:
    """What the epochs train and update: the model, its optimizer and the counters resume keeps."""

    model: CaptionModel
    vocab: Vocabulary
    optimizer: torch.optim.Optimizer
    progress: Progress


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
    train_rows, val_rows = split(data, config.val_fraction)
    val_rows = val_rows[: config.max_val_images]
    torch.manual_seed(config.seed)
    if resume:
        run = _resumed_run(out, config, device)
    else:
        run = _new_run(data, train_rows, config, architecture, device)

    captions = _encode_captions(
        run.vocab, [e.caption for e in data.examples], run.model.config.max_length
    )
    captions = captions.to(device)  # (N, T)
    images = data.images.to(device)  # (N, 3, S, S) uint8: a no-op on the CPU
    reports = [EpochReport(**h) for h in run.progress.history]
    end_epoch = config.epochs if config.stop_after is None else config.stop_after
    for epoch in range(run.progress.epoch, end_epoch):
        if run.progress.bad_epochs >= config.patience:
            break
        loss, rate = _train_epoch(run, images, captions, train_rows, config, epoch, on_step)
        cider, attr = validate(run.model, run.vocab, data, val_rows)
        best = cider > run.progress.best_cider
        report = EpochReport(epoch + 1, loss, cider, attr, rate, best)
        reports.append(report)
        _end_epoch(out, run, config, report, len(train_rows))
        if on_epoch:
            on_epoch(report)
    return reports


def _optimizer(model: CaptionModel, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=config.learning_rate)


def _new_run(
    data: TrainingData,
    train_rows: list[int],
    config: TrainConfig,
    architecture: dict | None,
    device: torch.device,
) -> _Run:
    """A new model (its vocabulary from the training captions) at epoch 0."""
    vocab = Vocabulary.build(data.examples[i].caption for i in train_rows)
    image_size = data.images.shape[-1]
    model = CaptionModel(
        ModelConfig(vocab_size=len(vocab), image_size=image_size, **(architecture or {}))
    )
    model.to(device)
    return _Run(model, vocab, _optimizer(model, config), Progress())


def _resumed_run(out: Path, config: TrainConfig, device: torch.device) -> _Run:
    """The model, optimizer and counters of the last epoch saved in `out`."""
    state = load_state(out)
    model = state.checkpoint.model.to(device)
    optimizer = _optimizer(model, config)
    optimizer.load_state_dict(state.optimizer)
    logger.info("resuming after epoch %d", state.progress.epoch)
    return _Run(model, state.checkpoint.vocab, optimizer, state.progress)


def _train_epoch(
    run: _Run,
    images: torch.Tensor,
    captions: torch.Tensor,
    rows: list[int],
    config: TrainConfig,
    epoch: int,
    on_step: ProgressFn | None,
) -> tuple[float, float]:
    """One pass over `rows` in epoch `epoch`'s seeded order -> (mean loss, images per second)."""
    for group in run.optimizer.param_groups:
        group["lr"] = _lr(config, epoch)
    gen = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    torch.manual_seed(config.seed * 1000 + epoch)  # the epoch's dropout
    order = torch.tensor(rows)[torch.randperm(len(rows), generator=gen)]  # (R,)
    order = order.to(images.device)
    run.model.train()
    steps = math.ceil(len(order) / config.batch_size)
    total, started = 0.0, time.perf_counter()
    for step in range(steps):
        idx = order[step * config.batch_size : (step + 1) * config.batch_size]  # (B,)
        loss = _step(run, images[idx], captions[idx], config)
        total += loss
        if on_step:
            on_step(epoch + 1, step + 1, steps, loss)
    return total / steps, len(order) / (time.perf_counter() - started)


def _step(run: _Run, images: torch.Tensor, caps: torch.Tensor, config: TrainConfig) -> float:
    """One optimizer step on a batch of uint8 images (B, 3, S, S) and captions (B, T)."""
    caps = caps[:, : int((caps != 0).sum(1).max())]  # (B, T): drop all-padding columns
    logits, alphas, concepts = run.model.forward_train(normalize(images), caps)
    loss = caption_loss(logits, alphas, caps, config.alpha_c)
    if config.concept_weight:
        loss = loss + config.concept_weight * concept_loss(concepts, caps)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip)
    run.optimizer.step()
    return loss.item()


def _end_epoch(
    out: Path, run: _Run, config: TrainConfig, report: EpochReport, train_images: int
) -> None:
    """Keep the model in `out` if the epoch is the best so far; save the resume state."""
    info = {
        "train": asdict(config),
        "epoch": report.epoch,
        "val_cider": report.val_cider,
        "val_attribute_accuracy": report.val_attribute_accuracy,
        "train_images": train_images,
    }
    version = f"seed{config.seed}-epoch{report.epoch}"
    ckpt = Checkpoint(run.model, run.vocab, config.name, version, info)
    progress = run.progress
    if report.best:
        progress.best_cider, progress.bad_epochs = report.val_cider, 0
        save_checkpoint(out, ckpt)
    else:
        progress.bad_epochs += 1
    progress.epoch = report.epoch
    progress.history.append(asdict(report))
    save_state(out, ckpt, run.optimizer, progress)
