"""`imgindex` commands around the captioner: sample-archive, train, describe, explain, evaluate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from captioning.api import CaptionerOptions
from captioning.native.config import ModelConfig
from captioning.training.config import EpochReport, TrainConfig
from pipelines.cli.common import (
    CaptionerFlags,
    CpuHeapOpt,
    ModelOpt,
    app,
    captioner_flags,
    err,
    error_line,
    fail,
    field_default,
    flag,
    flag_group,
    out,
)

if TYPE_CHECKING:
    from PIL import Image

    from captioning.training.data import TrainingData


@app.command("sample-archive")
def sample_archive(
    out_dir: Annotated[str, typer.Argument(help="Output folder or fsspec URL.")],
    images: Annotated[int, typer.Option("--images", help="Number of images.")] = 100,
    shards: Annotated[int, typer.Option("--shards", help="Number of tar/Parquet shards.")] = 1,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    fmt: Annotated[str, typer.Option("--format", help="folder, tar or parquet.")] = "tar",
    workers: Annotated[int, typer.Option("--workers")] = 2,
    image_format: Annotated[
        str | None,
        typer.Option(
            "--image-format", help="jpg, png or webp for every image (default: a mix of the three)."
        ),
    ] = None,
) -> None:
    """Generate a world of shapes with exact captions (the default model's world)."""
    from captioning.archives.synthetic.writer import ArchiveConfig, write_archive

    config = ArchiveConfig(
        images=images,
        shards=shards,
        seed=seed,
        format=fmt,
        workers=workers,
        image_format=image_format,
    )
    files = write_archive(out_dir, config)
    err.print(
        f"wrote {images} images ({fmt}, {len(files) if fmt != 'folder' else 1} "
        f"shard(s)) to {out_dir}"
    )


_TRAIN_OPTIONS: dict[str, Any] = {
    "epochs": Annotated[int, typer.Option("--epochs")],
    "batch_size": Annotated[int, typer.Option("--batch-size")],
    "learning_rate": Annotated[float, typer.Option("--lr")],
    "seed": Annotated[int, typer.Option("--seed")],
    "patience": Annotated[int, typer.Option("--patience")],
    "alpha_c": Annotated[
        float,
        typer.Option("--alpha-c", help="Weight of the doubly stochastic attention regulariser."),
    ],
    "concept_weight": Annotated[
        float,
        typer.Option(
            "--concept-weight", help="Weight of the auxiliary bag-of-words loss (0 = off)."
        ),
    ],
    "cpu_heap": CpuHeapOpt,
    "stop_after": Annotated[
        int | None,
        typer.Option(
            "--stop-after",
            help="End after epoch N; the learning-rate schedule still spans --epochs.",
        ),
    ],
}
train_flags = flag_group(
    "config",
    [
        flag(name, option, field_default(TrainConfig, name))
        for name, option in _TRAIN_OPTIONS.items()
    ],
    TrainConfig,
)


@app.command()
@train_flags
def train(
    data: Annotated[str, typer.Argument(help="Training archive: folder, tar or Parquet shards.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Model directory to write.")],
    config: TrainConfig,
    image_size: Annotated[int, typer.Option("--image-size")] = field_default(
        ModelConfig, "image_size"
    ),
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Use at most N images.")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue after the last epoch.")
    ] = False,
    workers: Annotated[int, typer.Option("--workers", help="Decoding processes.")] = 2,
    encoder_channels: Annotated[
        str | None,
        typer.Option(
            "--encoder-channels",
            help="Channels of each encoder stage, e.g. 32,64,128,192 (a new model only).",
        ),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="cpu, cuda or auto (cuda when present).")
    ] = "cpu",
) -> None:
    """Train the Show-Attend-Tell captioner on an archive with caption sidecars."""
    import torch

    from captioning.training.data import load_training_data
    from captioning.training.state import has_state

    if threads:
        torch.set_num_threads(threads)
    architecture = _architecture(encoder_channels, resume)
    device = _training_device(device)
    if resume and not has_state(out_dir):
        fail(f"--resume: {out_dir} has no training state to resume from")
    if not resume and (out_dir / "model.safetensors").exists():
        fail(f"{out_dir} already holds a model: pass --resume to continue it or pick another --out")
    torch.manual_seed(config.seed)
    err.print(f"decoding training images from {data} ...")
    dataset = load_training_data(data, image_size, workers=workers, limit=limit)
    err.print(f"{len(dataset.examples)} images ready; left out: {dict(dataset.skipped) or 'none'}")
    reports = _train_with_progress(
        dataset, out_dir, config, resume=resume, architecture=architecture, device=device
    )
    best = max(reports, key=lambda r: r.val_cider)
    err.print(f"best epoch {best.epoch}: val CIDEr {best.val_cider:.3f}; model in {out_dir}")


def _architecture(encoder_channels: str | None, resume: bool) -> dict | None:
    """--encoder-channels as ModelConfig overrides for a new model."""
    if encoder_channels is None:
        return None
    if resume:
        fail("--encoder-channels: a resumed run keeps the architecture it started with")
    try:
        channels = tuple(int(c) for c in encoder_channels.split(","))
    except ValueError:
        fail(f"--encoder-channels: expected integers like 32,64,128, got {encoder_channels!r}")
    if not channels or min(channels) < 1:
        fail(f"--encoder-channels: expected positive integers, got {encoder_channels!r}")
    return {"encoder_channels": channels}


def _training_device(device: str) -> str:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        fail(f"--device: expected cpu, cuda or auto, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        fail("--device cuda: no CUDA device is available (use --device cpu)")
    return device


def _train_with_progress(
    dataset: TrainingData, out_dir: Path, config: TrainConfig, **kwargs: Any
) -> list[EpochReport]:
    """captioning.training.train.train with a progress bar and a line per epoch on stderr."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from captioning.training.train import train as run_training

    with Progress(
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TextColumn("{task.fields[val]}"),
        TimeRemainingColumn(),
        console=err,
    ) as progress:
        task = progress.add_task("train", total=None, epoch=0, loss=0.0, val="")

        def on_step(epoch: int, step: int, steps: int, loss: float) -> None:
            progress.update(task, total=steps, completed=step, epoch=epoch, loss=loss)

        def on_epoch(r: EpochReport) -> None:
            attr = (
                "" if r.val_attribute_accuracy is None else f" attr {r.val_attribute_accuracy:.3f}"
            )
            msg = f"val CIDEr {r.val_cider:.3f}{attr}, {r.images_per_second:.0f} img/s"
            progress.update(task, val=msg)
            progress.console.print(
                f"epoch {r.epoch}: loss {r.train_loss:.4f}, {msg}" + (" (best)" if r.best else "")
            )

        return run_training(dataset, out_dir, config, on_step=on_step, on_epoch=on_epoch, **kwargs)


def _read_images(
    paths: list[Path],
) -> tuple[list[tuple[Path, Image.Image]], list[tuple[Path, str]]]:
    from captioning.images.decode import DecodeError, decode_image

    good, bad = [], []
    for p in paths:
        try:
            data = p.read_bytes()
        except OSError as e:
            bad.append((p, f"cannot read file: {e.strerror or e}"))
            continue
        try:
            good.append((p, decode_image(data).image))
        except DecodeError as e:
            bad.append((p, e.message))
    return good, bad


@app.command()
@captioner_flags
def describe(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    captioner: CaptionerFlags,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Caption image files; unreadable files get a one-line error and a non-zero exit code."""
    model = captioner.load()
    good, bad = _read_images(images)
    for p, reason in bad:
        error_line(f"{p}: {reason}")
    for start in range(0, len(good), batch_size):
        chunk = good[start : start + batch_size]
        results = model.caption([model.preprocess(img) for _, img in chunk])
        for (p, _), r in zip(chunk, results, strict=True):
            if as_json:
                print(json.dumps({"path": str(p), "caption": r.caption}))
            else:
                print(f"{p}\t{r.caption}")
    if bad:
        raise typer.Exit(1)


@app.command()
def explain(
    image: Annotated[Path, typer.Argument(help="An image file.")],
    out_png: Annotated[Path, typer.Option("--out", help="PNG to write.")],
    model: ModelOpt = None,
    beam_size: Annotated[int, typer.Option("--beam-size")] = field_default(
        CaptionerOptions, "beam_size"
    ),
) -> None:
    """Draw the attention map of every generated word over the image."""
    from captioning.native.captioner import NativeCaptioner
    from captioning.native.explain import attention_figure
    from captioning.registry import load_captioner

    captioner = load_captioner(model, CaptionerOptions(device="cpu", beam_size=beam_size))
    if not isinstance(captioner, NativeCaptioner):
        fail("explain needs an imgindex attention model (native:DIR), not a Hugging Face model")
    assert isinstance(captioner, NativeCaptioner)  # fail() exits; this tells the type checker
    good, bad = _read_images([image])
    if bad:
        fail(f"{image}: {bad[0][1]}")
    caption, figure = attention_figure(captioner, good[0][1])
    figure.save(out_png)
    print(caption)
    err.print(f"attention maps written to {out_png}")


@app.command()
def evaluate(
    predictions: Annotated[str, typer.Argument(help="JSON Lines (describe --json) or Parquet.")],
    references: Annotated[str, typer.Option("--references", help="JSON file or sidecar folder.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
    show: Annotated[int, typer.Option("--show", help="Print N captions beside a reference.")] = 0,
) -> None:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (pycocoevalcap) and attribute accuracy."""
    from captioning.evaluation.metrics import evaluate_captions
    from captioning.evaluation.references import load_predictions, load_references

    preds = load_predictions(predictions)
    refs, truths = load_references(references)
    if show > 0:
        examples = Table(title="model caption vs. reference")
        examples.add_column("key")
        examples.add_column("model")
        examples.add_column("reference")
        for key in sorted(preds)[:show]:
            examples.add_row(key, preds[key], (refs.get(key) or ["(none)"])[0])
        out.print(examples)
    report = evaluate_captions(preds, refs, truths)
    for note in report.notes:
        err.print(f"note: {note}")
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    table = Table(title=f"{report.count} images")
    table.add_column("metric")
    table.add_column("score", justify="right")
    for k, v in report.as_dict().items():
        if k != "count":
            table.add_row(k, "unavailable" if v is None else f"{v:.4f}")
    out.print(table)
