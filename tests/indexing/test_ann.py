"""Tests for indexing.ann and indexing.tuning: approximate indexes against exact search."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from indexing.ann import (
    AnnConfig,
    build_ann_index,
    choose,
    choose_nlist,
    estimate_bytes,
    parse_size,
    plan_for,
)
from indexing.build import INDEX_FILE, MANIFEST_FILE, IndexEntry, Manifest, write_index
from indexing.errors import IndexingError
from indexing.search import IndexLoadError, SearchIndex, open_index
from indexing.tuning import TargetRecallError, search_with, tune

N, D, CLUSTERS = 20_000, 32, 200
TYPES = ("flat", "ivf-flat", "ivf-sq8", "ivf-pq", "hnsw")
TARGET = 0.95


def clustered(n: int, seed: int) -> np.ndarray:
    """Unit vectors from Gaussian clusters (centres fixed by seed 0), float32 (n, D)."""
    centres = np.random.default_rng(0).standard_normal((CLUSTERS, D)).astype(np.float32)
    rng = np.random.default_rng(seed)
    noise = 0.35 * rng.standard_normal((n, D)).astype(np.float32)  # (n, D)
    vectors = centres[rng.integers(0, CLUSTERS, n)] + noise  # (n, D)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def entries(n: int) -> list[IndexEntry]:
    return [
        IndexEntry(id=3 + 7 * i, key=f"k{i}", caption=f"c{i}", source="s", member="m")
        for i in range(n)
    ]


def manifest(n: int, **overrides: object) -> Manifest:
    values: dict[str, object] = dict(
        embedder_name="fake",
        embedder_sha256="0" * 64,
        dimension=D,
        count=n,
        caption_files=("captions/a.parquet",),
        imgindex_version="0.1.0",
    )
    values.update(overrides)
    return Manifest(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered(N, seed=1)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, vectors: np.ndarray) -> dict[str, Path]:
    """One index directory per type over the same seeded collection."""
    root = tmp_path_factory.mktemp("ann")
    rows = entries(N)
    return {
        kind: write_index(
            root / kind,
            rows,
            vectors,
            manifest(N),
            ann=AnnConfig(index_type=kind, target_recall=TARGET),
        )
        for kind in TYPES
    }


def recall_at_10(
    index: SearchIndex, vectors: np.ndarray, queries: np.ndarray, **params: int
) -> float:
    exact = faiss.IndexFlatIP(D)
    exact.add(vectors)
    _, truth = exact.search(queries, 10)  # (Q, 10) row numbers
    truth_keys = [{f"k{r}" for r in row} for row in truth]
    hits = index.search_vectors(queries, 10, **params)
    found = sum(len(truth_keys[q] & {h.key for h in row}) for q, row in enumerate(hits))
    return found / truth.size


@pytest.mark.parametrize("kind", TYPES)
def test_every_type_reaches_the_target_against_exact(
    built: dict[str, Path], vectors: np.ndarray, kind: str
) -> None:
    index = open_index(built[kind])
    recorded = index.manifest
    assert recorded.index_type == kind
    assert recorded.target_recall == TARGET
    assert recorded.recall_at_10 is not None and recorded.recall_at_10 >= TARGET
    assert (recorded.query_ms is None) if kind == "flat" else (recorded.query_ms or 0) > 0
    assert recorded.index_bytes == estimate_bytes(
        kind, N, D, choose_nlist(N) if "ivf" in kind else None
    )
    # Fresh queries from the same clusters, not in the index, through the loaded (mmap) index.
    queries = clustered(500, seed=2)
    assert recall_at_10(index, vectors, queries) >= TARGET
    if kind == "flat":
        assert recorded.search_params == () and recorded.recall_at_10 == 1.0


def test_manifest_records_the_plan(built: dict[str, Path]) -> None:
    data = json.loads((built["ivf-pq"] / MANIFEST_FILE).read_text())
    assert data["factory"] == f"IDMap2,IVF{choose_nlist(N)},PQ8x4fs,RFlat"
    assert set(data["search_params"]) == {"nprobe", "k_factor"}
    assert {"recall_at_10", "query_ms", "index_bytes", "target_recall"} <= data.keys()


def test_exact_default_writes_the_manifest_of_before(tmp_path: Path, vectors: np.ndarray) -> None:
    out = write_index(tmp_path / "exact", entries(100), vectors[:100], manifest(100))
    data = json.loads((out / MANIFEST_FILE).read_text())
    assert "index_type" not in data and "search_params" not in data and "factory" not in data
    index = open_index(out)
    assert index.manifest.index_type == "flat" and index.search_params == {}
    hits = index.search_vectors(vectors[:1], 3)[0]
    assert hits[0].key == "k0" and hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_per_query_overrides(built: dict[str, Path], vectors: np.ndarray) -> None:
    queries = clustered(300, seed=3)
    ivf = open_index(built["ivf-flat"])
    assert recall_at_10(ivf, vectors, queries, nprobe=choose_nlist(N)) == pytest.approx(1.0)
    assert recall_at_10(ivf, vectors, queries, nprobe=1) < recall_at_10(ivf, vectors, queries)
    assert recall_at_10(open_index(built["hnsw"]), vectors, queries, ef_search=256) >= TARGET
    with pytest.raises(IndexingError, match="ef_search does not apply to this ivf-flat index"):
        ivf.search_vectors(queries, 10, ef_search=64)
    with pytest.raises(IndexingError, match="exceeds the index's nlist"):
        ivf.search_vectors(queries, 10, nprobe=10**6)
    with pytest.raises(IndexingError, match="nprobe does not apply to this flat index"):
        open_index(built["flat"]).search_vectors(queries, 10, nprobe=4)


def test_auto_choices() -> None:
    assert choose(10_000, 384, AnnConfig()).index_type == "flat"
    big = choose(1_000_000, 384, AnnConfig())
    assert (big.index_type, big.factory) == ("ivf-flat", "IVF4096,Flat")
    assert (
        choose(1_000_000, 384, AnnConfig(memory_budget_bytes=parse_size("1GB"))).index_type
        == "ivf-sq8"
    )
    tight = AnnConfig(memory_budget_bytes=parse_size("100MB"))
    assert choose(1_000_000, 384, tight).factory == "IDMap2,IVF4096,PQ96x4fs,RFlat"
    # Small but Flat does not fit: the first IVF type that does.
    small = AnnConfig(memory_budget_bytes=estimate_bytes("ivf-sq8", 20_000, 384, 512) + 1)
    assert choose(20_000, 384, small).index_type == "ivf-sq8"
    assert [choose_nlist(n) for n in (10, 1000, 20_000, 1_000_000)] == [1, 16, 512, 4096]


def test_mutable_never_gets_hnsw_or_pq() -> None:
    for kind in ("hnsw", "ivf-pq"):
        with pytest.raises(IndexingError, match=f"index type {kind} cannot remove ids"):
            AnnConfig(index_type=kind, mutable=True)
    with pytest.raises(IndexingError, match="no index type fits the memory budget"):
        choose(1_000_000, 384, AnnConfig(memory_budget_bytes=parse_size("100MB"), mutable=True))
    for n in (1000, 100_000, 10_000_000):
        assert choose(n, 384, AnnConfig(mutable=True)).index_type in ("flat", "ivf-flat", "ivf-sq8")


@pytest.mark.parametrize("kind", ["ivf-flat", "ivf-sq8"])
def test_add_and_remove_equal_a_rebuild(vectors: np.ndarray, kind: str) -> None:
    ids = np.arange(N, dtype=np.int64) * 7 + 3
    plan = plan_for(kind, N, D)
    updated = build_ann_index(plan, ids[:15_000], vectors[:15_000], seed=0)
    rebuilt = faiss.clone_index(updated)
    rebuilt.reset()  # same trained centroids, no vectors
    updated.remove_ids(ids[:5_000])  # drop the first 5k, then add the last 5k
    updated.add_with_ids(vectors[15_000:], ids[15_000:])
    rebuilt.add_with_ids(vectors[5_000:], ids[5_000:])
    assert updated.ntotal == rebuilt.ntotal == 15_000
    queries = clustered(200, seed=4)
    params = {"nprobe": 16}
    got_scores, got = search_with(updated, kind, params, queries, 10)
    want_scores, want = search_with(rebuilt, kind, params, queries, 10)
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-6)
    assert [set(row) for row in got] == [set(row) for row in want]
    np.testing.assert_allclose(updated.reconstruct(int(ids[-1])), rebuilt.reconstruct(int(ids[-1])))


def test_tuner_says_when_it_cannot_reach_the_target(vectors: np.ndarray) -> None:
    ids = np.arange(N, dtype=np.int64)
    plan = plan_for("ivf-sq8", N, D)
    index = build_ann_index(plan, ids, vectors, seed=0)
    queries = clustered(500, seed=5)
    with pytest.raises(
        TargetRecallError, match=r"reaches recall@10 0\.\d+ at most .* below the target 1"
    ):
        tune(index, "ivf-sq8", plan.nlist, ids, vectors, queries, 1.0)
    result = tune(index, "ivf-sq8", plan.nlist, ids, vectors, queries, 0.5)
    assert result.recall_at_10 >= 0.5 and result.params["nprobe"] >= 1


@pytest.mark.parametrize(
    ("text", "size"),
    [("4GB", 4 * 10**9), ("512MiB", 512 * 2**20), ("1.5g", 1_500_000_000), ("2000", 2000)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "4XB", "-1GB", "0"])
def test_parse_size_refuses_bad_input(text: str) -> None:
    with pytest.raises(IndexingError, match="memory budget") as info:
        parse_size(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("recall", [1.01, 0.0, -0.5])
def test_target_recall_out_of_range(recall: float) -> None:
    with pytest.raises(IndexingError, match=r"target recall must be in \(0, 1\]"):
        AnnConfig(target_recall=recall)


def test_budget_too_small_for_any_type(tmp_path: Path, vectors: np.ndarray) -> None:
    with pytest.raises(
        IndexingError, match="no index type fits the memory budget of 1,000 bytes"
    ) as info:
        write_index(
            tmp_path / "x",
            entries(N),
            vectors,
            manifest(N),
            ann=AnnConfig(memory_budget_bytes=1000),
        )
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x").exists()
    with pytest.raises(IndexingError, match="a hnsw index of 20000 vectors needs about"):
        choose(N, D, AnnConfig(index_type="hnsw", memory_budget_bytes=1000))


def copy_index(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("kind", ["ivf-flat", "ivf-pq", "hnsw"])
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_or_truncated_index_file(
    built: dict[str, Path], tmp_path: Path, kind: str, damage: str
) -> None:
    path = copy_index(built[kind], tmp_path / "bad")
    data = (path / INDEX_FILE).read_bytes()
    (path / INDEX_FILE).write_bytes(
        b"not a faiss index" * 10 if damage == "garbage" else data[: len(data) // 2]
    )
    with pytest.raises(IndexLoadError, match="corrupt FAISS index") as info:
        open_index(path)
    assert "\n" not in str(info.value)


def edit_manifest(path: Path, **changes: object) -> None:
    data = json.loads((path / MANIFEST_FILE).read_text())
    data.update(changes)
    (path / MANIFEST_FILE).write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("kind", "changes", "message"),
    [
        (
            "ivf-flat",
            {"factory": "IVF1024,Flat"},
            "has nlist 512 but the manifest's factory is IVF1024",
        ),
        (
            "ivf-flat",
            {"index_type": "ivf-sq8", "factory": "IVF512,SQ8"},
            "is a ivf-flat index but the manifest says ivf-sq8",
        ),
        ("ivf-flat", {"search_params": {"ef_search": 64}}, "takes search parameters"),
        (
            "ivf-flat",
            {"search_params": {"nprobe": 4096}},
            "nprobe 4096 exceeds the index's nlist 512",
        ),
        (
            "hnsw",
            {"index_type": "flat", "factory": "IDMap2,Flat", "search_params": {}},
            "is a hnsw index",
        ),
        (
            "flat",
            {"index_type": "hnsw", "factory": "IDMap2,HNSW32", "search_params": {"ef_search": 16}},
            "is a flat index",
        ),
    ],
)
def test_manifest_that_does_not_match_the_file(
    built: dict[str, Path], tmp_path: Path, kind: str, changes: dict[str, object], message: str
) -> None:
    path = copy_index(built[kind], tmp_path / "bad")
    edit_manifest(path, **changes)
    with pytest.raises(IndexLoadError, match=message) as info:
        open_index(path)
    assert "\n" not in str(info.value)


def test_auto_falls_back_when_a_type_misses_the_target(
    tmp_path: Path, vectors: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    # Flat and IVF-Flat do not fit; SQ8's 8-bit grid cannot reach 0.99 on these tight clusters.
    budget = estimate_bytes("ivf-sq8", N, D, choose_nlist(N)) + 1
    config = AnnConfig(memory_budget_bytes=budget, target_recall=0.99)
    assert choose(N, D, config).index_type == "ivf-sq8"
    out = write_index(tmp_path / "auto", entries(N), vectors, manifest(N), ann=config)
    recorded = open_index(out).manifest
    assert recorded.index_type == "ivf-pq" and (recorded.recall_at_10 or 0) >= 0.99
    assert "the ivf-sq8 index reaches recall@10" in caplog.text
    # A named type does not fall back.
    with pytest.raises(TargetRecallError, match="the ivf-sq8 index reaches"):
        named = AnnConfig(index_type="ivf-sq8", target_recall=0.99)
        write_index(tmp_path / "named", entries(N), vectors, manifest(N), ann=named)
