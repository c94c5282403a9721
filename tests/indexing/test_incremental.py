"""Tests for indexing.incremental and indexing.drift: an updated IVF index against a rebuild with
the same quantizer, the ids carried across versions, and each rebuild trigger."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pytest

from indexing.ann import AnnConfig, build_ann_index, choose_nlist, plan_for
from indexing.build import INDEX_FILE, MANIFEST_FILE, IndexEntry, Manifest, write_index
from indexing.drift import QuantizerFit, RebuildRule, measure_fit
from indexing.errors import IndexingError
from indexing.incremental import INCREMENTAL, REBUILT, carry_ids, update_index
from indexing.search import open_index
from indexing.tuning import search_with, tune

N, D, CLUSTERS = 4000, 32, 100


def clustered(n: int, seed: int, centre_seed: int = 0) -> np.ndarray:
    """Unit vectors from Gaussian clusters (centres fixed by centre_seed), float32 (n, D)."""
    centres = np.random.default_rng(centre_seed).standard_normal((CLUSTERS, D)).astype(np.float32)
    rng = np.random.default_rng(seed)
    vectors = centres[rng.integers(0, CLUSTERS, n)] + 0.35 * rng.standard_normal((n, D))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def entries(keys: range | list[int], version: int = 1) -> list[IndexEntry]:
    """Entries with ids 0..n-1 (as index_entries gives them); the caption names the version."""
    return [IndexEntry(id=n, key=f"k{k:05d}", caption=f"c{k} v{version}", source="s", member="m")
            for n, k in enumerate(keys)]  # fmt: skip


def manifest(n: int, **overrides: object) -> Manifest:
    values: dict[str, object] = dict(
        embedder_name="fake",
        embedder_sha256="0" * 64,
        dimension=D,
        count=n,
        caption_files=(),
        imgindex_version="0.1.0",
    )
    values.update(overrides)
    return Manifest(**values)  # type: ignore[arg-type]


def first_version(root: Path, kind: str) -> tuple[Path, np.ndarray]:
    vectors = clustered(N, seed=1)
    path = write_index(root / "v1", entries(range(N)), vectors, manifest(N),
                       ann=AnnConfig(index_type=kind, mutable=True))  # fmt: skip
    return path, vectors


def night(vectors: np.ndarray) -> tuple[list[IndexEntry], np.ndarray]:
    """Tonight: keys 0..99 deleted, 100..149 re-captioned (other vectors), 40 new keys."""
    changed = clustered(50, seed=7)
    new = clustered(40, seed=8)
    rows = entries(range(100, 150), version=2) + entries(range(150, N)) + entries(
        range(N, N + 40))  # fmt: skip
    tonight = np.concatenate([changed, vectors[150:], new])  # (N - 100 + 40, D)
    return [replace(e, id=i) for i, e in enumerate(rows)], tonight


@pytest.fixture(scope="module", params=["ivf-flat", "ivf-sq8"])
def previous(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[str, Path, np.ndarray]:  # fmt: skip
    kind = request.param
    path, vectors = first_version(tmp_path_factory.mktemp(kind), kind)
    return kind, path, vectors


def test_the_first_version_records_its_training(previous: tuple[str, Path, np.ndarray]) -> None:
    kind, path, vectors = previous
    recorded = open_index(path).manifest
    assert recorded.trained_count == N
    fit = measure_fit(faiss.read_index(str(path / INDEX_FILE)), vectors)
    assert recorded.train_residual == pytest.approx(fit.residual)
    assert recorded.train_imbalance == pytest.approx(fit.imbalance)
    assert 0 < fit.residual < 2 and fit.imbalance >= 1


def test_update_equals_a_rebuild_with_the_same_quantizer(
    previous: tuple[str, Path, np.ndarray], tmp_path: Path
) -> None:
    kind, path, vectors = previous
    rows, tonight = night(vectors)
    update = update_index(path, rows, tonight, manifest(len(rows)),
                          AnnConfig(index_type=kind, mutable=True))  # fmt: skip
    assert update.mode == INCREMENTAL, update.reason
    assert (update.added, update.removed) == (90, 150)
    assert update.index is not None
    # The same quantizer, emptied and filled with tonight's vectors under the carried ids.
    fresh = faiss.read_index(str(path / INDEX_FILE))
    fresh.reset()
    ids = np.array([e.id for e in update.entries], dtype=np.int64)  # (N',)
    fresh.add_with_ids(tonight, ids)
    assert update.index.ntotal == fresh.ntotal == len(rows)
    queries = clustered(300, seed=11)
    nlist = choose_nlist(N)
    for params, k in (({"nprobe": nlist}, len(rows)), (update.manifest.params, 10)):
        got_scores, got = search_with(update.index, kind, params, queries, k)  # (Q, k)
        want_scores, want = search_with(fresh, kind, params, queries, k)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got_scores, want_scores)
    # Written and opened like any index: the tuned parameters reach the target on fresh queries.
    out = write_index(tmp_path / "v2", update.entries, tonight, update.manifest, index=update.index)
    opened = open_index(out)
    assert opened.manifest.recall_at_10 is not None and opened.manifest.recall_at_10 >= 0.95
    assert opened.manifest.trained_count == N  # the training record is kept
    hits = opened.search_vectors(tonight[:1], 1)[0]
    assert hits[0].key == rows[0].key and hits[0].score == pytest.approx(1.0, abs=1e-2)


def test_ids_are_carried_per_key() -> None:
    before = pa.table({"id": [5, 9, 2], "key": ["a", "b", "c"], "caption": ["x", "y", "z"]})
    tonight = [
        IndexEntry(id=n, key=k, caption=c, source="s", member="m")
        for n, (k, c) in enumerate([("b", "y"), ("c", "z2"), ("d", "w"), ("e", "v")])
    ]
    changes = carry_ids(before, tonight)
    assert [e.id for e in changes.entries] == [9, 2, 10, 11]  # kept, kept, new above max 9
    assert changes.remove.tolist() == [2, 5]  # c re-captioned, a gone
    assert changes.add.tolist() == [1, 2, 3]  # rows of c, d, e
    first = carry_ids(None, tonight)
    assert [e.id for e in first.entries] == [0, 1, 2, 3] and first.add.tolist() == [0, 1, 2, 3]


def test_growth_past_the_threshold_rebuilds(previous: tuple[str, Path, np.ndarray]) -> None:
    kind, path, vectors = previous
    ann = AnnConfig(index_type=kind, mutable=True)
    grown = np.concatenate([vectors, clustered(N + 1, seed=12)])  # more than 2x
    update = update_index(path, entries(range(len(grown))), grown, manifest(len(grown)), ann)
    assert update.mode == REBUILT and update.index is None
    assert f"grew from {N} to {2 * N + 1}" in update.reason
    small = np.concatenate([vectors, clustered(100, seed=12)])  # +2.5%: incremental
    update = update_index(path, entries(range(len(small))), small, manifest(len(small)), ann)
    assert update.mode == INCREMENTAL and (update.added, update.removed) == (100, 0)
    half = N // 2 - 1
    update = update_index(path, entries(range(half)), vectors[:half], manifest(half), ann)
    assert update.mode == REBUILT and f"shrank from {N} to {half}" in update.reason


def test_drift_rebuilds(previous: tuple[str, Path, np.ndarray]) -> None:
    kind, path, vectors = previous
    ann = AnnConfig(index_type=kind, mutable=True)
    unseen = clustered(N // 2, seed=13, centre_seed=99)  # clusters the quantizer never saw
    drifted = np.concatenate([vectors, unseen])
    update = update_index(path, entries(range(len(drifted))), drifted, manifest(len(drifted)), ann)
    assert update.mode == REBUILT and update.reason.startswith("drifted"), update.reason


def test_a_burst_into_few_lists_rebuilds_only_when_asked(
    previous: tuple[str, Path, np.ndarray],
) -> None:
    kind, path, vectors = previous
    ann = AnnConfig(index_type=kind, mutable=True)
    index = faiss.read_index(str(path / INDEX_FILE))
    ivf = faiss.extract_index_ivf(index)
    centroids = ivf.quantizer.reconstruct_n(0, 2)  # (2, D): the copies fit the quantizer well
    rng = np.random.default_rng(14)
    copies = centroids[rng.integers(0, 2, N // 2)] + 1e-3 * rng.standard_normal((N // 2, D))
    copies = (copies / np.linalg.norm(copies, axis=1, keepdims=True)).astype(np.float32)
    burst = np.concatenate([vectors, copies])
    rows = entries(range(len(burst)))
    update = update_index(path, rows, burst, manifest(len(burst)), ann)
    assert update.mode == INCREMENTAL, update.reason  # the default rule ignores imbalance
    strict = RebuildRule(max_imbalance_rise=1.0)
    update = update_index(path, rows, burst, manifest(len(burst)), ann, rule=strict)
    assert update.mode == REBUILT and update.reason.startswith("lists unbalanced"), update.reason


def test_recall_below_target_after_the_update_rebuilds(
    previous: tuple[str, Path, np.ndarray],
) -> None:
    kind, path, vectors = previous
    # A target that needs exact search: an IVF index cannot promise 1.0 after re-tuning
    # unless nprobe=nlist reaches it; SQ8's quantised scores never do.
    ann = AnnConfig(index_type=kind, mutable=True, target_recall=1.0)
    update = update_index(path, entries(range(N)), vectors, manifest(N), ann)
    if kind == "ivf-sq8":
        assert update.mode == REBUILT and "below the target 1.0" in update.reason
    else:
        assert update.mode == INCREMENTAL and update.manifest.recall_at_10 == 1.0


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"index_type": "ivf-sq8"}, "index type changed from ivf-flat to ivf-sq8"),
        ({"embedder": "1" * 64}, "the embedder changed"),
        ({"index_type": "auto"}, "auto chooses exact flat"),
        ({"budget": 1000}, None),
    ],
)
def test_config_changes_rebuild(
    change: dict[str, object], reason: str | None, tmp_path: Path
) -> None:
    path, vectors = first_version(tmp_path, "ivf-flat")
    kind = str(change.get("index_type", "ivf-flat"))
    ann = AnnConfig(index_type=kind, mutable=True, memory_budget_bytes=change.get("budget"))  # type: ignore[arg-type]
    sha = str(change.get("embedder", "0" * 64))
    if reason is None:  # nothing fits the budget: the same error a rebuild would give
        with pytest.raises(IndexingError, match="memory budget"):
            update_index(path, entries(range(N)), vectors, manifest(N), ann)
        return
    update = update_index(path, entries(range(N)), vectors, manifest(N, embedder_sha256=sha), ann)
    assert update.mode == REBUILT and reason in update.reason


def test_what_cannot_be_updated_rebuilds(tmp_path: Path) -> None:
    vectors = clustered(N, seed=1)
    ann = AnnConfig(index_type="ivf-flat", mutable=True)
    assert update_index(None, entries(range(N)), vectors, manifest(N), ann).reason == (
        "no previous version"
    )
    flat = write_index(tmp_path / "flat", entries(range(N)), vectors, manifest(N))
    update = update_index(flat, entries(range(N)), vectors, manifest(N), ann)
    assert update.mode == REBUILT and "flat is exact" in update.reason
    assert [e.id for e in update.entries] == list(range(N))  # ids carried all the same
    ivf, _ = first_version(tmp_path / "ivf", "ivf-flat")
    broken = {name: shutil.copytree(ivf, tmp_path / name) for name in ("old", "cut", "bad")}
    data = json.loads((broken["old"] / MANIFEST_FILE).read_text())
    del data["trained_count"]  # an index from before the training record
    (broken["old"] / MANIFEST_FILE).write_text(json.dumps(data))
    blob = (ivf / INDEX_FILE).read_bytes()
    (broken["cut"] / INDEX_FILE).write_bytes(blob[: len(blob) // 2])  # truncated
    (broken["bad"] / MANIFEST_FILE).write_text("{not json")
    reasons = {"old": "no training record", "cut": "index file cannot be read",
               "bad": "manifest is not valid"}  # fmt: skip
    for name, path in broken.items():
        update = update_index(path, entries(range(N)), vectors, manifest(N), ann)
        assert update.mode == REBUILT and reasons[name] in update.reason, update.reason


def test_rebuild_rule() -> None:
    rule = RebuildRule()
    trained = QuantizerFit(1000, 0.5, 1.2)
    assert rule.reason(trained, QuantizerFit(1900, 0.55, 1.3)) is None
    assert "grew" in (rule.reason(trained, QuantizerFit(2001, 0.5, 1.2)) or "")
    assert "shrank" in (rule.reason(trained, QuantizerFit(499, 0.5, 1.2)) or "")
    assert "drifted" in (rule.reason(trained, QuantizerFit(1000, 0.6, 1.2)) or "")
    assert rule.reason(trained, QuantizerFit(1000, 0.5, 2.5)) is None  # imbalance: off by default
    strict = RebuildRule(max_imbalance_rise=1.0)
    assert "unbalanced" in (strict.reason(trained, QuantizerFit(1000, 0.5, 2.5)) or "")
    # All duplicates: a zero residual at training does not make every change "drift".
    assert rule.reason(QuantizerFit(1000, 0.0, 1.0), QuantizerFit(1000, 1e-12, 1.0)) is None
    for bad in ({"max_growth": -1}, {"min_shrink": 1.0}, {"max_residual_rise": "x"},
                {"max_imbalance_rise": True}, {"min_shrink": float("nan")}):  # fmt: skip
        with pytest.raises(IndexingError, match="rebuild rule"):
            RebuildRule(**bad)  # type: ignore[arg-type]


def test_a_prebuilt_index_is_written_only_alone(tmp_path: Path) -> None:
    vectors = clustered(100, seed=1)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(D))
    index.add_with_ids(vectors, np.arange(100, dtype=np.int64))
    with pytest.raises(ValueError, match="prebuilt index"):
        write_index(tmp_path / "a", entries(range(100)), vectors, manifest(100), index=index,
                    ann=AnnConfig())  # fmt: skip
    with pytest.raises(ValueError, match="prebuilt index"):
        write_index(tmp_path / "b", entries(range(99)), vectors[:99], manifest(99), index=index)


def test_manifest_training_fields_round_trip() -> None:
    recorded = manifest(10, index_type="ivf-flat", factory="IVF1,Flat",
                        search_params=(("nprobe", 1),), trained_count=10, train_residual=0.25,
                        train_imbalance=1.5)  # fmt: skip
    assert Manifest.from_json(recorded.to_json()) == recorded
    assert "trained_count" not in manifest(10).to_json()  # exact Flat: the manifest of before
    data = json.loads(recorded.to_json())
    for key, bad in (("trained_count", 1.5), ("train_residual", "x"), ("train_imbalance", True)):
        with pytest.raises(ValueError, match=f"manifest {key} must be"):
            Manifest.from_json(json.dumps({**data, key: bad}))


def test_tuning_counts_equal_vectors_as_found() -> None:
    """Repeated captions give equal vectors: which of them exact search lists first is arbitrary,
    so an updated index whose lists hold them in another order must still reach recall 1."""
    distinct = clustered(50, seed=20)
    base = np.repeat(distinct, 20, axis=0)  # (1000, D): every vector 20 times
    ids = np.arange(len(base), dtype=np.int64)
    plan = plan_for("ivf-flat", len(base), D)
    index = build_ann_index(plan, ids[::-1].copy(), np.ascontiguousarray(base[::-1]))  # reversed
    queries = distinct[:10] + 0  # (10, D): each has 20 equal neighbours in the index
    result = tune(index, "ivf-flat", plan.nlist, ids, base, queries, 1.0)
    assert result.recall_at_10 == 1.0
