"""The DoFns as thin adapters, run by Beam's local runner: exact stage times, failures counted."""

from __future__ import annotations

import threading
from pathlib import Path

import apache_beam as beam
import pytest

from captioning.api import CaptionerOptions
from captioning.archives.listing import ReadConfig, list_shards
from captioning.archives.synthetic.writer import ArchiveConfig, write_archive
from captioning.images.decode import DecodeConfig
from captioning.records import FailureRow
from pipelines.caption import transforms
from pipelines.caption.pipeline import job_counters
from pipelines.caption.summary import stage_seconds
from pipelines.caption.transforms import FAILURES, CountFailures, DecodeImages, ReadShard
from pipelines.options import pipeline_options

STEP_NS = 250_000  # 0.25 ms an element: less than the whole millisecond a truncation keeps


class SteppingClock:
    """A perf_counter_ns that moves STEP_NS a call, per thread: each timed element takes exactly
    STEP_NS, whichever thread (the DoFn's or the decode pool's) times it."""

    def __init__(self) -> None:
        self._local = threading.local()

    def __call__(self) -> int:
        self._local.now = getattr(self._local, "now", 0) + STEP_NS
        return self._local.now


def run(build) -> dict[str, int]:
    p = beam.Pipeline(options=pipeline_options([]))
    build(p)
    result = p.run()
    result.wait_until_finish()
    return job_counters(result)


def test_many_sub_millisecond_elements_sum_to_their_exact_time(
    tiny_caption_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = 200
    write_archive(str(tmp_path), ArchiveConfig(images=images, shards=1, format="tar", workers=1))
    monkeypatch.setattr(transforms, "perf_counter_ns", SteppingClock())
    options = CaptionerOptions(device="cpu")

    def build(p: beam.Pipeline) -> None:
        read = (
            p
            | beam.Create(list_shards(str(tmp_path)))
            | "ReadShards"
            >> beam.ParDo(ReadShard(ReadConfig(), "run")).with_outputs(FAILURES, main="entries")
        )
        _ = read.entries | "DecodeImages" >> beam.ParDo(
            DecodeImages(DecodeConfig(draft_size=None), "run", str(tiny_caption_model), options)
        ).with_outputs(FAILURES, main="images")

    counters = run(build)

    assert counters["read"] == images
    assert counters["read_ns"] == (images + 1) * STEP_NS  # every entry, then the shard's end
    assert counters["decode_ns"] == images * STEP_NS
    assert stage_seconds(counters) == {"read": 0.05025, "decode": 0.05, "inference": 0.0}


def test_every_failure_is_counted_by_reason_and_by_stage() -> None:
    rows = [
        FailureRow("a", "s", "a", "read", "corrupt_tar", "bad block", "r"),
        FailureRow("b", "s", "b", "decode", "truncated", "cut short", "r"),
        FailureRow("c", "s", "c", "decode", "empty", "0 bytes", "r"),
        FailureRow("d", "s", "d", "caption", "RuntimeError", "CUDA out of memory", "r"),
    ]

    def build(p: beam.Pipeline) -> None:
        _ = p | beam.Create(rows) | "CountFailures" >> beam.ParDo(CountFailures(None))

    counters = run(build)

    assert {k: v for k, v in counters.items() if "failed" in k} == {
        "failed_corrupt_tar": 1,
        "failed_truncated": 1,
        "failed_empty": 1,
        "failed_RuntimeError": 1,
        "read_failed": 1,
        "decode_failed": 2,
        "caption_failed": 1,
    }
