"""`imgindex` commands around the captioner: sample-archive, train, describe, explain, evaluate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from pipelines.cli.common import (
    BeamOpt,
    CpuHeapOpt,
    DeviceOpt,
    DTypeOpt,
    MaxLenOpt,
    ModelOpt,
    NumReturnOpt,
    PickleOpt,
    PromptOpt,
    ThreadsOpt,
    TrustOpt,
    app,
    captioner_options,
    err,
    error_line,
    fail,
    out,
)

if TYPE_CHECKING:
    from PIL import Image


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


@app.command()
def train(
    data: Annotated[str, typer.Argument(help="Training archive: folder, tar or Parquet shards.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Model directory to write.")],
    epochs: Annotated[int, typer.Option("--epochs")] = 14,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 64,
    lr: Annotated[float, typer.Option("--lr")] = 2e-3,
    image_size: Annotated[int, typer.Option("--image-size")] = 96,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    patience: Annotated[int, typer.Option("--patience")] = 4,
    alpha_c: Annotated[
        float,
        typer.Option("--alpha-c", help="Weight of the doubly stochastic attention regulariser."),
    ] = 0.05,
    concept_weight: Annotated[
        float,
        typer.Option(
            "--concept-weight", help="Weight of the auxiliary bag-of-words loss (0 = off)."
        ),
    ] = 1.0,
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads.")] = None,
    cpu_heap: CpuHeapOpt = "keep",
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
    stop_after: Annotated[
        int | None,
        typer.Option(
            "--stop-after",
            help="End after epoch N; the learning-rate schedule still spans --epochs.",
        ),
    ] = None,
) -> None:
    """Train the Show-Attend-Tell captioner on an archive with caption sidecars."""
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from captioning.training.data import load_training_data
    from captioning.training.train import TrainConfig
    from captioning.training.train import train as run_training

    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=lr,
        seed=seed,
        patience=patience,
        alpha_c=alpha_c,
        concept_weight=concept_weight,
        stop_after=stop_after,
        cpu_heap=cpu_heap,
    )
    if threads:
        torch.set_num_threads(threads)
    architecture = None
    if encoder_channels is not None:
        if resume:
            fail("--encoder-channels: a resumed run keeps the architecture it started with")
        try:
            channels = tuple(int(c) for c in encoder_channels.split(","))
        except ValueError:
            fail(f"--encoder-channels: expected integers like 32,64,128, got {encoder_channels!r}")
        if not channels or min(channels) < 1:
            fail(f"--encoder-channels: expected positive integers, got {encoder_channels!r}")
        architecture = {"encoder_channels": channels}
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        fail(f"--device: expected cpu, cuda or auto, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        fail("--device cuda: no CUDA device is available (use --device cpu)")
    if resume and not (out_dir / ".train-state" / "state.json").is_file():
        fail(f"--resume: {out_dir} has no training state to resume from")
    if not resume and (out_dir / "model.safetensors").exists():
        fail(f"{out_dir} already holds a model: pass --resume to continue it or pick another --out")
    torch.manual_seed(seed)
    err.print(f"decoding training images from {data} ...")
    dataset = load_training_data(data, image_size, workers=workers, limit=limit)
    err.print(f"{len(dataset.examples)} images ready; left out: {dict(dataset.skipped) or 'none'}")
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

        def on_epoch(r) -> None:  # noqa: ANN001 - EpochReport
            attr = (
                "" if r.val_attribute_accuracy is None else f" attr {r.val_attribute_accuracy:.3f}"
            )
            msg = f"val CIDEr {r.val_cider:.3f}{attr}, {r.images_per_second:.0f} img/s"
            progress.update(task, val=msg)
            progress.console.print(
                f"epoch {r.epoch}: loss {r.train_loss:.4f}, {msg}" + (" (best)" if r.best else "")
            )

        reports = run_training(
            dataset,
            out_dir,
            config,
            resume=resume,
            architecture=architecture,
            on_step=on_step,
            on_epoch=on_epoch,
            device=device,
        )
    best = max(reports, key=lambda r: r.val_cider)
    err.print(f"best epoch {best.epoch}: val CIDEr {best.val_cider:.3f}; model in {out_dir}")


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
def describe(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    model: ModelOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    device: DeviceOpt = "auto",
    beam_size: BeamOpt = 3,
    max_length: MaxLenOpt = 24,
    num_return: NumReturnOpt = 1,
    dtype: DTypeOpt = "auto",
    prompt: PromptOpt = None,
    trust_remote_code: TrustOpt = False,
    allow_pickle: PickleOpt = False,
    threads: ThreadsOpt = None,
    cpu_heap: CpuHeapOpt = "keep",
) -> None:
    """Caption image files; unreadable files get a one-line error and a non-zero exit code."""
    from captioning.registry import load_captioner

    options = captioner_options(
        device,
        beam_size,
        max_length,
        num_return,
        dtype,
        prompt,
        trust_remote_code,
        allow_pickle,
        threads,
        cpu_heap,
    )
    options.set_up_process()
    captioner = load_captioner(model, options)
    good, bad = _read_images(images)
    for p, reason in bad:
        error_line(f"{p}: {reason}")
    for start in range(0, len(good), batch_size):
        chunk = good[start : start + batch_size]
        results = captioner.caption([captioner.preprocess(img) for _, img in chunk])
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
    beam_size: Annotated[int, typer.Option("--beam-size")] = 3,
) -> None:
    """Draw the attention map of every generated word over the image."""
    from captioning.api import CaptionerOptions
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
    from captioning.evaluation.metrics import evaluate_captions, load_predictions, load_references

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
