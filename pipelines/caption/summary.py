"""A finished caption job's counters -> its RunSummary, and the verdict on its failures.

Counts come from Beam counters (committed values, which every runner reports); the most common
error's message, which no counter can carry, is read back from the failures table the job wrote.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import fsspec
import pyarrow.compute as pc
import pyarrow.parquet as pq

from captioning.records import STAGES
from pipelines.caption.handler import ModelBrokenError
from pipelines.caption.transforms import failed_at_stage, stage_ns

NS_PER_S = 1_000_000_000
TIMED_STAGES = ("read", "decode", "inference")


@dataclass(frozen=True, slots=True)
class RunSummary:
    run_id: str
    read: int
    captioned: int
    failed: dict[str, int]  # by error_type
    failed_by_stage: dict[str, int]  # read, decode, caption
    seconds: float
    stage_seconds: dict[str, float]
    model: str
    model_version: str
    max_failure_rate: float = 1.0

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    @property
    def balanced(self) -> bool:
        """Every image that was read is in exactly one table."""
        return self.read == self.captioned + self.failed_total

    @property
    def failure_rate(self) -> float:
        """Failed / read, leaving out images the archive's maker never got (stage "source"):
        those failed before this job, and big web archives miss a third of theirs."""
        upstream = self.failed_by_stage.get("source", 0)
        tried = self.read - upstream
        return (self.failed_total - upstream) / tried if tried else 0.0

    @property
    def failure_rate_exceeded(self) -> bool:
        return self.failure_rate > self.max_failure_rate


def stage_seconds(counters: dict[str, int]) -> dict[str, float]:
    """Per-stage nanosecond counters -> seconds, summed exactly before the one division."""
    return {s: counters.get(stage_ns(s), 0) / NS_PER_S for s in TIMED_STAGES}


def summarize(
    counters: dict[str, int],
    run_id: str,
    seconds: float,
    model: str,
    model_version: str,
    max_failure_rate: float,
) -> RunSummary:
    """The job's counters (name -> committed total) -> its RunSummary."""
    failed = {k.removeprefix("failed_"): v for k, v in counters.items() if k.startswith("failed_")}
    return RunSummary(
        run_id=run_id,
        read=counters.get("read", 0),
        captioned=counters.get("captioned", 0),
        failed=dict(sorted(failed.items())),
        failed_by_stage={s: counters.get(failed_at_stage(s), 0) for s in STAGES},
        seconds=seconds,
        stage_seconds=stage_seconds(counters),
        model=model,
        model_version=model_version,
        max_failure_rate=max_failure_rate,
    )


def most_common_message(out: str, error_type: str) -> str:
    """The most common message of the failure rows with this error_type in OUT/failures (of
    equally common ones, the first in sort order)."""
    fs, root = fsspec.core.url_to_fs(out)
    messages: Counter[str] = Counter()
    for path in sorted(fs.glob(f"{root}/failures/*.parquet")):
        with fs.open(path, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(columns=["error_type", "message"]):
                same = pc.equal(batch.column("error_type"), error_type)
                messages.update(pc.filter(batch.column("message"), same).to_pylist())
    return min(messages, key=lambda m: (-messages[m], m)) if messages else ""


def failure_rate_message(summary: RunSummary, out: str) -> str:
    """One line for a job over its --max-failure-rate: counts by stage, the most common error."""
    by_stage = ", ".join(f"{s} {summary.failed_by_stage.get(s, 0)}" for s in STAGES)
    text = (
        f"{summary.failed_total} of {summary.read} images failed ({summary.failure_rate:.0%}), "
        f"over --max-failure-rate {summary.max_failure_rate:g}: {by_stage}"
    )
    if summary.failed:
        error_type, n = max(summary.failed.items(), key=lambda kv: (kv[1], kv[0]))
        text += f"; most common: {error_type} x{n}: {most_common_message(out, error_type)}"
    return f"{text}. Tables and run.json are in {out}"


_BROKEN = re.compile(rf"{ModelBrokenError.__name__}: (.+)")
_STEP = re.compile(r" \[while running '[^']*'\]")


def model_broken(exc: BaseException) -> str | None:
    """The ModelBrokenError's message in a failed job's exception, or None if it holds none.

    Runners wrap a worker's exception: the in-process runner re-raises the same class with the
    step's name appended, a runner in other processes raises a RuntimeError holding the worker's
    traceback as text. Both keep "ModelBrokenError: <message>" on one line.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = f"{type(e).__name__}: {e}"
        if (match := _BROKEN.search(text)) is not None:
            return _STEP.sub("", match.group(1)).strip()
        e = e.__cause__ or e.__context__
    return None
