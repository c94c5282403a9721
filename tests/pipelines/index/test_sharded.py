"""The parallel index build (pipelines.index.sharded) against the single-worker one, on the local
runner with the tiny embedder: same ids, same search results, several partitions and shards,
each caption text embedded once, and clear errors that leave no half-written output."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter

from indexing.build import EMBEDDINGS_FILE, MAPPING_FILE
from indexing.embed import TextEmbedder, resolve_embedder
from indexing.partitions import PartitionWriteError
from indexing.search import open_index
from indexing.sharded import STAGING_DIR
from indexing.shards import SHARDS_DIR
from pipelines.index import pipeline as index_pipeline
from pipelines.index.pipeline import (
    METRICS_NAMESPACE,
    IndexConfig,
    build_index_pipeline,
    run_index,
)
from pipelines.options import pipeline_options
from tests.pipelines.index.test_pipeline import write_caption_run

ROWS_PER_PARTITION = 50


def distinct_captions(n: int) -> list[str]:
    words = itertools.product(
        ["one", "two", "three", "four"],
        ["small", "large", "tiny", "huge"],
        ["red", "blue", "green", "yellow", "purple", "orange"],
        ["circle", "square", "triangle", "star", "hexagon"],
    )
    captions = [" ".join(w) for w in words]
    assert len(captions) >= n
    return captions[:n]


@pytest.fixture(scope="module")
def tiny(tiny_embedder_dir: Path) -> TextEmbedder:
    return TextEmbedder(resolve_embedder(str(tiny_embedder_dir)), device="cpu")


def counters(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    return {c.key.metric.name: c.committed for c in query["counters"]}


def run(config: IndexConfig, beam_args: list[str] | None = None) -> dict[str, int]:
    pipeline = beam.Pipeline(options=pipeline_options(beam_args))
    build_index_pipeline(pipeline, config)
    result = pipeline.run()
    result.wait_until_finish()
    return counters(result)


def build_both(tmp_path: Path, captions_dir: Path, embedder: Path, **ann: object) -> list[Path]:
    outs = []
    for parallel in (False, True):
        out = tmp_path / ("parallel" if parallel else "single")
        config = IndexConfig(
            str(captions_dir), str(out), str(embedder), batch_size=32, parallel=parallel,
            rows_per_partition=ROWS_PER_PARTITION, **ann,  # type: ignore[arg-type]
        )  # fmt: skip
        run_index(config, [])
        outs.append(out)
    return outs


@pytest.mark.parametrize("index_type", ["flat", "ivf-flat"])
def test_parallel_build_equals_the_single_worker_build(
    tmp_path: Path, tiny_embedder_dir: Path, tiny: TextEmbedder, index_type: str
) -> None:
    captions = distinct_captions(320)
    write_caption_run(tmp_path / "run", captions, files=4)
    single, parallel = build_both(
        tmp_path, tmp_path / "run", tiny_embedder_dir, index_type=index_type, target_recall=0.9
    )
    first, second = (pq.read_table(p / MAPPING_FILE) for p in (single, parallel))
    assert first.equals(second)  # same ids, and each id the same key, caption and source
    assert first.column("id").to_pylist() == list(range(320))
    vectors = [
        np.stack(pq.read_table(p / EMBEDDINGS_FILE).column("embedding").to_numpy(False))
        for p in (single, parallel)
    ]
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)
    a, b = open_index(single, embedder=tiny), open_index(parallel, embedder=tiny)
    timing = {"created_at": a.manifest.created_at, "query_ms": None}
    assert replace(a.manifest, **timing) == replace(b.manifest, **timing)  # type: ignore[arg-type]
    assert a.manifest.index_type == index_type
    queries = tiny.embed(["a red circle", "two huge stars", "green", "four tiny hexagons"])
    for hits_a, hits_b in zip(a.search_vectors(queries), b.search_vectors(queries), strict=True):
        assert [h.key for h in hits_a] == [h.key for h in hits_b]
        np.testing.assert_allclose([h.score for h in hits_a], [h.score for h in hits_b], atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parallel", "run", "single"]


@pytest.mark.parametrize(
    "beam_args", [[], ["--direct_num_workers=2", "--direct_running_mode=multi_threading"]]
)
def test_parallel_job_writes_several_partitions_and_shards(
    tmp_path: Path, tiny_embedder_dir: Path, beam_args: list[str]
) -> None:
    write_caption_run(tmp_path / "run", distinct_captions(300), files=3)
    config = IndexConfig(
        str(tmp_path / "run"), str(tmp_path / "index"), str(tiny_embedder_dir), parallel=True,
        rows_per_partition=ROWS_PER_PARTITION,
    )  # fmt: skip
    found = run(config, beam_args)
    # 300 rows in ranges of ~50 cut at sampled keys: several ranges, one shard each.
    assert 3 <= found["partitions_written"] <= 8
    assert found["shards_written"] == found["partitions_written"]
    assert found["captions_indexed"] == 300
    assert not (tmp_path / "index" / STAGING_DIR).exists()


def test_each_distinct_caption_text_is_embedded_once(
    tmp_path: Path, tiny_embedder_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = distinct_captions(40)
    captions = [texts[i % 40] for i in range(200)]  # every text on five rows
    write_caption_run(tmp_path / "run", captions, files=4)
    seen: list[str] = []
    encode = TextEmbedder.encode

    def recording(self: TextEmbedder, batch: list[str], batch_size: int) -> np.ndarray:
        seen.extend(batch)
        return encode(self, batch, batch_size)

    monkeypatch.setattr(TextEmbedder, "encode", recording)
    config = IndexConfig(
        str(tmp_path / "run"), str(tmp_path / "index"), str(tiny_embedder_dir), batch_size=16,
        parallel=True, rows_per_partition=ROWS_PER_PARTITION,
    )  # fmt: skip
    found = run(config)
    assert sorted(seen) == sorted(texts)  # each text once, across batches and files
    assert found["distinct_caption_texts"] == 40
    assert found["repeated_captions_embedded_once"] == 160
    mapping = pq.read_table(tmp_path / "index" / MAPPING_FILE)
    assert mapping.num_rows == 200 and sorted(set(mapping.column("caption").to_pylist())) == sorted(
        texts
    )


def test_empty_caption_set_writes_an_empty_index(tmp_path: Path, tiny_embedder_dir: Path) -> None:
    write_caption_run(tmp_path / "run", [None, "  ", None, ""], files=2)
    out = tmp_path / "index"
    config = IndexConfig(str(tmp_path / "run"), str(out), str(tiny_embedder_dir), parallel=True)
    summary = run_index(config, [])
    assert summary.count == 0 and summary.dimension > 0
    assert open_index(out).manifest.count == 0
    assert pq.read_table(out / MAPPING_FILE).num_rows == 0


def test_a_partition_that_fails_to_write_leaves_no_output(
    tmp_path: Path, tiny_embedder_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_caption_run(tmp_path / "run", distinct_captions(120), files=2)
    work = tmp_path / ".index.tmp-test"
    (work / STAGING_DIR).mkdir(parents=True)
    (work / STAGING_DIR / "mapping").write_text("a file where the partitions folder should be")
    monkeypatch.setattr(index_pipeline, "work_dir_for", lambda out: work)
    out = tmp_path / "index"
    config = IndexConfig(
        str(tmp_path / "run"), str(out), str(tiny_embedder_dir), parallel=True,
        rows_per_partition=ROWS_PER_PARTITION,
    )  # fmt: skip
    with pytest.raises(PartitionWriteError, match=r"could not write .*part-\d{5}\.parquet"):
        run_index(config, [])
    assert not out.exists() and not work.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_shard_that_fails_to_write_keeps_the_previous_index(
    tmp_path: Path, tiny_embedder_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_caption_run(tmp_path / "run", distinct_captions(60), files=2)
    out = tmp_path / "index"
    config = IndexConfig(str(tmp_path / "run"), str(out), str(tiny_embedder_dir), parallel=True)
    run_index(config, [])
    before = pq.read_table(out / MAPPING_FILE)
    work = tmp_path / ".index.tmp-test"
    (work / STAGING_DIR).mkdir(parents=True)
    (work / STAGING_DIR / SHARDS_DIR).write_text("a file where the shards folder should be")
    monkeypatch.setattr(index_pipeline, "work_dir_for", lambda out: work)
    with pytest.raises(PartitionWriteError, match=r"could not write shard .*shard-\d{5}\.faiss"):
        run_index(replace(config, overwrite=True), [])
    assert pq.read_table(out / MAPPING_FILE).equals(before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index", "run"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rows_per_partition": 0}, "rows_per_partition must be a positive int"),
        ({"rows_per_partition": True}, "rows_per_partition must be a positive int"),
        ({"parallel": "yes"}, "parallel must be True, False or None"),
    ],
)
def test_parallel_config_validation(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    write_caption_run(tmp_path / "run")
    with pytest.raises(ValueError, match=message):
        IndexConfig(str(tmp_path / "run"), "idx", **overrides)  # type: ignore[arg-type]
