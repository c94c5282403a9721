"""Runner fixtures: a real dask.distributed cluster per module (see dask_cluster.py)."""

from tests.pipelines.runners.dask_cluster import dask_beam_args, dask_cluster

__all__ = ["dask_beam_args", "dask_cluster"]
