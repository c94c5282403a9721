"""The caption job: image shards -> OUT/captions/*.parquet + OUT/failures/*.parquet + OUT/run.json.

    ListShards -> Reshuffle -> ReadShards -> DecodeImages -> CaptionImages -> ToRows
                                   |             |             (RunInference)    |
                                   +-> failures  +-> failures                    +-> failures

Shards are listed up front (a bad input fails before any work) and spread over workers; members
are streamed inside a shard. Both tables go through Beam's Parquet sink, which writes to temporary
files and renames them when the job commits, so a failed run leaves no half-written part visible.
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
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import apache_beam as beam
import fsspec
from apache_beam.io.parquetio import WriteToParquet
from apache_beam.ml.inference.base import RunInference

from captioning.api import CaptionerOptions
from captioning.archives.listing import ReadConfig, Shard, list_shards
from captioning.images.decode import DecodeConfig
from captioning.records import CAPTION_SCHEMA, FAILURE_SCHEMA
from captioning.registry import load_preprocessor, model_identity
from pipelines import imgindex_version
from pipelines.caption.handler import NAMESPACE, CaptionModelHandler
from pipelines.caption.progress import read_progress
from pipelines.caption.transforms import FAILURES, CountFailures, DecodeImages, ReadShard, ToRows
from pipelines.errors import OutputExistsError, UsageError
from pipelines.options import pipeline_options

logger = logging.getLogger(__name__)


DECODE_ON = ("auto", "cpu", "device")


@dataclass(frozen=True, slots=True)
class CaptionConfig:
    input: str
    out: str
    model: str | None = None  # None = the shipped default
    batch_size: int = 32
    overwrite: bool = False
    captioner: CaptionerOptions = field(default_factory=CaptionerOptions)
    read: ReadConfig = field(default_factory=ReadConfig)
    # draft_size None: decode JPEGs at the model's input size (see run_caption)
    decode: DecodeConfig = field(default_factory=lambda: DecodeConfig(draft_size=None))
    model_copies: int | None = None  # >1 (or 1) shares the model across a worker's processes
    # Where plain JPEGs are decoded: "cpu" (DecodeImages, Pillow), "device" (the captioner's own
    # device, nvJPEG on a GPU: Hugging Face models without per-image text only), "auto" = device
    # when the captioner runs on a GPU and can, else cpu.
    decode_on: str = "auto"

    def __post_init__(self) -> None:
        if self.decode_on not in DECODE_ON:
            raise UsageError(
                f"--decode-on must be one of {', '.join(DECODE_ON)}, got {self.decode_on!r}"
            )
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.model_copies is not None and self.model_copies < 1:
            raise UsageError(f"--model-copies must be at least 1, got {self.model_copies}")


@dataclass(frozen=True, slots=True)
class RunSummary:
    run_id: str
    read: int
    captioned: int
    failed: dict[str, int]
    seconds: float
    stage_seconds: dict[str, float]
    model: str
    model_version: str

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    @property
    def balanced(self) -> bool:
        """Every image that was read is in exactly one table."""
        return self.read == self.captioned + self.failed_total


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
) -> None:
    read = (
        p
        | "ListShards" >> beam.Create(shards)
        | "Reshuffle" >> beam.Reshuffle()
        | "ReadShards"
        >> beam.ParDo(ReadShard(config.read, run_id)).with_outputs(FAILURES, main="entries")
    )
    decoded = read.entries | "DecodeImages" >> beam.ParDo(
        DecodeImages(config.decode, run_id, config.model, config.captioner, config.decode_on)
    ).with_outputs(FAILURES, main="images")
    handler = CaptionModelHandler(
        config.model, config.captioner, config.batch_size, config.model_copies
    )
    rows = (
        decoded.images
        | "CaptionImages" >> RunInference(handler)
        | "ToRows"
        >> beam.ParDo(ToRows(run_id, model_name, model_version, progress_dir)).with_outputs(
            FAILURES, main="captions"
        )
    )
    _ = rows.captions | "WriteCaptions" >> WriteToParquet(
        f"{config.out}/captions/part", CAPTION_SCHEMA, file_name_suffix=".parquet"
    )
    _ = (
        (read[FAILURES], decoded[FAILURES], rows[FAILURES])
        | "MergeFailures" >> beam.Flatten()
        | "FailureDicts" >> beam.ParDo(CountFailures(progress_dir))
        | "WriteFailures"
        >> WriteToParquet(
            f"{config.out}/failures/part", FAILURE_SCHEMA, file_name_suffix=".parquet"
        )
    )


def _counters(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))
    totals: dict[str, int] = {}
    for c in query["counters"]:
        totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + int(c.committed or 0)
    return totals


ProgressFn = Callable[[dict[str, int], float], None]


def run_caption(
    config: CaptionConfig, beam_args: list[str], on_progress: ProgressFn | None = None
) -> RunSummary:
    """Validate, run the job to the end, write run.json; returns the summary."""
    shards = list_shards(config.input)  # raises InputError before any work
    # Check the model here: a bad --model fails now, with a clear message, not inside a worker.
    identity = model_identity(config.model, config.captioner)
    model_name, model_version = identity.name, identity.version
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
            f"--decode-on device: {model_name} cannot decode on its device (only Hugging Face "
            "models without per-image text can: BLIP, GIT, ViT-GPT2, BLIP-2); use --decode-on cpu"
        )
    prepare_output(config.out, config.overwrite)
    run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    # Live progress only where workers can write beside the output (a local run).
    progress_dir = None
    if on_progress is not None and _is_local(config.out):
        progress_dir = str(Path(fsspec.core.url_to_fs(config.out)[1]) / ".progress")
        Path(progress_dir).mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    stop = threading.Event()
    if progress_dir is not None and on_progress is not None:
        report = on_progress

        def poll() -> None:
            while not stop.wait(0.5):
                report(read_progress(progress_dir), time.perf_counter() - started)

        threading.Thread(target=poll, daemon=True).start()
    try:
        p = beam.Pipeline(options=pipeline_options(beam_args))
        build_pipeline(p, config, shards, run_id, model_name, model_version, progress_dir)
        result = p.run()
        result.wait_until_finish()
        seconds = time.perf_counter() - started
        if progress_dir is not None and on_progress is not None:
            on_progress(read_progress(progress_dir), seconds)
    finally:
        stop.set()
        if progress_dir is not None:
            shutil.rmtree(progress_dir, ignore_errors=True)

    counters = _counters(result)
    failed = {k.removeprefix("failed_"): v for k, v in counters.items() if k.startswith("failed_")}
    summary = RunSummary(
        run_id=run_id,
        read=counters.get("read", 0),
        captioned=counters.get("captioned", 0),
        failed=dict(sorted(failed.items())),
        seconds=seconds,
        stage_seconds={
            s: counters.get(f"{s}_ms", 0) / 1000 for s in ("read", "decode", "inference")
        },
        model=model_name,
        model_version=model_version,
    )
    write_run_json(config, summary, beam_args, len(shards))
    return summary


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
        "model": {"name": summary.model, "version": summary.model_version},
        "counts": {
            "read": summary.read,
            "captioned": summary.captioned,
            "failed": summary.failed_total,
            "failed_by_reason": summary.failed,
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
