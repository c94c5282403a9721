"""`imgindex` commands that run Beam jobs or read their output: caption, index, run, search."""

from __future__ import annotations

import json
from typing import Annotated, Literal

import typer
from rich.table import Table

from pipelines.cli.common import (
    BeamOpt,
    CpuHeapOpt,
    DecodeOnOpt,
    DeviceOpt,
    DTypeOpt,
    ImageColumnOpt,
    MaxLenOpt,
    ModelCopiesOpt,
    ModelOpt,
    NumReturnOpt,
    PickleOpt,
    PromptOpt,
    ThreadsOpt,
    TrustOpt,
    app,
    captioner_options,
    err,
    out,
)

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
    decode_on: str,
):
    from captioning.archives.listing import ReadConfig
    from pipelines.caption.pipeline import CaptionConfig

    return CaptionConfig(
        input=input_,
        out=out_dir,
        model=model,
        batch_size=batch_size,
        overwrite=overwrite,
        captioner=captioner,
        read=ReadConfig(image_column=image_column),
        model_copies=model_copies,
        decode_on=decode_on,
    )


def _run_caption_with_display(config, beam_args: list[str]):
    from rich.live import Live

    from pipelines.caption.pipeline import run_caption

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
    cpu_heap: CpuHeapOpt = "keep",
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    image_column: ImageColumnOpt = "jpg",
    model_copies: ModelCopiesOpt = None,
    decode_on: DecodeOnOpt = "auto",
) -> None:
    """Caption an archive with a Beam pipeline: captions and failures to Parquet."""
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
    config = _caption_config(
        input_,
        out_dir,
        model,
        batch_size,
        options,
        overwrite,
        image_column,
        model_copies,
        decode_on,
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
    from pipelines.index.pipeline import IndexConfig, run_index

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
    cpu_heap: CpuHeapOpt = "keep",
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    image_column: ImageColumnOpt = "jpg",
    model_copies: ModelCopiesOpt = None,
    decode_on: DecodeOnOpt = "auto",
    embedder: EmbedderOpt = None,
) -> None:
    """Caption + index in one go."""
    flags = dict(locals())  # every parameter but the embedder is one of caption's
    del flags["embedder"]
    caption(**flags)
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
    right: Literal["right"] = "right"
    left: Literal["left"] = "left"
    for col, just in (("rank", right), ("score", right), ("caption", left), ("source", left)):
        table.add_column(col, justify=just)
    for h in hits:
        table.add_row(str(h.rank), f"{h.score:.3f}", h.caption, f"{h.source} :: {h.member}")
    out.print(table)
