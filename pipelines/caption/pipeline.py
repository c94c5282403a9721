"""The caption job: image shards -> OUT/captions/*.parquet + OUT/failures/*.parquet + OUT/run.json.

    ListShards -> Reshuffle -> ReadShards -> DecodeImages -> CaptionImages -> ToRows
                                   |             |             (RunInference)    |
                                   +-> failures  +-> failures                    +-> failures

Shards are listed up front (a bad input fails before any work) and spread over workers; members
are streamed inside a shard. Both tables go through Beam's Parquet sink, which writes to temporary
files and renames them when the job commits, so a failed run leaves no half-written part visible.

A job whose share of failed images is over `max_failure_rate` still writes both tables and
run.json, then raises JobFailed. A model that fails every image of its first batches with one
error (a broken model, a device out of memory) stops the job early, with JobFailed too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import apache_beam as beam
import fsspec
from apache_beam.io.parquetio import WriteToParquet
from apache_beam.ml.inference.base import RunInference

from captioning.api import Captioner, ModelIdentity
from captioning.archives.listing import Shard, list_shards
from captioning.records import CAPTION_SCHEMA, FAILURE_SCHEMA
from captioning.registry import load_preprocessor, model_identity
from pipelines import imgindex_version
from pipelines.caption.config import CaptionConfig
from pipelines.caption.handler import NAMESPACE, STOP_AFTER_FAILED_BATCHES, CaptionModelHandler
from pipelines.caption.progress import read_progress
from pipelines.caption.summary import (
    RunSummary,
    failure_rate_message,
    model_broken,
    summarize,
)
from pipelines.caption.transforms import FAILURES, CountFailures, DecodeImages, ReadShard, ToRows
from pipelines.errors import JobFailed, OutputExistsError, UsageError
from pipelines.options import pipeline_options

logger = logging.getLogger(__name__)


def _is_local(url: str) -> bool:
    protocol = fsspec.core.url_to_fs(url)[0].protocol  # a name or a tuple of aliases
    return "file" in (protocol if isinstance(protocol, tuple) else (protocol,))


def prepare_output(out: str, overwrite: bool) -> None:
    """Refuse a non-empty OUT unless overwrite; with overwrite, remove what a run writes."""
    fs, root = fsspec.core.url_to_fs(out)
    if fs.exists(root) and fs.ls(root):
        if not overwrite:
            raise OutputExistsError(
                f"{out} is not empty: pass --overwrite to replace its captions, "
                "or pick another --out"
            )
        for name in ("captions", "failures", "run.json", "index", ".progress"):
            if fs.exists(f"{root}/{name}"):
                fs.rm(f"{root}/{name}", recursive=True)
    fs.makedirs(root, exist_ok=True)


def build_pipeline(
    p: beam.Pipeline,
    config: CaptionConfig,
    shards: list[Shard],
    run_id: str,
    model_name: str,
    model_version: str,
    progress_dir: str | None,
    on_model_load: Callable[[Captioner], None] | None = None,
) -> None:
    """The job's steps on `p`, labelled as in the module docstring.

    Args:
        on_model_load: passed to CaptionModelHandler as `on_load`.
    """
    captions, failures = caption_steps(
        p | "ListShards" >> beam.Create(shards),
        config,
        run_id,
        (model_name, model_version),
        progress_dir,
        on_model_load,
    )
    _ = captions | "WriteCaptions" >> WriteToParquet(
        f"{config.out}/captions/part", CAPTION_SCHEMA, file_name_suffix=".parquet"
    )
    _ = (
        failures
        | "MergeFailures" >> beam.Flatten()
        | "FailureDicts" >> beam.ParDo(CountFailures(progress_dir))
        | "WriteFailures"
        >> WriteToParquet(
            f"{config.out}/failures/part", FAILURE_SCHEMA, file_name_suffix=".parquet"
        )
    )


def caption_steps(
    work: beam.PCollection,
    config: CaptionConfig,
    run_id: str,
    model: tuple[str, str],
    progress_dir: str | None,
    on_model_load: Callable[[Captioner], None] | None = None,
) -> tuple[beam.PCollection, tuple[beam.PCollection, ...]]:
    """Reshuffle -> ReadShards -> DecodeImages -> CaptionImages -> ToRows over `work` (shards, or
    (shard, members wanted) pairs): the caption dicts, and the three failure outputs (read,
    decode, caption) for the caller to merge. The caption job and the update's caption job share
    these steps and their labels; `model` is the (name, version) every row records."""
    read = (
        work
        | "Reshuffle" >> beam.Reshuffle()
        | "ReadShards"
        >> beam.ParDo(ReadShard(config.read, run_id)).with_outputs(FAILURES, main="entries")
    )
    decoded = read.entries | "DecodeImages" >> beam.ParDo(
        DecodeImages(config.decode, run_id, config.model, config.captioner, config.decode_on)
    ).with_outputs(FAILURES, main="images")
    # A job that accepts any failure rate has nothing to stop early for.
    stop_after = STOP_AFTER_FAILED_BATCHES if config.max_failure_rate < 1 else None
    handler = CaptionModelHandler(
        config.model,
        config.captioner,
        config.batch_size,
        config.model_copies,
        on_load=on_model_load,
        stop_after_failed_batches=stop_after,
    )
    rows = (
        decoded.images
        | "CaptionImages" >> RunInference(handler)
        | "ToRows"
        >> beam.ParDo(ToRows(run_id, *model, progress_dir)).with_outputs(FAILURES, main="captions")
    )
    return rows.captions, (read[FAILURES], decoded[FAILURES], rows[FAILURES])


def job_counters(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    """A finished job's imgindex counters: name -> committed total over every step."""
    query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))
    totals: dict[str, int] = {}
    for c in query["counters"]:
        totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + int(c.committed or 0)
    return totals


ProgressFn = Callable[[dict[str, int], float], None]


def run_caption(
    config: CaptionConfig,
    beam_args: list[str],
    on_progress: ProgressFn | None = None,
    on_model_load: Callable[[Captioner], None] | None = None,
) -> RunSummary:
    """Validate, run the job to the end, write run.json; returns the summary.

    Args:
        on_progress: called about twice a second with the counts so far and the seconds
            elapsed (a local run only: workers must write beside the output).
        on_model_load: called with each captioner the job loads, in the process that loads it
            (see CaptionModelHandler's `on_load`); must pickle.

    Raises:
        JobFailed: more than `config.max_failure_rate` of the images failed (the tables and
            run.json are written first), or the model failed every image of its first batches
            with one error and the job stopped early.
    """
    shards = list_shards(config.input)  # raises InputError before any work
    config, identity = check_model(config)
    prepare_output(config.out, config.overwrite)
    run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"

    def build(p: beam.Pipeline, progress_dir: str | None) -> None:
        build_pipeline(
            p, config, shards, run_id, identity.name, identity.version, progress_dir, on_model_load
        )

    try:
        counters, seconds = _run(config.out, beam_args, build, on_progress)
    except Exception as e:
        if (broken := model_broken(e)) is None:
            raise
        raise JobFailed(
            f"stopped early: {broken}; no tables were written. Check the model and its device"
        ) from e
    summary = summarize(
        counters, run_id, seconds, identity.name, identity.version, config.max_failure_rate
    )
    write_run_json(config, summary, beam_args, len(shards))
    if summary.failure_rate_exceeded:
        raise JobFailed(failure_rate_message(summary, config.out))
    return summary


def check_model(config: CaptionConfig) -> tuple[CaptionConfig, ModelIdentity]:
    """Check the model here: a bad --model fails now, with a clear message, not inside a
    worker. Returns the config with the JPEG draft size the model allows, and its identity."""
    identity = model_identity(config.model, config.captioner)
    if config.decode.draft_size is None and identity.input_size:
        # JPEGs decode at the smallest 1/2^k scale still >= the model's input: nearly the same
        # pixels after the model's resize, for a fraction of the work on large photos.
        side = identity.input_size
        config = dataclasses.replace(
            config, decode=dataclasses.replace(config.decode, draft_size=(side, side))
        )
    # The preprocessor (no weights) checks what the model's files decide, e.g. a Florence-2 task
    # --prompt, before any work: inside a worker it would fail on every image.
    preprocessor = load_preprocessor(config.model, config.captioner)
    if config.decode_on == "device" and not getattr(preprocessor, "decodes_on_device", False):
        raise UsageError(
            f"--decode-on device: {identity.name} cannot decode on its device (only Hugging Face "
            "models without per-image text can: BLIP, GIT, ViT-GPT2, BLIP-2); use --decode-on cpu"
        )
    return config, identity


def _run(
    out: str,
    beam_args: list[str],
    build: Callable[[beam.Pipeline, str | None], None],
    on_progress: ProgressFn | None,
) -> tuple[dict[str, int], float]:
    """Build and run the pipeline to the end, reporting progress on the way; returns its
    counters and the seconds it took."""
    # Live progress only where workers can write beside the output (a local run).
    progress_dir = None
    if on_progress is not None and _is_local(out):
        progress_dir = str(Path(fsspec.core.url_to_fs(out)[1]) / ".progress")
        Path(progress_dir).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stop = threading.Event()
    if progress_dir is not None and on_progress is not None:
        report, folder = on_progress, progress_dir

        def poll() -> None:
            while not stop.wait(0.5):
                report(read_progress(folder), time.perf_counter() - started)

        threading.Thread(target=poll, daemon=True).start()
    try:
        p = beam.Pipeline(options=pipeline_options(beam_args))
        build(p, progress_dir)
        result = p.run()
        result.wait_until_finish()
        seconds = time.perf_counter() - started
        if progress_dir is not None and on_progress is not None:
            on_progress(read_progress(progress_dir), seconds)
    finally:
        stop.set()
        if progress_dir is not None:
            shutil.rmtree(progress_dir, ignore_errors=True)
    return job_counters(result), seconds


def write_run_json(
    config: CaptionConfig, summary: RunSummary, beam_args: list[str], shards: int
) -> None:
    import torch

    doc = {
        "run_id": summary.run_id,
        "input": config.input,
        "shards": shards,
        "options": {
            "model": config.model or "default",
            "batch_size": config.batch_size,
            "captioner": asdict(config.captioner),
            "image_column": config.read.image_column,
            "max_pixels": config.decode.max_pixels,
            "jpeg_draft_size": config.decode.draft_size,
            "beam_args": beam_args,
        },
        "failure_limit": {
            "max_failure_rate": summary.max_failure_rate,
            "failure_rate": round(summary.failure_rate, 6),
            "exceeded": summary.failure_rate_exceeded,
        },
        "model": {"name": summary.model, "version": summary.model_version},
        "counts": {
            "read": summary.read,
            "captioned": summary.captioned,
            "failed": summary.failed_total,
            "failed_by_reason": summary.failed,
            "failed_by_stage": summary.failed_by_stage,
            "balanced": summary.balanced,
        },
        "seconds": {
            "total": round(summary.seconds, 3),
            **{k: round(v, 3) for k, v in summary.stage_seconds.items()},
        },
        "versions": {
            "imgindex": imgindex_version(),
            "apache_beam": beam.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    fs, root = fsspec.core.url_to_fs(config.out)
    with fs.open(f"{root}/run.json", "w") as f:
        f.write(json.dumps(doc, indent=2))
