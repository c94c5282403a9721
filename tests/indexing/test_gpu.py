"""Tests for indexing.gpu and the GPU branch of indexing.ann.build_ann_index.

There is no GPU here and faiss-cpu lacks the GPU classes, so the GPU branch runs against a fake
GPU API whose "GPU" indexes are CPU clones: it checks which branch is taken, that what is
filled on the "GPUs" comes back through index_gpu_to_cpu, and that the result equals the CPU
build. It does not show that faiss-gpu behaves the same on real hardware.
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from indexing.ann import build_ann_index, plan_for
from indexing.errors import IndexingError
from indexing.gpu import ENV_VAR, gpu_available, gpu_count, gpu_wanted
from indexing.tuning import search_with

N, D = 3000, 16


def vectors(n: int = N, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)  # (n, D)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class FakeGpus:
    """faiss's GPU API on the CPU: clones stand in for GPU indexes, and every call is logged."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, count: int = 1) -> None:
        self.calls: list[tuple[str, str]] = []
        self.on_gpus: list[faiss.Index] = []
        self.back: list[faiss.Index] = []
        monkeypatch.setattr(faiss, "get_num_gpus", lambda: count)
        monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
        monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", self.to_gpus, raising=False)
        monkeypatch.setattr(faiss, "index_gpu_to_cpu", self.to_cpu, raising=False)
        monkeypatch.delenv(ENV_VAR, raising=False)

    def to_gpus(self, index: faiss.Index, co: object = None, ngpu: int = -1) -> faiss.Index:
        self.calls.append(("to_gpus", type(faiss.downcast_index(index)).__name__))
        clone = faiss.clone_index(index)
        self.on_gpus.append(clone)
        return clone

    def to_cpu(self, index: faiss.Index) -> faiss.Index:
        assert any(index is g for g in self.on_gpus), "index_gpu_to_cpu got a CPU index"
        self.calls.append(("to_cpu", type(faiss.downcast_index(index)).__name__))
        clone = faiss.clone_index(index)
        self.back.append(clone)
        return clone


def test_faiss_cpu_has_no_gpu_path() -> None:
    if hasattr(faiss, "StandardGpuResources"):
        pytest.skip("faiss-gpu is installed here")
    assert gpu_count() == 0 and not gpu_available()


@pytest.mark.parametrize("kind", ["ivf-flat", "ivf-sq8"])
def test_gpu_branch_trains_and_adds_on_the_gpus_and_comes_back(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = vectors()
    ids = np.arange(N, dtype=np.int64) * 3 + 1
    plan = plan_for(kind, N, D)
    on_cpu = build_ann_index(plan, ids, x, seed=0)
    fake = FakeGpus(monkeypatch)
    assert gpu_available()
    built = build_ann_index(plan, ids, x, seed=0)
    inner = "IndexIVFFlat" if kind == "ivf-flat" else "IndexIVFScalarQuantizer"
    assert fake.calls == [("to_gpus", "IndexFlat"), ("to_gpus", inner), ("to_cpu", inner)]
    assert built is fake.back[-1]  # what is written is index_gpu_to_cpu's result
    ivf = faiss.extract_index_ivf(built)
    assert ivf.clustering_index is None  # the k-means index is not kept
    assert ivf.direct_map.type == faiss.DirectMap.Hashtable  # set again after the copy back
    built.remove_ids(faiss.IDSelectorArray(2, faiss.swig_ptr(ids[:2].copy())))
    on_cpu.remove_ids(faiss.IDSelectorArray(2, faiss.swig_ptr(ids[:2].copy())))
    # Same seed and k-means parameters on either path: the same index.
    queries = vectors(50, seed=1)
    params = {"nprobe": plan.nlist or 1}
    got_scores, got = search_with(built, kind, params, queries, 10)
    want_scores, want = search_with(on_cpu, kind, params, queries, 10)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-6)


def test_ivf_pq_trains_on_the_gpus_and_adds_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeGpus(monkeypatch)
    x = vectors(N)
    built = build_ann_index(plan_for("ivf-pq", N, D), np.arange(N, dtype=np.int64), x)
    assert fake.calls == [("to_gpus", "IndexFlat")] and built.ntotal == N


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_nothing_to_train_stays_on_the_cpu(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeGpus(monkeypatch)
    built = build_ann_index(plan_for(kind, 200, D), np.arange(200, dtype=np.int64), vectors(200))
    assert fake.calls == [] and built.ntotal == 200


@pytest.mark.parametrize("value", ["0", "false", "off", " No "])
def test_the_variable_forces_the_cpu(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeGpus(monkeypatch)
    monkeypatch.setenv(ENV_VAR, value)
    assert not gpu_wanted() and not gpu_available()
    build_ann_index(plan_for("ivf-flat", N, D), np.arange(N, dtype=np.int64), vectors())
    assert fake.calls == []


def test_no_gpu_found_or_a_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeGpus(monkeypatch, count=0)
    monkeypatch.setenv(ENV_VAR, "1")
    assert gpu_wanted() and not gpu_available()  # faiss-gpu without a GPU: the CPU
    monkeypatch.setenv(ENV_VAR, "maybe")
    with pytest.raises(IndexingError, match=f"{ENV_VAR}='maybe' is not understood: set 0"):
        gpu_available()
