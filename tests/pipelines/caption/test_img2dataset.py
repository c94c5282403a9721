"""img2dataset output end to end: caption it, index it, search it; every sample img2dataset
attempted is counted once, and a search hit links back to where its image came from.

The input folders are laid out as tests/captioning/archives/img2dataset_layout.py documents
(what img2dataset 1.47's writer.py, downloader.py and logger.py write).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from captioning.api import CaptionerOptions
from captioning.records import CAPTION_SCHEMA, FAILURE_SCHEMA
from indexing.assemble import INDEX_COLUMNS
from indexing.build import MAPPING_FILE
from indexing.search import open_index
from pipelines.caption.pipeline import CaptionConfig, RunSummary, run_caption
from pipelines.index.pipeline import IndexConfig, check_caption_columns, run_index
from tests.captioning.archives.img2dataset_layout import Written, write_img2dataset
from tests.indexing._helpers import build_tiny_sentence_transformer

pytestmark = pytest.mark.slow

Row = dict[str, Any]


@dataclass(frozen=True)
class Run:
    written: Written
    out: Path
    summary: RunSummary
    captions: list[Row]
    failures: list[Row]


def caption(written: Written, out: Path, model: Path) -> Run:
    config = CaptionConfig(
        input=str(written.root),
        out=str(out),
        model=str(model),
        captioner=CaptionerOptions(device="cpu", beam_size=1),
        batch_size=3,
    )
    summary = run_caption(config, [])
    rows = {t: pq.read_table(out / t).to_pylist() for t in ("captions", "failures")}
    return Run(written, out, summary, rows["captions"], rows["failures"])


@pytest.fixture(scope="module", params=["webdataset", "parquet"])
def run(
    request: pytest.FixtureRequest,
    tiny_caption_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Run:
    root = tmp_path_factory.mktemp(f"img2dataset-{request.param}")
    return caption(
        write_img2dataset(root / "input", request.param), root / "out", tiny_caption_model
    )


@pytest.fixture(scope="module")
def tiny_st(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sentence_transformer(tmp_path_factory.mktemp("models") / "tiny-st")


def test_counts_balance_against_img2datasets_own_stats(run: Run) -> None:
    stats = run.written.stats()
    summary = run.summary

    assert summary.read == stats["count"] == 7
    assert summary.captioned == stats["successes"] == len(run.captions) == 4
    assert summary.failed == {
        "failed_to_download": stats["failed_to_download"],
        "failed_to_resize": stats["failed_to_resize"],
    }  # and no missing_column for a sidecar read as a shard
    assert summary.balanced
    assert summary.failed_by_stage == {"source": 3, "read": 0, "decode": 0, "caption": 0}
    assert summary.failure_rate == 0.0  # the archive never had them: not this job's failures
    counts = json.loads((run.out / "run.json").read_text())["counts"]
    assert (counts["read"], counts["captioned"], counts["balanced"]) == (7, 4, True)
    assert Counter(r["key"] for r in run.captions + run.failures) == Counter(
        list(run.written.metas)
    )


def test_caption_rows_carry_url_alt_text_and_metadata(run: Run) -> None:
    for path in (run.out / "captions").iterdir():
        assert pq.read_schema(path).remove_metadata().equals(CAPTION_SCHEMA)
    for row in run.captions:
        meta = run.written.metas[row["key"]]
        assert (row["url"], row["alt_text"]) == (meta["url"], meta["caption"].strip())
        rest = json.loads(row["metadata"])
        assert (rest["original_width"], rest["original_height"]) == (480, 320)
        assert (rest["sha256"], rest["similarity"]) == (meta["sha256"], meta["similarity"])
        assert (row["width"], row["height"]) == (meta["width"], meta["height"])


def test_img2datasets_failed_rows_are_failure_rows_with_its_reason(run: Run) -> None:
    for path in (run.out / "failures").iterdir():
        assert pq.read_schema(path).remove_metadata().equals(FAILURE_SCHEMA)
    assert len(run.failures) == 3
    for row in run.failures:
        meta = run.written.metas[row["key"]]
        assert (row["stage"], row["error_type"], row["message"]) == (
            "source",
            meta["status"],
            meta["error_message"],
        )
        assert (row["url"], row["alt_text"]) == (meta["url"], meta["caption"])
        assert json.loads(row["metadata"])["status"] == meta["status"]


def test_index_and_search_link_back_to_the_source(run: Run, tiny_st: Path, tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    summary = run_index(IndexConfig(str(run.out), str(index_dir), embedder=str(tiny_st)))

    mapping = pq.read_table(index_dir / MAPPING_FILE).to_pylist()
    assert summary.count == len(mapping) == 4
    for row in mapping:
        meta = run.written.metas[row["key"]]
        assert (row["url"], row["alt_text"]) == (meta["url"], meta["caption"].strip())
        assert json.loads(row["metadata"])["original_width"] == 480
    hit = open_index(index_dir).search(mapping[0]["caption"], k=1)[0]
    assert hit.url == run.written.metas[hit.key]["url"]

    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli.main", "search", str(index_dir), "a boat", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert proc.returncode == 0, proc.stderr
    hits = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(hits) == 4
    assert {h["key"]: h["url"] for h in hits} == {
        key: run.written.metas[key]["url"] for key in run.written.images
    }


def test_a_caption_run_from_before_the_source_columns_still_indexes(
    run: Run, tiny_st: Path, tmp_path: Path
) -> None:
    old = tmp_path / "old-run"
    (old / "captions").mkdir(parents=True)
    for path in sorted((run.out / "captions").iterdir()):
        table = pq.read_table(path).drop_columns(["url", "alt_text", "metadata"])
        pq.write_table(table, old / "captions" / path.name)
    columns = check_caption_columns([str(p) for p in (old / "captions").iterdir()])
    assert columns[: len(INDEX_COLUMNS)] == INDEX_COLUMNS
    assert not {"url", "alt_text", "metadata"} & set(columns)

    summary = run_index(IndexConfig(str(old), str(tmp_path / "index"), embedder=str(tiny_st)))

    mapping = pq.read_table(tmp_path / "index" / MAPPING_FILE)
    assert summary.count == mapping.num_rows == 4
    assert sorted(mapping.column("key").to_pylist()) == sorted(run.written.images)
    for name in ("url", "alt_text", "metadata"):
        assert pa.types.is_string(mapping.schema.field(name).type)
        assert mapping.column(name).null_count == 4
