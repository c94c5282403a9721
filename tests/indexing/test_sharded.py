"""indexing.partitions, shards and sharded: a build from partitions and shards, driven here the way
the Beam job drives it, writes the index that write_index writes for the same vectors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

from indexing.ann import AnnConfig, choose_nlist, estimate_bytes, training_rows
from indexing.assemble import CaptionText, EmbeddedCaption
from indexing.build import (
    EMBEDDINGS_FILE,
    MANIFEST_FILE,
    MAPPING_FILE,
    IndexEntry,
    Manifest,
    write_index,
)
from indexing.drift import FIT_SAMPLE, measure_fit
from indexing.partitions import (
    Partition,
    PartitionWriteError,
    RangeLayout,
    range_boundaries,
    range_of,
    read_rows,
    write_partition,
)
from indexing.search import open_index
from indexing.sharded import (
    STAGING_DIR,
    Sample,
    exact_neighbours,
    finish_index,
    work_dir_for,
)
from indexing.shards import (
    SHARDS_DIR,
    base_ids,
    fill_shard,
    fit_ids,
    from_bytes,
    merge_shards,
    merge_shards_on_disk,
    shard_plan,
    to_bytes,
    train_template,
)
from indexing.tuning import holdout_rows, search_with

D, CLUSTERS = 16, 60
TARGET = 0.9


def clustered(
    n: int, seed: int, d: int = D, clusters: int = CLUSTERS, noise: float = 0.4
) -> np.ndarray:
    """Unit vectors from Gaussian clusters (centres fixed by seed 0), float32 (n, d)."""
    centres = np.random.default_rng(0).standard_normal((clusters, d)).astype(np.float32)
    rng = np.random.default_rng(seed)
    vectors = centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, d))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def entry(i: int) -> IndexEntry:
    # Names sort in i's order, so entry i gets id i from both builds.
    return IndexEntry(id=i, key=f"k{i:05d}", caption=f"caption {i % 97}", source="s",
                      member=f"m{i:05d}", width=i % 300, model="tiny")  # fmt: skip


def manifest(n: int, d: int = D) -> Manifest:
    return Manifest(
        embedder_name="fake",
        embedder_sha256="0" * 64,
        dimension=d,
        count=n,
        caption_files=("captions/a.parquet",),
        imgindex_version="0.1.0",
    )


def embedded(entries: list[IndexEntry], vectors: np.ndarray) -> list[EmbeddedCaption]:
    fields = ("key", "caption", "source", "member", "width", "model")
    return [
        EmbeddedCaption(CaptionText(**{f: getattr(e, f) for f in fields}), v)
        for e, v in zip(entries, vectors, strict=True)
    ]


def write_partitions(staging: Path, rows: list[EmbeddedCaption], parts: int) -> list[Partition]:
    """Split rows (in id order) into `parts` contiguous ranges, as the job's ranges split them."""
    cuts = np.linspace(0, len(rows), parts + 1).astype(int)
    d = len(rows[0].vector) if rows else D
    return [
        write_partition(staging, r, int(lo), rows[lo:hi], d)
        for r, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:], strict=True))
    ]


def sharded_build(out: Path, vectors: np.ndarray, ann: AnnConfig, parts: int = 4) -> Path:
    """What pipelines.index.sharded does, one step after another in this process."""
    n, d = vectors.shape
    work = work_dir_for(out)
    staging = work / STAGING_DIR
    partitions = write_partitions(staging, embedded([entry(i) for i in range(n)], vectors), parts)
    shards = shard_plan(n, d, ann)
    sample = Sample(*read_rows(partitions, shards.sample_ids()))
    template = to_bytes(train_template(shards.plan, shards, sample.ids, sample.vectors))
    shard_paths = []
    if shards.sharded:
        for p in partitions:
            path = staging / SHARDS_DIR / f"shard-{p.number:05d}.faiss"
            fill_shard(template, p, shards.holdout, path)
            shard_paths.append(str(path))
    final = sample.subset(shards.final_ids())  # what the job hands the final step
    finish_index(work, out, False, shards, partitions, shard_paths, template, final,
                 manifest(n, d), ann)  # fmt: skip
    return out


def single_build(out: Path, vectors: np.ndarray, ann: AnnConfig) -> Path:
    n, d = vectors.shape
    return write_index(out, [entry(i) for i in range(n)], vectors, manifest(n, d), ann=ann)


def hits(out: Path, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Q, 10) scores and keys from open_index at the manifest's tuned parameters."""
    results = open_index(out).search_vectors(queries, k=10)
    ids = np.array([[h.key for h in row] for row in results])
    scores = np.array([[h.score for h in row] for row in results])
    return scores, ids


def assert_same_index(single: Path, sharded: Path, queries: np.ndarray) -> None:
    for name in (MAPPING_FILE, EMBEDDINGS_FILE):
        assert pq.read_table(single / name).equals(pq.read_table(sharded / name)), name
    first, second = (open_index(p).manifest for p in (single, sharded))
    timing = {"created_at": first.created_at, "query_ms": None}  # when, and how fast it ran
    assert replace(first, **timing) == replace(second, **timing)  # type: ignore[arg-type]
    (s1, i1), (s2, i2) = hits(single, queries), hits(sharded, queries)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, atol=1e-5)


# ---------------------------------------------------------------- key ranges and partitions


def test_ranges_split_the_keys_in_order() -> None:
    keys = [("s", f"m{i:03d}", f"k{i}") for i in range(100)]
    rng = np.random.default_rng(0)
    sample = [keys[i] for i in rng.integers(0, 100, 60)]
    boundaries = range_boundaries(sample, 4)
    assert list(boundaries) == sorted(set(boundaries)) and 1 <= len(boundaries) <= 3
    numbers = [range_of(k, boundaries) for k in keys]
    assert numbers == sorted(numbers)  # contiguous ranges in key order
    assert set(numbers) == set(range(len(boundaries) + 1))
    assert range_boundaries(sample, 1) == () and range_boundaries([], 8) == ()
    with pytest.raises(ValueError, match="ranges must be >= 1"):
        range_boundaries(sample, 0)


def test_range_layout_gives_first_ids() -> None:
    layout = RangeLayout.from_counts([(2, 5), (0, 3)])  # range 1 got no rows
    assert layout.counts == (3, 0, 5) and layout.total == 8
    assert [layout.first_id(r) for r in range(3)] == [0, 3, 3]
    assert RangeLayout.from_counts([]).total == 0


def test_write_partition_orders_and_drops_repeated_keys(tmp_path: Path) -> None:
    vectors = clustered(6, seed=3)
    captions = [CaptionText(f"k{i % 4}", f"c{i}", "s", f"m{i % 4}") for i in range(6)]
    rows = [EmbeddedCaption(c, v) for c, v in zip(captions, vectors, strict=True)][::-1]
    part = write_partition(tmp_path, 7, 100, rows, D)
    assert (part.first_id, part.count, part.duplicates) == (100, 4, 2)
    mapping = pq.read_table(part.mapping_path)
    assert mapping.column("id").to_pylist() == [100, 101, 102, 103]
    assert mapping.column("key").to_pylist() == ["k0", "k1", "k2", "k3"]
    assert mapping.column("caption").to_pylist() == ["c0", "c1", "c2", "c3"]  # first by caption
    ids, got = read_rows([part], np.array([101, 103]))
    assert ids.tolist() == [101, 103]
    np.testing.assert_array_equal(got, vectors[[1, 3]])


def test_a_partition_that_cannot_be_written_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "mapping").write_text("a file where the folder should be")
    rows = embedded([entry(0)], clustered(1, seed=0))
    with pytest.raises(PartitionWriteError, match="could not write .*part-00000.parquet"):
        write_partition(tmp_path, 0, 0, rows, D)


def test_a_partition_with_bad_vectors_is_refused(tmp_path: Path) -> None:
    rows = embedded([entry(0)], 2 * clustered(1, seed=0))
    with pytest.raises(ValueError, match="partition 0: vectors must be unit-norm"):
        write_partition(tmp_path, 0, 0, rows, D)


# ---------------------------------------------------------------- plan, sample, neighbours


@pytest.mark.parametrize("n", [500, 70_000, 300_000])
def test_shard_plan_picks_the_rows_write_index_picks(n: int) -> None:
    shards = shard_plan(n, D, AnnConfig(index_type="ivf-flat", seed=3))
    held = holdout_rows(n, 3)
    np.testing.assert_array_equal(shards.holdout, held)
    rest = np.delete(np.arange(n), held)  # ids write_index builds and trains on, in order
    rows = training_rows(len(rest), choose_nlist(n), 3)
    np.testing.assert_array_equal(shards.training, rest if rows is None else rest[rows])
    assert len(shards.fit) == min(n, FIT_SAMPLE)
    positions = np.array([0, 5, len(rest) - 1])
    np.testing.assert_array_equal(base_ids(positions, held), rest[positions])


def test_flat_plan_holds_nothing_out() -> None:
    shards = shard_plan(1000, D, AnnConfig())
    assert shards.plan.index_type == "flat" and shards.sharded
    assert len(shards.sample_ids()) == 0


def test_exact_neighbours_stream_equals_flat_search(tmp_path: Path) -> None:
    vectors = clustered(900, seed=4)
    partitions = write_partitions(tmp_path, embedded([entry(i) for i in range(900)], vectors), 3)
    queries = clustered(20, seed=5)
    exclude = np.array([1, 50, 400, 899])
    scores, found = exact_neighbours(queries, partitions, exclude, 10)  # (20, 10) x2
    rest = np.delete(np.arange(900), exclude)
    exact = faiss.IndexFlatIP(D)
    exact.add(vectors[rest])
    truth, rows = exact.search(queries, 10)
    np.testing.assert_array_equal(found, rest[rows])
    np.testing.assert_allclose(scores, truth, atol=1e-6)


# ---------------------------------------------------------------- whole builds, both ways


@pytest.mark.parametrize("kind", ["flat", "ivf-flat", "ivf-sq8", "ivf-pq"])
def test_sharded_build_writes_the_single_worker_index(tmp_path: Path, kind: str) -> None:
    vectors = clustered(3000, seed=1)
    ann = AnnConfig(index_type=kind, target_recall=TARGET)
    single = single_build(tmp_path / "single", vectors, ann)
    sharded = sharded_build(tmp_path / "sharded", vectors, ann, parts=5)
    assert_same_index(single, sharded, clustered(50, seed=9))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sharded", "single"]  # no work dirs


def test_sharded_hnsw_is_filled_in_one_place(tmp_path: Path) -> None:
    vectors = clustered(2000, seed=1)
    out = sharded_build(tmp_path / "hnsw", vectors, AnnConfig(index_type="hnsw"), parts=3)
    index = open_index(out)
    assert index.manifest.index_type == "hnsw" and index.manifest.count == 2000
    queries = clustered(50, seed=9)
    _, keys = hits(out, queries)
    found = np.vectorize(lambda key: int(key[1:]))(keys)  # "k00042" -> 42, its id
    exact = faiss.IndexFlatIP(D)
    exact.add(vectors)
    _, truth = exact.search(queries, 10)
    recall = np.mean([len(np.intersect1d(f, t)) / 10 for f, t in zip(found, truth, strict=True)])
    assert recall >= TARGET


def test_sharded_auto_falls_back_like_write_index(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Flat and IVF-Flat do not fit the budget; SQ8's grid cannot reach 0.99 on these clusters.
    n, d = 5000, 32
    vectors = clustered(n, seed=1, d=d, clusters=100, noise=0.2)
    budget = estimate_bytes("ivf-sq8", n, d, choose_nlist(n)) + 1
    ann = AnnConfig(memory_budget_bytes=budget, target_recall=0.99)
    single = single_build(tmp_path / "single", vectors, ann)
    sharded = sharded_build(tmp_path / "sharded", vectors, ann, parts=3)
    assert open_index(sharded).manifest.index_type == "ivf-pq"
    assert caplog.text.count("the ivf-sq8 index reaches recall@10") == 2  # both builds
    assert_same_index(single, sharded, clustered(30, seed=9, d=d, clusters=100, noise=0.2))


def test_empty_collection(tmp_path: Path) -> None:
    out = sharded_build(tmp_path / "empty", np.zeros((0, D), np.float32), AnnConfig(), parts=1)
    assert open_index(out).manifest.count == 0
    assert pq.read_table(out / MAPPING_FILE).num_rows == 0
    assert (out / MANIFEST_FILE).is_file() and not (out / STAGING_DIR).exists()


def test_on_disk_merge_equals_the_in_memory_merge(tmp_path: Path) -> None:
    vectors = clustered(2000, seed=2)
    staging = tmp_path / "staging"
    partitions = write_partitions(staging, embedded([entry(i) for i in range(2000)], vectors), 3)
    shards = shard_plan(2000, D, AnnConfig(index_type="ivf-flat"))
    sample = Sample(*read_rows(partitions, shards.sample_ids()))
    template = to_bytes(train_template(shards.plan, shards, sample.ids, sample.vectors))
    paths = []
    for p in partitions:
        fill_shard(template, p, shards.holdout, staging / f"shard-{p.number}.faiss")
        paths.append(str(staging / f"shard-{p.number}.faiss"))
    in_memory = merge_shards(template, shards.plan, paths)
    (tmp_path / "disk").mkdir()
    lists = tmp_path / "disk" / "lists.ivfdata"
    on_disk = merge_shards_on_disk(template, shards.plan, paths, lists)
    faiss.write_index(on_disk, str(tmp_path / "disk" / "index.faiss"))
    del on_disk
    reopened = faiss.read_index(
        str(tmp_path / "disk" / "index.faiss"),
        faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY,
    )
    queries = clustered(40, seed=8)
    params = {"nprobe": 4}
    d1, i1 = search_with(in_memory, "ivf-flat", params, queries, 10)
    d2, i2 = search_with(reopened, "ivf-flat", params, queries, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(d1, d2, atol=1e-6)
    assert in_memory.ntotal == 2000 - len(shards.holdout)
    assert from_bytes(template).ntotal == 0


def test_fit_sample_is_the_one_measure_fit_draws() -> None:
    n = FIT_SAMPLE + 2000
    vectors = clustered(n, seed=6)
    index = faiss.index_factory(D, "IVF16,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(vectors[:2000])
    index.add(vectors)
    ids = fit_ids(n, seed=4)
    assert len(ids) == FIT_SAMPLE
    assert measure_fit(index, vectors, 4) == measure_fit(index, vectors[ids], 4)
