"""`imgindex` commands for collections (nightly reindexing): update, versions, rollback."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

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
from pipelines.cli.job_commands import (
    BEAM_ARGS,
    BEAM_ARGS_HELP,
    JOB_OPTIONS,
    IndexTypeOpt,
    JobFlags,
    MemoryBudgetOpt,
    TargetRecallOpt,
)
from pipelines.update.config import UpdateConfig

if TYPE_CHECKING:
    from pipelines.update.run import UpdateSummary

_UPDATE_JOB = ("batch_size", "image_column", "model_copies", "decode_on", "max_failure_rate")
_UPDATE_OPTIONS = {
    "max_images": typer.Option(
        "--max-images",
        metavar="N",
        help="Caption at most N images tonight: new and changed first, then those captioned by "
        "another model version.",
    ),
    "keep": typer.Option("--keep", metavar="N", help="Published versions to keep."),
    "allow_shrink": typer.Option(
        "--allow-shrink",
        help="Publish even when the input lists far fewer images than the catalog holds.",
    ),
    "lock_timeout_s": typer.Option(
        "--lock-timeout",
        metavar="SECONDS",
        help="Take over a lock whose owner has not shown a heartbeat for this long.",
    ),
    "embedder": typer.Option("--embedder", help="sentence-transformers name or local directory."),
}
_INDEX_OPTIONS = {
    "index_type": IndexTypeOpt,
    "memory_budget": MemoryBudgetOpt,
    "target_recall": TargetRecallOpt,
}
_TYPES = {
    "max_images": int | None,
    "keep": int,
    "allow_shrink": bool,
    "lock_timeout_s": float,
    "embedder": str,
}
UPDATE_FLAGS = (
    [
        flag(name, JOB_OPTIONS[name][0], field_default(JOB_OPTIONS[name][1], name))
        for name in _UPDATE_JOB
    ]
    + [
        flag(name, Annotated[_TYPES[name], option], field_default(UpdateConfig, name))  # type: ignore[misc]
        for name, option in _UPDATE_OPTIONS.items()
    ]
    + [
        flag(name, option, field_default(UpdateConfig, name))
        for name, option in _INDEX_OPTIONS.items()
    ]
)


@dataclass(frozen=True, slots=True)
class UpdateFlags:
    batch_size: int
    image_column: str
    model_copies: int | None
    decode_on: str
    max_failure_rate: float
    max_images: int | None
    keep: int
    allow_shrink: bool
    lock_timeout_s: float
    embedder: str
    index_type: str
    memory_budget: str | None
    target_recall: float

    def config(self, input_: str, collection: str, captioner: CaptionerFlags) -> UpdateConfig:
        job = JobFlags(self.batch_size, False, self.image_column, self.model_copies,
                       self.decode_on, self.max_failure_rate)  # fmt: skip
        caption = job.caption_config(input_, collection, captioner)
        return UpdateConfig(
            caption=caption,
            collection=collection,
            embedder=self.embedder,
            max_images=self.max_images,
            keep=self.keep,
            allow_shrink=self.allow_shrink,
            lock_timeout_s=self.lock_timeout_s,
            index_type=self.index_type,
            memory_budget=self.memory_budget,
            target_recall=self.target_recall,
        )


update_flags = flag_group("job", UPDATE_FLAGS, UpdateFlags)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


@app.command(context_settings=BEAM_ARGS, epilog=BEAM_ARGS_HELP)
@captioner_flags
@update_flags
def update(
    ctx: typer.Context,
    input_: Annotated[str, typer.Argument(metavar="INPUT", help="The archive as it is tonight.")],
    collection: Annotated[
        str, typer.Option("--collection", metavar="ROOT", help="The collection root.")
    ],
    captioner: CaptionerFlags,
    job: UpdateFlags,
    as_json: JsonOpt = False,
) -> None:
    """Caption only what changed since the last update, then publish a new index version."""
    from pipelines.update.run import run_update, summary_json

    config = job.config(input_, collection, captioner)
    with err.status("updating the collection ..."):
        summary = run_update(config, list(ctx.args))
    if summary.took_over_lock:
        err.print(f"took over a stale lock: {summary.took_over_lock}", markup=False)
    if as_json:
        print(summary_json(summary))
        return
    _print_update(summary)


def _print_update(summary: UpdateSummary) -> None:
    table = Table(title=f"update {summary.run_id}")
    table.add_column("")
    table.add_column("images", justify="right")
    for name, value in summary.to_dict()["counts"].items():
        table.add_row(name, str(value))
    err.print(table)
    if summary.published:
        out.print(f"published {summary.version} in {summary.seconds:.1f} s")
        if index := summary.index:  # incremental or rebuilt, and why (indexing.incremental)
            out.print(f"index: {index['mode']} {index['index_type']}: {index['reason']}",
                      markup=False)  # fmt: skip
    else:
        out.print(f"{summary.note}; current version: {summary.version or 'none'}")


@app.command()
def versions(
    root: Annotated[str, typer.Argument(metavar="ROOT", help="The collection root.")],
    as_json: JsonOpt = False,
) -> None:
    """List a collection's published versions, newest first."""
    from indexing.collection import Collection

    found = Collection.open(root).versions()
    if as_json:
        for v in found:
            print(json.dumps({"version": v.name, "current": v.current, "created_at": v.created_at,
                              "run_id": v.run_id, "counts": v.counts}))  # fmt: skip
        return
    table = Table(title=root)
    for col in ("version", "current", "created", "indexed", "new", "changed", "deleted"):
        table.add_column(col)
    for v in found:
        counts = [str(v.counts.get(k, "")) for k in ("indexed", "new", "changed", "deleted")]
        table.add_row(v.name, "*" if v.current else "", v.created_at, *counts)
    out.print(table)


@app.command()
def rollback(
    root: Annotated[str, typer.Argument(metavar="ROOT", help="The collection root.")],
    to: Annotated[
        str | None, typer.Option("--to", help="A kept version (default: the one before).")
    ] = None,
) -> None:
    """Make an earlier published version current, atomically."""
    from indexing.collection import Collection

    col = Collection.open(root)
    with col.lock():
        name = col.rollback(to)
    out.print(f"current version: {name}")
