"""pipelines.options: which runner a `--runner` name selects."""

from __future__ import annotations

import pytest
from apache_beam.options.pipeline_options import StandardOptions

from pipelines.options import LOCAL_RUNNER, pipeline_options

OURS = "pipelines.runners.dask.DaskRunner"
STOCK = "apache_beam.runners.dask.dask_runner.DaskRunner"


def runner(*args: str) -> str:
    return pipeline_options(list(args)).view_as(StandardOptions).runner


@pytest.mark.parametrize("name", ["DaskRunner", "daskrunner", "Dask", "dask"])
def test_dask_runner_names_select_our_fixed_runner(name: str) -> None:
    assert runner("--runner", name) == OURS


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), LOCAL_RUNNER),
        (("--runner", STOCK), STOCK),  # Beam's own, by its full path
        (("--runner", "DataflowRunner"), "DataflowRunner"),
        (("--runner=FlinkRunner",), "FlinkRunner"),
    ],
)
def test_other_runner_names_pass_through(args: tuple[str, ...], expected: str) -> None:
    assert runner(*args) == expected


def test_our_runner_takes_beams_dask_options() -> None:
    pytest.importorskip("distributed", reason="needs the dask extra: pip install -e '.[dask]'")
    from apache_beam.runners.dask.dask_runner import DaskOptions

    options = pipeline_options(
        ["--runner", "DaskRunner", "--dask_client_address=tcp://10.0.0.5:8786"]
    )
    assert options.view_as(DaskOptions).address == "tcp://10.0.0.5:8786"
