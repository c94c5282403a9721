"""`imgindex` commands that run Beam jobs or read their output: caption, index, run, search."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.table import Table

from captioning.archives.records import ReadConfig
from indexing.ann import AnnConfig
from pipelines.caption.config import CaptionConfig
from pipelines.cli.common import (
    CaptionerFlags,
    app,
    captioner_flags,
    err,
    field_default,
    flag,
    flag_group,
    out,
)

if TYPE_CHECKING:
    from pipelines.caption.summary import RunSummary

BEAM_ARGS_HELP = (
    "Beam pipeline options go after `--`. Jobs run on Beam's local in-process runner "
    "(FnApiRunner) unless told otherwise, e.g. -- --direct_num_workers=2 "
    "--direct_running_mode=multi_processing, -- --runner DaskRunner --dask_client_address "
    "tcp://HOST:8786, or -- --runner DataflowRunner --project P --region R --temp_location "
    "gs://BUCKET/tmp (docs/runners.md)"
)
BEAM_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}

JOB_OPTIONS: dict[str, tuple[Any, type]] = {
    "batch_size": (Annotated[int, typer.Option("--batch-size")], CaptionConfig),
    "overwrite": (Annotated[bool, typer.Option("--overwrite")], CaptionConfig),
    "image_column": (
        Annotated[str, typer.Option("--image-column", help="Parquet column with image bytes.")],
        ReadConfig,
    ),
    "model_copies": (
        Annotated[
            int | None,
            typer.Option(
                "--model-copies", help="Share the model across a worker's processes, N copies."
            ),
        ],
        CaptionConfig,
    ),
    "decode_on": (
        Annotated[
            str,
            typer.Option(
                "--decode-on",
                help="Where JPEGs are decoded: cpu, device (the model's GPU; HF models without a "
                "per-image prompt) or auto (device when the model is on a GPU and can).",
            ),
        ],
        CaptionConfig,
    ),
    "max_failure_rate": (
        Annotated[
            float,
            typer.Option(
                "--max-failure-rate",
                metavar="FRACTION",
                help="Exit with code 3 when more than this fraction of the images read fail "
                "(the tables and run.json are written first).",
            ),
        ],
        CaptionConfig,
    ),
}
JOB_FLAGS = [
    flag(name, option, field_default(config, name))
    for name, (option, config) in JOB_OPTIONS.items()
]


@dataclass(frozen=True, slots=True)
class JobFlags:
    """The caption job's flags that caption and run share, parsed once."""

    batch_size: int
    overwrite: bool
    image_column: str
    model_copies: int | None
    decode_on: str
    max_failure_rate: float

    def caption_config(self, input_: str, out_dir: str, captioner: CaptionerFlags) -> CaptionConfig:
        return CaptionConfig(
            input=input_,
            out=out_dir,
            model=captioner.model,
            batch_size=self.batch_size,
            overwrite=self.overwrite,
            captioner=captioner.options,
            read=ReadConfig(image_column=self.image_column),
            model_copies=self.model_copies,
            decode_on=self.decode_on,
            max_failure_rate=self.max_failure_rate,
        )


job_flags = flag_group("job", JOB_FLAGS, JobFlags)


def run_caption_job(config: CaptionConfig, beam_args: list[str]) -> RunSummary:
    """Run the caption job with a live progress line, then print its counts."""
    from rich.live import Live

    from pipelines.caption.pipeline import run_caption  # Beam loads only when a job runs

    with Live(console=err, refresh_per_second=4, transient=True) as live:

        def on_progress(counts: dict[str, int], seconds: float) -> None:
            done = counts["captioned"] + counts["failed"]
            rate = done / seconds if seconds > 0 else 0.0
            live.update(
                f"[bold]{done}[/] images done, {rate:.1f} images/s, "
                f"{counts['failed']} failed, {seconds:.0f} s"
            )

        summary = run_caption(config, beam_args, on_progress=on_progress)
    _print_summary(summary, config.out)
    if not summary.balanced:
        raise typer.Exit(1)
    return summary


def _print_summary(summary: RunSummary, out_dir: str) -> None:
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
        f"{summary.failed_total}: {verdict}. Output in {out_dir}",
        soft_wrap=True,
    )


@app.command(context_settings=BEAM_ARGS, epilog=BEAM_ARGS_HELP)
@captioner_flags
@job_flags
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
    captioner: CaptionerFlags,
    job: JobFlags,
) -> None:
    """Caption an archive with a Beam pipeline: captions and failures to Parquet."""
    run_caption_job(job.caption_config(input_, out_dir, captioner), list(ctx.args))


def _index(
    captions_dir: str,
    index_dir: str,
    embedder: str | None,
    batch_size: int,
    overwrite: bool,
    beam_args: list[str],
    ann: dict[str, Any] | None = None,
):
    from indexing.embed import DEFAULT_EMBEDDER
    from pipelines.index.pipeline import IndexConfig, run_index

    config = IndexConfig(
        captions_dir=captions_dir,
        out_dir=index_dir,
        embedder=embedder or DEFAULT_EMBEDDER,
        batch_size=batch_size,
        overwrite=overwrite,
        **(ann or {}),
    )
    with err.status("embedding captions and building the index ..."):
        summary = run_index(config, beam_args)
    err.print(
        f"indexed {summary.count} captions ({summary.dimension}-d) in "
        f"{summary.seconds:.1f} s: {summary.out_dir}"
    )
    return summary


IndexTypeOpt = Annotated[
    str,
    typer.Option(
        "--index-type",
        help="auto, flat, ivf-flat, ivf-sq8, ivf-pq or hnsw. auto: exact Flat below 50k "
        "captions, else IVF-Flat, IVF-SQ8, then IVF-PQ with re-ranking, the first that "
        "fits --memory-budget.",
    ),
]
MemoryBudgetOpt = Annotated[
    str | None,
    typer.Option(
        "--memory-budget", metavar="SIZE", help="Most memory the index may take, e.g. 4GB."
    ),
]
TargetRecallOpt = Annotated[
    float,
    typer.Option(
        "--target-recall",
        metavar="R",
        help="Recall@10 against exact search that the search parameters are tuned to reach.",
    ),
]
DEFAULT_INDEX_TYPE = field_default(AnnConfig, "index_type")
DEFAULT_TARGET_RECALL = field_default(AnnConfig, "target_recall")
EmbedderOpt = Annotated[
    str | None,
    typer.Option(
        "--embedder",
        help="sentence-transformers model name or local directory. "
        "Default: all-MiniLM-L6-v2 (packaged, offline).",
    ),
]


@app.command(context_settings=BEAM_ARGS, epilog=BEAM_ARGS_HELP)
def index(
    ctx: typer.Context,
    captions_dir: Annotated[
        str, typer.Argument(metavar="OUT", help="A caption run's output folder.")
    ],
    index_dir: Annotated[str, typer.Option("--out", help="Index folder to write.")],
    embedder: EmbedderOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 256,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    index_type: IndexTypeOpt = DEFAULT_INDEX_TYPE,
    memory_budget: MemoryBudgetOpt = None,
    target_recall: TargetRecallOpt = DEFAULT_TARGET_RECALL,
) -> None:
    """Embed a caption run's captions and build a FAISS index."""
    ann = {
        "index_type": index_type,
        "memory_budget": memory_budget,
        "target_recall": target_recall,
    }
    _index(captions_dir, index_dir, embedder, batch_size, overwrite, list(ctx.args), ann)


@app.command(context_settings=BEAM_ARGS, epilog=BEAM_ARGS_HELP)
@captioner_flags
@job_flags
def run(
    ctx: typer.Context,
    input_: Annotated[str, typer.Argument(metavar="INPUT", help="Images to caption and index.")],
    out_dir: Annotated[
        str, typer.Option("--out", help="Output folder; the index goes to OUT/index.")
    ],
    captioner: CaptionerFlags,
    job: JobFlags,
    embedder: EmbedderOpt = None,
) -> None:
    """Caption + index in one go."""
    beam_args = list(ctx.args)
    run_caption_job(job.caption_config(input_, out_dir, captioner), beam_args)
    _index(out_dir, f"{out_dir.rstrip('/')}/index", embedder, 256, job.overwrite, beam_args)


@app.command()
def search(
    index_dir: Annotated[str, typer.Argument(metavar="INDEX", help="An index folder.")],
    query: Annotated[str, typer.Argument(help="What to look for, in words.")],
    k: Annotated[int, typer.Option("-k", "--top", help="Number of results.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    nprobe: Annotated[
        int | None,
        typer.Option("--nprobe", help="IVF lists to visit (IVF indexes); default: the tuned one."),
    ] = None,
    ef_search: Annotated[
        int | None,
        typer.Option("--ef-search", help="HNSW search breadth (hnsw); default: the tuned one."),
    ] = None,
    k_factor: Annotated[
        int | None,
        typer.Option(
            "--k-factor", help="Candidates re-ranked per hit (ivf-pq); default: the tuned one."
        ),
    ] = None,
) -> None:
    """Search an index with natural-language text."""
    from indexing.search import open_index

    hits = open_index(index_dir).search(
        query, k, nprobe=nprobe, ef_search=ef_search, k_factor=k_factor
    )
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
                        "url": h.url,
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
