"""pipelines.index: finding caption files, the embedding handler, and whole index runs."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that, equal_to

from captioning.records import CAPTION_SCHEMA
from indexing.assemble import CaptionText
from indexing.build import EMBEDDINGS_FILE, MANIFEST_FILE, MAPPING_FILE
from indexing.embed import DEFAULT_EMBEDDER, TextEmbedder, resolve_embedder
from indexing.search import open_index
from pipelines.index import pipeline as index_pipeline
from pipelines.index.handler import SentenceEmbeddingHandler
from pipelines.index.pipeline import (
    METRICS_NAMESPACE,
    IndexConfig,
    build_index_pipeline,
    check_out_dir,
    find_caption_files,
    run_index,
)
from pipelines.options import pipeline_options
from tests.indexing._helpers import TINY_HIDDEN, build_tiny_sentence_transformer

RED_CIRCLE = "one large red circle"


def shape_captions() -> list[str]:
    """30 distinct captions; exactly one red circle and one green triangle caption."""
    colours = ["red", "blue", "green", "yellow", "purple", "orange"]
    shapes = ["circle", "square", "triangle", "star", "hexagon"]
    counts = ["one", "two", "three"]
    sizes = ["large", "small"]
    captions = []
    for i, (colour, shape) in enumerate((c, s) for c in colours for s in shapes):
        count = counts[i % 3]
        plural = "" if count == "one" else "s"
        captions.append(f"{count} {sizes[i % 2]} {colour} {shape}{plural}")
    captions[captions.index("one large green triangle")] = "two green triangles"
    assert RED_CIRCLE in captions and len(set(captions)) == 30
    return captions


CAPTIONS = shape_captions()


def caption_rows(captions: Sequence[str | None]) -> list[dict[str, object]]:
    return [
        {
            "key": f"img{i:04d}",
            "source": f"file:///archive/shard-{i % 3:05d}.tar",
            "member": f"{i:04d}.png",
            "sha256": "0" * 64,
            "width": 64,
            "height": 64,
            "format": "PNG",
            "caption": caption,
            "candidates": [] if caption is None else [caption],
            "model": "tiny",
            "model_version": "t1",
            "run_id": "run-1",
            "captioned_at": "2024-01-01T00:00:00+00:00",
        }
        for i, caption in enumerate(captions)
    ]


def write_caption_run(
    out: Path, captions: Sequence[str | None] = CAPTIONS, files: int = 2
) -> list[Path]:
    """Write a caption run's output folder (out/captions/part-*.parquet), rows shuffled."""
    rows = caption_rows(captions)
    random.Random(0).shuffle(rows)  # ids must not depend on file order
    (out / "captions").mkdir(parents=True, exist_ok=True)
    paths = []
    for part in range(files):
        path = out / "captions" / f"part-{part:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows[part::files], schema=CAPTION_SCHEMA), path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sentence_transformer(tmp_path_factory.mktemp("models") / "tiny-st")


@pytest.fixture(scope="module")
def tiny_embedder(tiny_model_dir: Path) -> TextEmbedder:
    return TextEmbedder(resolve_embedder(str(tiny_model_dir)), device="cpu")


@pytest.fixture
def caption_run(tmp_path: Path) -> Path:
    # Two unindexable rows ride along: they are counted and left out, not a crash.
    write_caption_run(tmp_path / "caption-run", [*CAPTIONS, None, "   "])
    return tmp_path / "caption-run"


def read_index(out: Path) -> tuple[pa.Table, np.ndarray, dict[str, object]]:
    mapping = pq.read_table(out / MAPPING_FILE)
    embeddings = pq.read_table(out / EMBEDDINGS_FILE)
    vectors = np.stack(embeddings.column("embedding").to_numpy(zero_copy_only=False))  # (N, D)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    return mapping, vectors.astype(np.float32), manifest


# ---------------------------------------------------------------- pure steps, no Beam run


def test_find_caption_files_accepts_run_folder_or_captions_folder(tmp_path: Path) -> None:
    paths = [str(p) for p in write_caption_run(tmp_path / "run")]
    from_run = find_caption_files(str(tmp_path / "run"))
    from_captions = find_caption_files(str(tmp_path / "run" / "captions"))
    assert from_run.paths == from_captions.paths == tuple(sorted(paths))


@pytest.mark.parametrize("make", ["missing", "empty", "empty-captions-subdir"])
def test_no_caption_files_is_a_clear_error(tmp_path: Path, make: str) -> None:
    captions_dir = tmp_path / "run"
    if make != "missing":
        captions_dir.mkdir()
    if make == "empty-captions-subdir":
        (captions_dir / "captions").mkdir()
    with pytest.raises(ValueError, match=r"no caption files under .*run `imgindex caption` first"):
        IndexConfig(captions_dir=str(captions_dir), out_dir=str(tmp_path / "index"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"batch_size": 0}, "batch_size must be positive"),
        ({"out_dir": "gs://bucket/index"}, "out_dir must be a local directory"),
        ({"out_dir": ""}, "out_dir is empty"),
        ({"embedder": ""}, "embedder is empty"),
        ({"index_type": "annoy"}, "index"),
        ({"target_recall": 1.5}, "recall"),
        ({"memory_budget": "4 parsecs"}, "memory"),
    ],
)
def test_config_validation(tmp_path: Path, overrides: dict[str, object], message: str) -> None:
    write_caption_run(tmp_path / "run")
    values: dict[str, object] = {"captions_dir": str(tmp_path / "run"), "out_dir": "idx"}
    values.update(overrides)
    with pytest.raises(ValueError, match=message):
        IndexConfig(**values)  # type: ignore[arg-type]


def test_check_out_dir(tmp_path: Path) -> None:
    check_out_dir(str(tmp_path / "new"), overwrite=False)
    (tmp_path / "empty").mkdir()
    check_out_dir(str(tmp_path / "empty"), overwrite=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        check_out_dir(str(tmp_path / "full"), overwrite=False)
    with pytest.raises(FileExistsError, match="not an index"):
        check_out_dir(str(tmp_path / "full"), overwrite=True)


def test_handler_matches_one_at_a_time_embedding(
    tiny_model_dir: Path, tiny_embedder: TextEmbedder
) -> None:
    handler = SentenceEmbeddingHandler(tiny_embedder.name, tiny_embedder.sha256, batch_size=8)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 8, "max_batch_size": 8}
    assert not handler.share_model_across_processes()
    model = handler.load_model()
    batch = [CaptionText(f"k{i}", c, "s", f"{i}.png") for i, c in enumerate(CAPTIONS[:8])]
    results = list(handler.run_inference(batch, model))
    assert [r.caption for r in results] == batch
    for result in results:
        single = tiny_embedder.embed([result.caption.caption], batch_size=1)[0]  # (D,)
        assert result.vector.shape == (TINY_HIDDEN,)
        np.testing.assert_allclose(result.vector, single, atol=1e-5)


def test_handler_refuses_other_weights(tiny_embedder: TextEmbedder) -> None:
    handler = SentenceEmbeddingHandler(tiny_embedder.name, "ab" * 32, batch_size=8)
    with pytest.raises(ValueError, match="install the same model on every worker"):
        handler.load_model()


# ---------------------------------------------------------------- whole pipeline runs


@pytest.mark.slow
def test_run_index_with_tiny_model(
    tmp_path: Path, caption_run: Path, tiny_model_dir: Path, tiny_embedder: TextEmbedder
) -> None:
    out = tmp_path / "index"
    config = IndexConfig(str(caption_run), str(out), embedder=str(tiny_model_dir), batch_size=8)
    summary = run_index(config, [])
    assert (summary.count, summary.dimension, summary.out_dir) == (30, TINY_HIDDEN, str(out))
    assert summary.seconds > 0

    mapping, vectors, manifest = read_index(out)
    assert mapping.column("id").to_pylist() == list(range(30))
    order = list(
        zip(*(mapping.column(c).to_pylist() for c in ("source", "member", "key")), strict=True)
    )
    assert order == sorted(order)
    assert sorted(mapping.column("caption").to_pylist()) == sorted(CAPTIONS)
    expected = tiny_embedder.embed(mapping.column("caption").to_pylist())  # (N, D)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert manifest["embedder_name"] == tiny_embedder.name
    assert manifest["embedder_sha256"] == tiny_embedder.sha256
    assert manifest["dimension"] == TINY_HIDDEN and manifest["count"] == 30
    assert manifest["metric"] == "inner_product"
    assert manifest["caption_files"] == [
        str(p) for p in sorted((caption_run / "captions").glob("*.parquet"))
    ]
    assert manifest["imgindex_version"]

    hits = open_index(out, embedder=tiny_embedder).search(CAPTIONS[4], k=1)
    assert hits[0].caption == CAPTIONS[4]  # a caption is its own nearest neighbour


@pytest.mark.slow
def test_build_index_pipeline_counts_what_it_skips(
    tmp_path: Path, caption_run: Path, tiny_model_dir: Path
) -> None:
    config = IndexConfig(str(caption_run), str(tmp_path / "index"), str(tiny_model_dir))
    pipeline = beam.Pipeline(options=pipeline_options([]))
    manifests = build_index_pipeline(pipeline, config)
    assert_that(
        manifests | beam.Map(lambda m: (m.count, m.dimension)), equal_to([(30, TINY_HIDDEN)])
    )
    result = pipeline.run()
    result.wait_until_finish()
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))[
            "counters"
        ]
    }
    assert counters["captions_read"] == 32
    assert counters["skipped_empty_caption"] == 2
    assert counters["captions_indexed"] == 30


@pytest.mark.slow
def test_rerun_gives_the_same_index(
    tmp_path: Path, caption_run: Path, tiny_model_dir: Path
) -> None:
    out = tmp_path / "index"
    # Different batch sizes give different batches; ids and vectors must not notice.
    run_index(IndexConfig(str(caption_run), str(out), str(tiny_model_dir), batch_size=8), [])
    first = read_index(out)
    config = IndexConfig(
        str(caption_run), str(out), str(tiny_model_dir), batch_size=5, overwrite=True
    )
    run_index(config, [])
    second = read_index(out)
    assert first[0].equals(second[0])
    # Bitwise equal on CPU here; a tolerance leaves room for BLAS kernels that pick their
    # blocking by batch shape.
    np.testing.assert_allclose(first[1], second[1], rtol=0, atol=1e-6)
    assert {k: v for k, v in first[2].items() if k != "created_at"} == {
        k: v for k, v in second[2].items() if k != "created_at"
    }


@pytest.mark.slow
def test_real_embedder_finds_the_red_circle(tmp_path: Path) -> None:
    run = tmp_path / "caption-run"
    write_caption_run(run)
    out = tmp_path / "index"
    summary = run_index(IndexConfig(str(run / "captions"), str(out), DEFAULT_EMBEDDER), [])
    assert (summary.count, summary.dimension) == (30, 384)
    hits = open_index(out).search("a red circle", k=3)
    assert hits[0].caption == RED_CIRCLE
    assert open_index(out).manifest.embedder_name == DEFAULT_EMBEDDER


def test_non_empty_out_dir_is_refused_before_anything_runs(
    tmp_path: Path, caption_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "index"
    out.mkdir()
    (out / "manifest.json").write_text("{}")

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the embedder was resolved before the out_dir check")

    monkeypatch.setattr(index_pipeline, "resolve_embedder", must_not_run)
    with pytest.raises(FileExistsError, match=r"index directory .* is not empty: pass --overwrite"):
        run_index(IndexConfig(str(caption_run), str(out)), [])
    assert [p.name for p in out.iterdir()] == ["manifest.json"]


def test_caption_file_without_caption_column_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "run" / "captions").mkdir(parents=True)
    table = pa.Table.from_pylist(caption_rows(CAPTIONS[:3]), schema=CAPTION_SCHEMA)
    bad = tmp_path / "run" / "captions" / "part-00000.parquet"
    pq.write_table(table.drop_columns(["caption"]), bad)
    config = IndexConfig(str(tmp_path / "run"), str(tmp_path / "index"))
    with pytest.raises(ValueError, match=r"part-00000.parquet lacks column\(s\) caption"):
        run_index(config, [])
    assert not (tmp_path / "index").exists()
