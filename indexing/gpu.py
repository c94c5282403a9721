"""A CPU FAISS index -> the same index trained and filled on the GPUs when faiss-gpu and a GPU are
present (gpu_available), and back on the CPU before anything writes it.

faiss-cpu has ``get_num_gpus`` (it returns 0) and the Python helper ``index_cpu_to_all_gpus``, but
not the GPU classes; faiss-gpu has ``StandardGpuResources``, ``index_cpu_to_gpu`` and
``index_gpu_to_cpu`` too. Two uses (indexing.ann.build_ann_index):

- ``kmeans_on_gpus(ivf)``: the coarse quantizer's k-means (``ivf.train``) assigns its training
  points through a flat index on every GPU (FAISS's ``IndexIVF.clustering_index``), with the CPU
  index's own clustering parameters (seed, spherical), so the trained index stays a CPU index.
  Works for every IVF type, the fast-scan PQ of ivf-pq included.
- ``add_on_gpus(index, vectors, ids)``: clones a trained IVF-Flat or IVF-SQ8 index to the GPUs,
  adds the vectors there (assignment and encoding), and returns ``index_gpu_to_cpu`` of it. GPU
  IVF indexes have no direct map: the caller sets the hashtable after the copy back.

IMGINDEX_FAISS_GPU=0 forces the CPU path (1 or unset: the GPU when there is one). The GPU path is
tested here against a fake GPU API only (tests/indexing/test_gpu.py); it has not run on a GPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import faiss
import numpy as np

from indexing.errors import IndexingError

logger = logging.getLogger(__name__)

ENV_VAR: Final = "IMGINDEX_FAISS_GPU"
# What a faiss build needs to have for the GPU path.
GPU_SYMBOLS: Final = ("get_num_gpus", "StandardGpuResources", "index_cpu_to_all_gpus",
                      "index_gpu_to_cpu")  # fmt: skip
_OFF, _ON = ("0", "false", "no", "off"), ("", "1", "true", "yes", "on")


def gpu_wanted() -> bool:
    """Whether IMGINDEX_FAISS_GPU allows the GPU (unset: yes).

    Raises:
        IndexingError: the variable holds something else than 0/1 (or false/true, no/yes, off/on).
    """
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value in _OFF:
        return False
    if value in _ON:
        return True
    raise IndexingError(
        f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not understood: set 0 to build FAISS indexes on "
        "the CPU, 1 (or leave it unset) to use a GPU when faiss-gpu finds one"
    )


def gpu_count() -> int:
    """GPUs faiss can use: 0 for a faiss build without the GPU classes (faiss-cpu)."""
    if not all(hasattr(faiss, name) for name in GPU_SYMBOLS):
        return 0
    return int(faiss.get_num_gpus())


def gpu_available() -> bool:
    """True when IMGINDEX_FAISS_GPU allows it and faiss-gpu sees at least one GPU."""
    return gpu_wanted() and gpu_count() > 0


@contextmanager
def kmeans_on_gpus(ivf: faiss.IndexIVF) -> Iterator[None]:
    """Within the block, ``ivf.train`` runs its k-means assignment on every GPU."""
    flat = faiss.IndexFlat(ivf.d, ivf.metric_type)  # the quantizer's metric: IP for ours
    on_gpus = faiss.index_cpu_to_all_gpus(flat)  # kept alive for the block
    ivf.clustering_index = on_gpus
    logger.info("training the %d-list quantizer on %d GPU(s)", ivf.nlist, gpu_count())
    try:
        yield
    finally:
        ivf.clustering_index = None  # type: ignore[assignment]  # stubs: Index, C++: a pointer


def add_on_gpus(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
    """A trained IVF-Flat/IVF-SQ8 CPU index + (N, D) vectors with (N,) ids -> a CPU index holding
    them, filled on the GPUs (no direct map: set it on the result)."""
    on_gpus = faiss.index_cpu_to_all_gpus(index)
    on_gpus.add_with_ids(vectors, ids)  # (N, D) with (N,) ids, on the GPUs
    logger.info("added %d vectors on %d GPU(s)", len(vectors), gpu_count())
    return faiss.index_gpu_to_cpu(on_gpus)
