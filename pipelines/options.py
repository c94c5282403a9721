"""Beam pipeline options from the flags after `--`, with an offline-safe local default."""

from __future__ import annotations

from collections.abc import Sequence

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

# Beam's DirectRunner first tries the Prism runner, which downloads a binary from the internet;
# we run its in-process engine (FnApiRunner) directly. It honours --direct_num_workers and
# --direct_running_mode=multi_processing like DirectRunner does.
LOCAL_RUNNER = "FnApiRunner"

# --runner names (any case, as Beam matches them) that select our fixed version of a Beam runner
# (docs/runners.md). Beam's own stays reachable by its full path, e.g.
# apache_beam.runners.dask.dask_runner.DaskRunner.
RUNNERS = {
    "daskrunner": "pipelines.runners.dask.DaskRunner",
    "dask": "pipelines.runners.dask.DaskRunner",
}


def pipeline_options(beam_args: Sequence[str] | None) -> PipelineOptions:
    options = PipelineOptions(list(beam_args or []))
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = LOCAL_RUNNER
    elif isinstance(standard.runner, str):
        standard.runner = RUNNERS.get(standard.runner.lower(), standard.runner)
    return options
