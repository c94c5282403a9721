"""A real dask.distributed cluster for tests, and what a test compares between two runs of a job.

Any test module can use the fixtures: tests/pipelines/runners/conftest.py imports them, and a
module elsewhere can do the same (`from tests.pipelines.runners.dask_cluster import dask_cluster,
dask_beam_args`). A job runs on the cluster with `run_caption(config, dask_beam_args)`, or
run_index / an update the same way, and its tables compare with `job_rows`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import pytest

if TYPE_CHECKING:
    from distributed import LocalCluster

WORKERS = 2
# Columns that differ between two runs of the same job on the same input.
PER_RUN = {"captions": ("run_id", "captioned_at"), "failures": ("run_id",)}


@contextmanager
def local_cluster(workers: int = WORKERS) -> Iterator[LocalCluster]:
    """`workers` worker processes of one thread each, on loopback only, without dashboards.

    Workers are spawned from this process, so they inherit its environment: the network guard
    (PYTHONPATH, tests/conftest.py), OMP_NUM_THREADS=1 and sys.path.
    """
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    try:
        yield cluster
    finally:
        cluster.close()


def dask_args(cluster: LocalCluster) -> list[str]:
    """Beam flags that run a job on `cluster` with our Dask runner (pipelines/runners/dask.py)."""
    return ["--runner", "DaskRunner", f"--dask_client_address={cluster.scheduler_address}"]


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[LocalCluster]:
    """One cluster per test module, closed after it even when a test fails."""
    pytest.importorskip("distributed", reason="needs the dask extra: pip install -e '.[dask]'")
    with local_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def dask_beam_args(dask_cluster: LocalCluster) -> list[str]:
    return dask_args(dask_cluster)


def job_rows(out: Path) -> dict[str, list[dict[str, Any]]]:
    """A caption job's rows by table (captions, failures), sorted, without per-run columns."""
    rows = {}
    for table, per_run in PER_RUN.items():
        found = pq.read_table(out / table).to_pylist()
        kept = [{k: v for k, v in row.items() if k not in per_run} for row in found]
        rows[table] = sorted(kept, key=lambda r: (r["source"], r["member"], r["key"]))
    return rows
