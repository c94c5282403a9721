"""End-to-end caption runs: bad input is accounted for, formats agree, reruns never duplicate.

Every run uses the tiny random model (captions are nonsense but deterministic) on the code's
default local runner (FnApiRunner); the bad-input world is captioned once per module and each case
is checked on its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from captioning.api import CaptionerOptions
from captioning.archives.synthetic.writer import ArchiveConfig, write_archive
from captioning.records import CAPTION_SCHEMA, FAILURE_SCHEMA, STAGES
from pipelines.caption.pipeline import CaptionConfig, RunSummary, run_caption
from tests.pipelines.bad_inputs import EXPECTED, NON_ASCII_NAME, Expected

pytestmark = pytest.mark.slow

BEAM_ARGS: list[str] = []  # the runner the code defaults to (FnApiRunner)
TWO_PROCESSES = [*BEAM_ARGS, "--direct_num_workers=2", "--direct_running_mode=multi_processing"]
FAST = CaptionerOptions(device="cpu", beam_size=1)
CLI_TIMEOUT_S = 240

Row = dict[str, Any]
Location = tuple[str, str]  # (file name the source URI ends with, member)


def caption_config(input_: str | Path, out: Path, model: Path, **overrides: Any) -> CaptionConfig:
    return CaptionConfig(
        input=str(input_), out=str(out), model=str(model), captioner=FAST, **overrides
    )


def read_rows(out: Path, table: str) -> list[Row]:
    return pq.read_table(out / table).to_pylist()


def location(row: Row) -> Location:
    return row["source"].rsplit("/", 1)[-1], row["member"]


def run_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # Rich's width when stderr is not a terminal, whatever the caller's: lines must not wrap.
    env = {**os.environ, "COLUMNS": "80"}
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli.main", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


def cli_caption(
    input_: str | Path, out: Path, model: Path, *extra: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "caption",
        input_,
        "--out",
        out,
        "--model",
        model,
        "--beam-size",
        "1",
        "--device",
        "cpu",
        *extra,
        "--",
        *BEAM_ARGS,
        cwd=cwd,
    )


def last_line(text: str) -> str:
    lines = text.splitlines()
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------- the bad-input world


@dataclass(frozen=True)
class BadRun:
    summary: RunSummary
    out: Path
    captions: list[Row]
    failures: list[Row]
    stored: dict[Location, bytes]

    def hits(self, at: Location) -> list[tuple[str, Row]]:
        return [
            (table, row)
            for table, rows in (("captions", self.captions), ("failures", self.failures))
            for row in rows
            if location(row) == at
        ]


@pytest.fixture(scope="module")
def bad_run(
    tiny_caption_model: Path,
    bad_input_dir: tuple[Path, dict],
    tmp_path_factory: pytest.TempPathFactory,
) -> BadRun:
    root, stored = bad_input_dir
    out = tmp_path_factory.mktemp("bad-run") / "out"
    summary = run_caption(caption_config(root, out, tiny_caption_model, batch_size=4), BEAM_ARGS)
    return BadRun(summary, out, read_rows(out, "captions"), read_rows(out, "failures"), stored)


@pytest.mark.parametrize("expected", EXPECTED, ids=lambda e: e.case)
def test_each_bad_input_is_captioned_or_a_failure_with_a_reason(
    bad_run: BadRun, expected: Expected
) -> None:
    hits = bad_run.hits(expected.at)
    assert len(hits) == 1, f"{expected.case}: {expected.at} in {len(hits)} rows: {hits}"
    table, row = hits[0]
    assert table == expected.table, f"{expected.case}: {row}"
    assert row["key"] == expected.key
    assert row["run_id"] == bad_run.summary.run_id
    if table == "failures":
        assert (row["stage"], row["error_type"]) == (expected.stage, expected.error_type), row
        assert row["message"].strip() and "\n" not in row["message"], row
        return
    assert (row["width"], row["height"]) == expected.size, row
    assert row["format"] == expected.format
    assert row["sha256"] == hashlib.sha256(bad_run.stored[expected.at]).hexdigest()
    assert isinstance(row["caption"], str) and row["candidates"][0] == row["caption"]
    assert (row["model"], row["model_version"]) == ("tiny", "t1")


def test_bad_input_run_accounts_for_every_image_exactly_once(bad_run: BadRun) -> None:
    summary, captions, failures = bad_run.summary, bad_run.captions, bad_run.failures
    assert summary.balanced
    assert summary.read == summary.captioned + summary.failed_total == len(EXPECTED)
    assert (summary.captioned, summary.failed_total) == (len(captions), len(failures))
    assert summary.failed == dict(Counter(row["error_type"] for row in failures))

    seen = Counter(location(row) for row in captions + failures)
    assert {at: n for at, n in seen.items() if n != 1} == {}
    assert set(seen) == {e.at for e in EXPECTED}
    assert {row["key"] for row in captions} >= {NON_ASCII_NAME}

    run = json.loads((bad_run.out / "run.json").read_text())
    assert run["run_id"] == summary.run_id
    assert run["shards"] == len({e.source for e in EXPECTED})
    assert run["counts"] == {
        "read": len(captions) + len(failures),
        "captioned": len(captions),
        "failed": len(failures),
        "failed_by_reason": dict(sorted(Counter(r["error_type"] for r in failures).items())),
        "failed_by_stage": {s: sum(r["stage"] == s for r in failures) for s in STAGES},
        "balanced": True,
    }
    assert summary.failed_by_stage == run["counts"]["failed_by_stage"]
    assert run["failure_limit"] == {
        "max_failure_rate": 0.5,
        "failure_rate": round(len(failures) / len(EXPECTED), 6),
        "exceeded": False,
    }


@pytest.mark.parametrize(
    "table, schema", [("captions", CAPTION_SCHEMA), ("failures", FAILURE_SCHEMA)]
)
def test_tables_have_exactly_the_declared_columns(
    bad_run: BadRun, table: str, schema: pa.Schema
) -> None:
    files = sorted((bad_run.out / table).iterdir())
    assert files and all(f.suffix == ".parquet" for f in files), files  # no temporary leftovers
    for f in files:
        assert pq.read_table(f).schema.remove_metadata().equals(schema), f
    assert sorted(p.name for p in bad_run.out.iterdir()) == ["captions", "failures", "run.json"]


def test_cli_over_bad_inputs_exits_0_and_prints_a_balanced_summary(
    tiny_caption_model: Path, bad_input_dir: tuple[Path, dict], bad_run: BadRun, tmp_path: Path
) -> None:
    root, _ = bad_input_dir
    out = tmp_path / "out"

    proc = cli_caption(root, out, tiny_caption_model, "--batch-size", "3", cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    captioned = sum(e.table == "captions" for e in EXPECTED)
    assert last_line(proc.stderr) == (
        f"read {len(EXPECTED)} = captioned {captioned} + failed {len(EXPECTED) - captioned}: "
        f"every image is accounted for. Output in {out}"
    )

    def placement(captions: list[Row], failures: list[Row]) -> dict[Location, tuple]:
        return {
            **{location(r): ("captions", r["sha256"], r["caption"]) for r in captions},
            **{location(r): ("failures", r["stage"], r["error_type"]) for r in failures},
        }

    # Same tables as the in-process run with batches of 4: batching changes no caption.
    assert placement(read_rows(out, "captions"), read_rows(out, "failures")) == placement(
        bad_run.captions, bad_run.failures
    )
    assert json.loads((out / "run.json").read_text())["counts"]["balanced"] is True
    assert not (out / ".progress").exists()


@pytest.mark.parametrize(
    "kind, message", [("missing", "input path does not exist:"), ("no match", "no input matched")]
)
def test_unusable_input_fails_at_once_with_exit_2(
    tiny_caption_model: Path, tmp_path: Path, kind: str, message: str
) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("not an image\n")
    input_ = tmp_path / ("nothing here" if kind == "missing" else "images/*.jpg")
    out = tmp_path / "out"

    proc = cli_caption(input_, out, tiny_caption_model, cwd=tmp_path)

    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"error: {message} {str(input_)!r}"]
    assert not out.exists()


# --------------------------------------------------------------------------- formats and sources


def test_folder_tar_and_parquet_give_the_same_captions(
    tiny_caption_model: Path, tmp_path: Path
) -> None:
    captions_by_sha: dict[str, dict[str, str]] = {}
    for fmt, shards, batch_size in (("folder", 1, 1), ("tar", 3, 7), ("parquet", 2, 24)):
        archive = tmp_path / fmt
        write_archive(
            str(archive), ArchiveConfig(images=24, shards=shards, seed=3, format=fmt, workers=1)
        )
        out = tmp_path / f"out-{fmt}"
        summary = run_caption(
            caption_config(archive, out, tiny_caption_model, batch_size=batch_size), BEAM_ARGS
        )
        assert (summary.read, summary.captioned, summary.failed) == (24, 24, {}), fmt
        rows = read_rows(out, "captions")
        captions_by_sha[fmt] = {row["sha256"]: row["caption"] for row in rows}
        assert len(rows) == len(captions_by_sha[fmt]) == 24, fmt  # 24 distinct images, once each

    assert captions_by_sha["tar"] == captions_by_sha["folder"]
    assert captions_by_sha["parquet"] == captions_by_sha["folder"]


def test_memory_filesystem_input_is_captioned(tiny_caption_model: Path, tmp_path: Path) -> None:
    (shard,) = write_archive(
        str(tmp_path / "tar"), ArchiveConfig(images=5, format="tar", workers=1)
    )
    memory = fsspec.filesystem("memory")
    root = f"/caption-test-{uuid.uuid4().hex}"
    memory.pipe(f"{root}/shard-00000.tar", Path(shard).read_bytes())
    try:
        summary = run_caption(
            caption_config(
                f"memory://{root}/*.tar", tmp_path / "out", tiny_caption_model, batch_size=2
            ),
            BEAM_ARGS,
        )
    finally:
        memory.rm(root, recursive=True)

    assert (summary.read, summary.captioned, summary.failed) == (5, 5, {})
    rows = read_rows(tmp_path / "out", "captions")
    assert sorted(row["key"] for row in rows) == [f"{i:09d}" for i in range(5)]
    assert {row["source"] for row in rows} == {f"memory://{root}/shard-00000.tar"}


# --------------------------------------------------------------------------- reruns and runners


def test_rerun_refuses_a_non_empty_out_unless_overwrite(
    tiny_caption_model: Path, tmp_path: Path
) -> None:
    archive, out = tmp_path / "tar", tmp_path / "out"
    write_archive(str(archive), ArchiveConfig(images=6, shards=2, format="tar", workers=1))
    config = caption_config(archive, out, tiny_caption_model, batch_size=4)
    first = run_caption(config, BEAM_ARGS)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    with pytest.raises(FileExistsError, match="--overwrite"):
        run_caption(config, BEAM_ARGS)
    proc = cli_caption(archive, out, tiny_caption_model, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: {out} is not empty: pass --overwrite to replace "
        "its captions, or pick another --out"
    ]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    # A part left by an older run with other shard counts must go too, not add its rows.
    (stale,) = (out / "captions").glob("*.parquet")
    stale.rename(out / "captions" / "part-00007-of-00009.parquet")
    second = run_caption(
        caption_config(archive, out, tiny_caption_model, batch_size=4, overwrite=True), BEAM_ARGS
    )

    rows = read_rows(out, "captions")
    assert sorted(row["key"] for row in rows) == [f"{i:09d}" for i in range(6)]
    assert {row["run_id"] for row in rows} == {second.run_id} != {first.run_id}
    assert read_rows(out, "failures") == []
    run = json.loads((out / "run.json").read_text())
    assert (run["run_id"], run["counts"]["read"], run["counts"]["captioned"]) == (
        second.run_id,
        6,
        6,
    )


def test_two_process_direct_runner_writes_the_same_rows_as_one(
    tiny_caption_model: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "input"
    write_archive(str(archive), ArchiveConfig(images=12, shards=4, format="tar", workers=1))
    (archive / "broken.tar").write_bytes(b"not a tar archive " * 40)

    def rows(out: Path, beam_args: list[str]) -> tuple[set, set, RunSummary]:
        summary = run_caption(
            caption_config(archive, out, tiny_caption_model, batch_size=4), beam_args
        )
        captions = {(r["key"], r["sha256"], r["caption"]) for r in read_rows(out, "captions")}
        failures = {(r["key"], r["stage"], r["error_type"]) for r in read_rows(out, "failures")}
        return captions, failures, summary

    one_captions, one_failures, one = rows(tmp_path / "one", BEAM_ARGS)
    two_captions, two_failures, two = rows(tmp_path / "two", TWO_PROCESSES)

    assert len(one_captions) == 12 and one_failures == {("<shard>", "read", "corrupt_tar")}
    assert two_captions == one_captions
    assert two_failures == one_failures
    assert (two.read, two.captioned, two.failed, two.balanced) == (13, 12, {"corrupt_tar": 1}, True)
    assert (one.read, one.captioned, one.failed, one.balanced) == (13, 12, {"corrupt_tar": 1}, True)
