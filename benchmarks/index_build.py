"""Index job: embedding each distinct caption text once against embedding every row, and the
parallel build against the single-worker one, on a caption run of the synthetic world.

    python benchmarks/index_build.py [--captions 20000] [--files 8] [--workdir /tmp/index_build]

Caption run: --captions rows whose captions are the canonical captions of seeded world scenes
(captioning.archives.synthetic.world; about 55% of them repeat an earlier one), in --files
Parquet files. Embedder: the packaged all-MiniLM-L6-v2 (bf16 on a CPU with native bf16), local
in-process runner (FnApiRunner), batch size 256.

Rows, each timed on its own pipeline run:

- embed every row (baseline): ReadCaptions -> ToCaptionText -> RunInference over the rows
  (SentenceEmbeddingHandler; TextEmbedder.embed still embeds a repeat once within a batch).
- embed distinct texts: the same with EmbedDistinctTexts (Distinct, RunInference, CoGroupByKey).
- index job, single worker / parallel: the whole `run_index` (embedding included) with
  IndexConfig.parallel False / True (--rows-per-partition rows per range).

Each run is repeated --repeats times, in rotating order; the table gives the best and every time,
with the machine, versions, load average and each row's speed relative to the baseline.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import apache_beam as beam  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from apache_beam.io.parquetio import ReadFromParquet  # noqa: E402
from apache_beam.ml.inference.base import RunInference  # noqa: E402
from machine import cpu_model  # noqa: E402

from captioning.archives.synthetic.world import describe, sample_scene  # noqa: E402
from captioning.records import CAPTION_SCHEMA  # noqa: E402
from indexing.assemble import INDEX_COLUMNS  # noqa: E402
from indexing.embed import DEFAULT_EMBEDDER, resolve_embedder  # noqa: E402
from pipelines.index.dedupe import EmbedDistinctTexts  # noqa: E402
from pipelines.index.handler import SentenceEmbeddingHandler, TextEmbeddingHandler  # noqa: E402
from pipelines.index.pipeline import IndexConfig, ToCaptionText, run_index  # noqa: E402
from pipelines.options import pipeline_options  # noqa: E402

BATCH = 256


def write_run(out: Path, captions: int, files: int, seed: int) -> int:
    """Write a caption run of world captions; returns how many distinct texts it holds."""
    rng = random.Random(seed)
    texts = [describe(sample_scene(rng), rng)[0] for _ in range(captions)]
    rows = [
        {
            "key": f"img{i:07d}",
            "source": f"file:///bench/shard-{i % 100:05d}.tar",
            "member": f"{i:07d}.png",
            "sha256": "0" * 64,
            "width": 128,
            "height": 128,
            "format": "PNG",
            "caption": text,
            "candidates": [text],
            "model": "bench",
            "model_version": "1",
            "run_id": "bench",
            "captioned_at": "2026-01-01T00:00:00+00:00",
        }
        for i, text in enumerate(texts)
    ]
    (out / "captions").mkdir(parents=True, exist_ok=True)
    for part in range(files):
        table = pa.Table.from_pylist(rows[part::files], schema=CAPTION_SCHEMA)
        pq.write_table(table, out / "captions" / f"part-{part:05d}.parquet")
    return len(set(texts))


def time_embedding(run_dir: Path, distinct: bool) -> float:
    """Seconds of a pipeline that reads the run and embeds it (per row or per distinct text)."""
    embedder = resolve_embedder(DEFAULT_EMBEDDER)
    pipeline = beam.Pipeline(options=pipeline_options([]))
    captions = (
        pipeline
        | "ReadCaptions"
        >> ReadFromParquet(str(run_dir / "captions" / "*.parquet"), columns=list(INDEX_COLUMNS))
        | "ToCaptionText" >> beam.ParDo(ToCaptionText())
    )
    if distinct:
        handler = TextEmbeddingHandler(embedder.name, embedder.sha256, BATCH)
        embedded = captions | "EmbedCaptions" >> EmbedDistinctTexts(handler)
    else:
        rows = SentenceEmbeddingHandler(embedder.name, embedder.sha256, BATCH)
        embedded = captions | "EmbedCaptions" >> RunInference(rows)
    _ = embedded | "Count" >> beam.combiners.Count.Globally()
    start = time.perf_counter()
    pipeline.run().wait_until_finish()
    return time.perf_counter() - start


def time_index(run_dir: Path, out: Path, parallel: bool, rows_per_partition: int) -> float:
    config = IndexConfig(
        str(run_dir), str(out), DEFAULT_EMBEDDER, batch_size=BATCH, overwrite=True,
        parallel=parallel, rows_per_partition=rows_per_partition,
    )  # fmt: skip
    start = time.perf_counter()
    run_index(config, [])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--captions", type=int, default=20_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--rows-per-partition", type=int, default=5_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/index_build"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    run_dir = args.workdir / "run"
    distinct = write_run(run_dir, args.captions, args.files, args.seed)
    print(f"{args.captions} rows, {distinct} distinct texts, {args.files} files", flush=True)

    runs = {
        "embed every row (baseline)": lambda: time_embedding(run_dir, distinct=False),
        "embed distinct texts": lambda: time_embedding(run_dir, distinct=True),
        "index job, single worker": lambda: time_index(
            run_dir, args.workdir / "single", False, args.rows_per_partition
        ),
        "index job, parallel": lambda: time_index(
            run_dir, args.workdir / "parallel", True, args.rows_per_partition
        ),
    }
    times: dict[str, list[float]] = {label: [] for label in runs}
    labels = list(runs)
    for repeat in range(args.repeats):
        # Each round starts one further down the list, so no run always follows the same one.
        for label in labels[repeat % len(labels) :] + labels[: repeat % len(labels)]:
            times[label].append(runs[label]())
            print(f"round {repeat + 1}, {label}: {times[label][-1]:.1f} s", flush=True)

    base = min(times[labels[0]])
    print()
    print(f"Machine: {cpu_model()}; Python {platform.python_version()}, Beam {beam.__version__}")
    print(f"Date: {datetime.date.today().isoformat()}; load average at the end {os.getloadavg()}")
    print(
        f"Caption run: {args.captions:,} rows ({distinct:,} distinct texts) in {args.files} files; "
        f"parallel build: {args.rows_per_partition:,} rows per partition; best of {args.repeats}"
    )
    print()
    print("| run | best s | all runs, s | captions/s (best) | x baseline speed |")
    print("|---|---:|---|---:|---:|")
    for label, took in times.items():
        best = min(took)
        runs_s = ", ".join(f"{t:.1f}" for t in took)
        print(
            f"| {label} | {best:.1f} | {runs_s} | {args.captions / best:,.0f} | {base / best:.2f} |"
        )


if __name__ == "__main__":
    main()
