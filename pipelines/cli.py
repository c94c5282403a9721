"""The `imgindex` command line: parses flags, builds configs, calls the packages."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="imgindex",
    help="Caption very large image archives and search them by text.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def _fail(message: str) -> None:
    raise UsageError(message)


def _error(message: str) -> None:
    """One line on stderr, never wrapped or styled: scripts grep these."""
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)


ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Model: a native model DIR, native:DIR, or hf:NAME_OR_PATH. "
        "Default: the shipped imgindex model.",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda[:N]")]
BeamOpt = Annotated[int, typer.Option("--beam-size", help="1 = greedy.")]
MaxLenOpt = Annotated[int, typer.Option("--max-length", help="Most words (new tokens).")]
NumReturnOpt = Annotated[
    int,
    typer.Option("--num-return-sequences", help="Candidates kept per image (at most --beam-size)."),
]
DTypeOpt = Annotated[
    str,
    typer.Option(
        "--dtype", help="auto, float32, float16, bfloat16 (auto: bf16 on GPU, fp32 on CPU)."
    ),
]
PromptOpt = Annotated[
    str | None,
    typer.Option("--prompt", help="Instruction or task prompt for hf: models (e.g. <CAPTION>)."),
]
TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code", help="Allow hf: models that ship Python code (Florence-2)."
    ),
]
PickleOpt = Annotated[
    bool,
    typer.Option(
        "--allow-pickle", help="Allow hf: models with only pickled weights (pytorch_model.bin)."
    ),
]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", help="torch CPU threads per process (cores / processes).")
]


def _captioner_options(
    device: str,
    beam_size: int,
    max_length: int,
    num_return: int,
    dtype: str,
    prompt: str | None,
    trust_remote_code: bool,
    allow_pickle: bool,
    threads: int | None,
):
    from captioning.backends import CaptionerOptions

    return CaptionerOptions(
        device=device,
        beam_size=beam_size,
        max_length=max_length,
        num_return_sequences=num_return,
        dtype=dtype,
        prompt=prompt,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        threads=threads,
    )


@app.command("sample-archive")
def sample_archive(
    out_dir: Annotated[str, typer.Argument(help="Output folder or fsspec URL.")],
    images: Annotated[int, typer.Option("--images", help="Number of images.")] = 100,
    shards: Annotated[int, typer.Option("--shards", help="Number of tar/Parquet shards.")] = 1,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    fmt: Annotated[str, typer.Option("--format", help="folder, tar or parquet.")] = "tar",
    workers: Annotated[int, typer.Option("--workers")] = 2,
) -> None:
    """Generate a world of shapes with exact captions (the default model's world)."""
    from captioning.archive import ArchiveConfig, write_archive

    config = ArchiveConfig(images=images, shards=shards, seed=seed, format=fmt, workers=workers)
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
    limit: Annotated[int | None, typer.Option("--limit", help="Use at most N images.")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue after the last epoch.")
    ] = False,
    workers: Annotated[int, typer.Option("--workers", help="Decoding processes.")] = 2,
) -> None:
    """Train the Show-Attend-Tell captioner on an archive with caption sidecars."""
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from captioning.data import load_training_data
    from captioning.train import TrainConfig
    from captioning.train import train as run_training

    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=lr,
        seed=seed,
        patience=patience,
        alpha_c=alpha_c,
        concept_weight=concept_weight,
    )
    if threads:
        torch.set_num_threads(threads)
    if resume and not (out_dir / ".train-state" / "state.json").is_file():
        _fail(f"--resume: {out_dir} has no training state to resume from")
    if not resume and (out_dir / "model.safetensors").exists():
        _fail(
            f"{out_dir} already holds a model: pass --resume to continue it or pick another --out"
        )
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
            dataset, out_dir, config, resume=resume, on_step=on_step, on_epoch=on_epoch
        )
    best = max(reports, key=lambda r: r.val_cider)
    err.print(f"best epoch {best.epoch}: val CIDEr {best.val_cider:.3f}; model in {out_dir}")


def _read_images(paths: list[Path]) -> tuple[list[tuple[Path, object]], list[tuple[Path, str]]]:
    from captioning.decode import DecodeError, decode_image

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
) -> None:
    """Caption image files; unreadable files get a one-line error and a non-zero exit code."""
    from captioning.backends import load_captioner

    options = _captioner_options(
        device,
        beam_size,
        max_length,
        num_return,
        dtype,
        prompt,
        trust_remote_code,
        allow_pickle,
        threads,
    )
    captioner = load_captioner(model, options)
    good, bad = _read_images(images)
    for p, reason in bad:
        _error(f"{p}: {reason}")
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
    from captioning.backends import CaptionerOptions, NativeCaptioner, load_captioner
    from captioning.explain import attention_figure

    captioner = load_captioner(model, CaptionerOptions(device="cpu", beam_size=beam_size))
    if not isinstance(captioner, NativeCaptioner):
        _fail("explain needs an imgindex attention model (native:DIR), not a Hugging Face model")
    good, bad = _read_images([image])
    if bad:
        _fail(f"{image}: {bad[0][1]}")
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
    from captioning.evaluate import evaluate_captions, load_predictions, load_references

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


BEAM_ARGS_HELP = (
    "Beam pipeline options go after `--`, e.g. -- --runner DirectRunner --direct_num_workers=2"
)


def _caption_config(
    input_: str,
    out_dir: str,
    model: str | None,
    batch_size: int,
    captioner,
    overwrite: bool,
    image_column: str,
    model_copies: int | None,
):
    from captioning.shards import ReadConfig
    from pipelines.caption_pipeline import CaptionConfig

    return CaptionConfig(
        input=input_,
        out=out_dir,
        model=model,
        batch_size=batch_size,
        overwrite=overwrite,
        captioner=captioner,
        read=ReadConfig(image_column=image_column),
        model_copies=model_copies,
    )


def _run_caption_with_display(config, beam_args: list[str]):
    from rich.live import Live

    from pipelines.caption_pipeline import run_caption

    with Live(console=err, refresh_per_second=4, transient=True) as live:

        def on_progress(counts: dict[str, int], seconds: float) -> None:
            done = counts["captioned"] + counts["failed"]
            rate = done / seconds if seconds > 0 else 0.0
            live.update(
                f"[bold]{done}[/] images done, {rate:.1f} images/s, "
                f"{counts['failed']} failed, {seconds:.0f} s"
            )

        summary = run_caption(config, beam_args, on_progress=on_progress)
    table = Table(title=f"caption run {summary.run_id}")
    table.add_column("")
    table.add_column("images", justify="right")
    table.add_row("read", str(summary.read))
    table.add_row("captioned", str(summary.captioned))
    for reason, n in summary.failed.items():
        table.add_row(f"failed: {reason}", str(n))
    table.add_row("seconds", f"{summary.seconds:.1f}")
    table.add_row("images/s", f"{summary.read / max(summary.seconds, 1e-9):.1f}")
    err.print(table)
    verdict = "every image is accounted for" if summary.balanced else "COUNTS DO NOT ADD UP"
    err.print(
        f"read {summary.read} = captioned {summary.captioned} + failed "
        f"{summary.failed_total}: {verdict}. Output in {config.out}",
        soft_wrap=True,
    )
    if not summary.balanced:
        raise typer.Exit(1)
    return summary


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog=BEAM_ARGS_HELP,
)
def caption(
    ctx: typer.Context,
    input_: Annotated[
        str,
        typer.Argument(
            metavar="INPUT",
            help="Folder, tar/Parquet shards, glob or brace pattern; any fsspec URL.",
        ),
    ],
    out_dir: Annotated[str, typer.Option("--out", help="Output folder (or fsspec URL).")],
    model: ModelOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    device: DeviceOpt = "auto",
    beam_size: BeamOpt = 3,
    max_length: MaxLenOpt = 24,
    num_return: NumReturnOpt = 1,
    dtype: DTypeOpt = "auto",
    prompt: PromptOpt = None,
    trust_remote_code: TrustOpt = False,
    allow_pickle: PickleOpt = False,
    threads: ThreadsOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    image_column: Annotated[
        str, typer.Option("--image-column", help="Parquet column with image bytes.")
    ] = "jpg",
    model_copies: Annotated[
        int | None,
        typer.Option(
            "--model-copies", help="Share the model across a worker's processes, N copies."
        ),
    ] = None,
) -> None:
    """Caption an archive with a Beam pipeline: captions and failures to Parquet."""
    options = _captioner_options(
        device,
        beam_size,
        max_length,
        num_return,
        dtype,
        prompt,
        trust_remote_code,
        allow_pickle,
        threads,
    )
    config = _caption_config(
        input_, out_dir, model, batch_size, options, overwrite, image_column, model_copies
    )
    _run_caption_with_display(config, list(ctx.args))


def _index(
    captions_dir: str,
    index_dir: str,
    embedder: str | None,
    batch_size: int,
    overwrite: bool,
    beam_args: list[str],
):
    from indexing.embed import DEFAULT_EMBEDDER
    from pipelines.index_pipeline import IndexConfig, run_index

    config = IndexConfig(
        captions_dir=captions_dir,
        out_dir=index_dir,
        embedder=embedder or DEFAULT_EMBEDDER,
        batch_size=batch_size,
        overwrite=overwrite,
    )
    with err.status("embedding captions and building the index ..."):
        summary = run_index(config, beam_args)
    err.print(
        f"indexed {summary.count} captions ({summary.dimension}-d) in "
        f"{summary.seconds:.1f} s: {summary.out_dir}"
    )
    return summary


EmbedderOpt = Annotated[
    str | None,
    typer.Option(
        "--embedder",
        help="sentence-transformers model name or local directory. "
        "Default: all-MiniLM-L6-v2 (packaged, offline).",
    ),
]


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog=BEAM_ARGS_HELP,
)
def index(
    ctx: typer.Context,
    captions_dir: Annotated[
        str, typer.Argument(metavar="OUT", help="A caption run's output folder.")
    ],
    index_dir: Annotated[str, typer.Option("--out", help="Index folder to write.")],
    embedder: EmbedderOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 256,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
) -> None:
    """Embed a caption run's captions and build a FAISS index."""
    _index(captions_dir, index_dir, embedder, batch_size, overwrite, list(ctx.args))


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog=BEAM_ARGS_HELP,
)
def run(
    ctx: typer.Context,
    input_: Annotated[str, typer.Argument(metavar="INPUT", help="Images to caption and index.")],
    out_dir: Annotated[
        str, typer.Option("--out", help="Output folder; the index goes to OUT/index.")
    ],
    model: ModelOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    device: DeviceOpt = "auto",
    beam_size: BeamOpt = 3,
    max_length: MaxLenOpt = 24,
    num_return: NumReturnOpt = 1,
    dtype: DTypeOpt = "auto",
    prompt: PromptOpt = None,
    trust_remote_code: TrustOpt = False,
    allow_pickle: PickleOpt = False,
    threads: ThreadsOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    image_column: Annotated[str, typer.Option("--image-column")] = "jpg",
    embedder: EmbedderOpt = None,
) -> None:
    """Caption + index in one go."""
    options = _captioner_options(
        device,
        beam_size,
        max_length,
        num_return,
        dtype,
        prompt,
        trust_remote_code,
        allow_pickle,
        threads,
    )
    config = _caption_config(
        input_, out_dir, model, batch_size, options, overwrite, image_column, None
    )
    _run_caption_with_display(config, list(ctx.args))
    _index(out_dir, f"{out_dir.rstrip('/')}/index", embedder, 256, overwrite, list(ctx.args))


@app.command()
def search(
    index_dir: Annotated[str, typer.Argument(metavar="INDEX", help="An index folder.")],
    query: Annotated[str, typer.Argument(help="What to look for, in words.")],
    k: Annotated[int, typer.Option("-k", "--top", help="Number of results.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Search an index with natural-language text."""
    from indexing.search import open_index

    hits = open_index(index_dir).search(query, k)
    if as_json:
        for h in hits:
            print(
                json.dumps(
                    {
                        "rank": h.rank,
                        "score": round(h.score, 6),
                        "key": h.key,
                        "caption": h.caption,
                        "source": h.source,
                        "member": h.member,
                    }
                )
            )
        return
    table = Table(title=f"“{query}”")
    for col, just in (
        ("rank", "right"),
        ("score", "right"),
        ("caption", "left"),
        ("source", "left"),
    ):
        table.add_column(col, justify=just)
    for h in hits:
        table.add_row(str(h.rank), f"{h.score:.3f}", h.caption, f"{h.source} :: {h.member}")
    out.print(table)


def main() -> None:
    """Entry point: known bad input becomes one clear line and exit code 2, never a traceback."""
    # Our own progress display is enough; transformers would add a bar per model load.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(
        level=os.environ.get("IMGINDEX_LOG", "WARNING"),
        format="%(levelname)s %(name)s: %(message)s",
    )
    # Beam warns about Google Cloud client libraries on import; we need none for local runs.
    logging.getLogger().addFilter(lambda r: "apitools not found" not in r.getMessage())
    from captioning.checkpoint import CheckpointError
    from captioning.shards import InputError

    try:
        # Without standalone mode click returns a command's exit code instead of exiting.
        code = app(standalone_mode=False)
    except (
        UsageError,
        InputError,
        CheckpointError,
        FileExistsError,
        FileNotFoundError,
        ValueError,
    ) as e:
        _error(" ".join(str(e).split()))
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("aborted")
        sys.exit(130)
    except Exception as e:  # click's usage errors
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
