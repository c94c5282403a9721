"""Beam's DaskRunner on a real dask.distributed cluster (two worker processes on loopback): each
stock bug, our runner against the in-process runner (FnApiRunner), and the caption job.

The stock runner's tests assert that each bug is still there. When a Beam release fixes one, its
test fails with "stock bug fixed: drop the workaround" and names the fix in
pipelines/runners/dask.py to remove.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics import Metrics
from apache_beam.runners.runner import PipelineResult
from apache_beam.transforms.window import GlobalWindows

from captioning.api import Captioner, CaptionerOptions
from captioning.archives.synthetic.writer import ArchiveConfig, write_archive
from pipelines.caption.pipeline import CaptionConfig, RunSummary, run_caption
from pipelines.errors import JobFailed
from pipelines.options import pipeline_options
from tests.pipelines.runners.dask_cluster import WORKERS, job_rows

distributed = pytest.importorskip("distributed", reason="needs the dask extra: '.[dask]'")
pytestmark = pytest.mark.slow

NAMESPACE = "test"
BAD = "bad"
IN_PROCESS: list[str] = []  # the code's default runner, FnApiRunner


def stock_fixed(fix: str) -> str:
    return f"stock bug fixed: drop the workaround ({fix}) in pipelines/runners/dask.py"


# --------------------------------------------------------------------------- tiny pipelines


class Split(beam.DoFn):
    """Multiples of 5 -> BAD, the rest -> the main output; counted."""

    def process(self, x: int) -> Iterator[Any]:
        Metrics.counter(NAMESPACE, "seen").inc()
        if x % 5 == 0:
            Metrics.counter(NAMESPACE, "bad").inc()
            yield beam.pvalue.TaggedOutput(BAD, x)
        else:
            yield x


class Buffer(beam.DoFn):
    """Emits a bundle's elements from finish_bundle, as file sinks and RunInference do."""

    def start_bundle(self) -> None:
        self._held: list[Any] = []

    def process(self, x: Any) -> None:
        self._held.append(x)

    def finish_bundle(self) -> Iterator[Any]:
        for x in self._held:
            yield GlobalWindows.windowed_value(x)


class Record(beam.DoFn):
    """Passes elements on and writes each bundle's to DIR/<pid>-<uuid>.json: a sink that shows
    which process and which bundle ran each element."""

    def __init__(self, directory: Path):
        self._dir = str(directory)

    def start_bundle(self) -> None:
        self._seen: list[Any] = []

    def process(self, x: Any) -> Iterator[Any]:
        Metrics.counter(NAMESPACE, "recorded").inc()
        self._seen.append(x)
        yield x

    def finish_bundle(self) -> None:
        if self._seen:
            os.makedirs(self._dir, exist_ok=True)
            path = os.path.join(self._dir, f"{os.getpid()}-{uuid.uuid4().hex}.json")
            with open(path, "w") as f:
                json.dump(self._seen, f)


def tags(p: beam.Pipeline, out: Path) -> None:
    split = p | beam.Create(range(20)) | beam.ParDo(Split()).with_outputs(BAD, main="good")
    good = split.good | "Good" >> beam.Map(lambda x: ("good", x))
    bad = split[BAD] | "Bad" >> beam.Map(lambda x: ("bad", x))
    _ = (good, bad) | beam.Flatten() | "All" >> beam.ParDo(Record(out / "all"))


def two_sinks(p: beam.Pipeline, out: Path) -> None:
    numbers = p | beam.Create(range(20))
    _ = numbers | "A" >> beam.ParDo(Record(out / "a"))
    _ = numbers | "Times10" >> beam.Map(lambda x: 10 * x) | "B" >> beam.ParDo(Record(out / "b"))


def finish_bundle(p: beam.Pipeline, out: Path) -> None:
    _ = p | beam.Create(range(20)) | beam.ParDo(Buffer()) | beam.ParDo(Record(out / "all"))


def side_input(p: beam.Pipeline, out: Path) -> None:
    side = p | "Side" >> beam.Create([100]) | "Touch" >> beam.ParDo(Record(out / "touch"))
    _ = (
        p
        | beam.Create(range(8))
        | "Add" >> beam.Map(lambda x, s: x + s, beam.pvalue.AsSingleton(side))
        | "Sum" >> beam.ParDo(Record(out / "sum"))
    )


def text_sink(p: beam.Pipeline, out: Path) -> None:
    _ = p | beam.Create(range(20)) | beam.Map(str) | beam.io.WriteToText(str(out / "text" / "part"))


def one_step(p: beam.Pipeline, out: Path) -> None:
    _ = p | beam.Create(range(20)) | beam.ParDo(Record(out / "all"))


def read_parquet(p: beam.Pipeline, out: Path) -> None:
    source = out / "input.parquet"
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"x": list(range(20))}), source, row_group_size=5)
    rows = p | beam.io.ReadFromParquet(str(source))
    _ = rows | beam.Map(lambda row: row["x"]) | beam.ParDo(Record(out / "all"))


Build = Callable[[beam.Pipeline, Path], None]
PIPELINES: dict[str, Build] = {
    f.__name__: f
    for f in (tags, two_sinks, finish_bundle, side_input, text_sink, one_step, read_parquet)
}


def run(build: Build, out: Path, beam_args: Sequence[str]) -> PipelineResult:
    p = beam.Pipeline(options=pipeline_options(beam_args))
    build(p, out)
    result = p.run()
    result.wait_until_finish()
    return result


def run_stock(build: Build, out: Path, cluster: Any, *flags: str) -> PipelineResult:
    """On Beam's own DaskRunner (its full path: `--runner DaskRunner` selects ours)."""
    address = f"--dask_client_address={cluster.scheduler_address}"
    args = ["--runner", "apache_beam.runners.dask.dask_runner.DaskRunner", address, *flags]
    p = beam.Pipeline(options=pipeline_options(args))
    build(p, out)
    try:
        result = p.run()
    except BaseException:  # the stock runner made its client the default one before failing
        distributed.default_client().close()
        raise
    try:
        result.wait_until_finish()
    finally:
        result.client.close()  # the stock runner never closes its client
    return result


def _value(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def recorded(out: Path) -> dict[str, list[Any]]:
    """Record sink -> every value it saw, sorted."""
    return {
        sink.name: sorted(_value(v) for f in sink.iterdir() for v in json.loads(f.read_text()))
        for sink in sorted(out.iterdir())
        if sink.is_dir() and sink.name != "text"
    }


def bundles(out: Path, sink: str) -> list[tuple[int, int]]:
    """(process id, elements) per bundle a Record sink saw."""
    return [
        (int(f.name.split("-")[0]), len(json.loads(f.read_text()))) for f in (out / sink).iterdir()
    ]


def written(out: Path) -> list[str]:
    """The text sink's lines, sorted."""
    folder = out / "text"
    files = [f for f in folder.iterdir() if f.is_file()] if folder.exists() else []
    return sorted(line for f in files for line in f.read_text().splitlines())


def leftovers(out: Path) -> list[str]:
    """Temporary folders a file sink left behind."""
    folder = out / "text"
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.exists() else []


def counters(result: PipelineResult) -> dict[str, int]:
    query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))
    totals: Counter[str] = Counter()
    for c in query["counters"]:
        totals[c.key.metric.name] += c.committed
    return dict(totals)


# --------------------------------------------------------------------------- the stock bugs


def test_stock_sends_every_element_to_every_tagged_output(dask_cluster, tmp_path: Path) -> None:
    run_stock(tags, tmp_path, dask_cluster)
    everything = sorted([("good", x) for x in range(20)] + [("bad", x) for x in range(20)])
    assert recorded(tmp_path) == {"all": everything}, stock_fixed("fix 1, tagged outputs")


def test_stock_drops_finish_bundle_outputs(dask_cluster, tmp_path: Path) -> None:
    run_stock(finish_bundle, tmp_path, dask_cluster)
    assert recorded(tmp_path) == {}, stock_fixed("fix 2, finish_bundle outputs")


def test_stock_file_sink_writes_an_empty_file_and_leaves_temporary_folders(
    dask_cluster, tmp_path: Path
) -> None:
    run_stock(text_sink, tmp_path, dask_cluster)
    assert written(tmp_path) == [], stock_fixed("fix 2, finish_bundle outputs")
    # InitializeWrite ran again for each of the three steps that read it as a side input.
    assert len(leftovers(tmp_path)) > 1, stock_fixed("fix 3, side inputs")


def test_stock_computes_a_side_input_again_in_every_task(dask_cluster, tmp_path: Path) -> None:
    run_stock(side_input, tmp_path, dask_cluster, "--dask_npartitions=4")
    runs = len(recorded(tmp_path)["touch"])
    assert runs > 1, stock_fixed("fix 3, side inputs")


def test_stock_runs_only_the_last_sink(dask_cluster, tmp_path: Path) -> None:
    run_stock(two_sinks, tmp_path, dask_cluster)
    only_b = {"b": [10 * x for x in range(20)]}
    assert recorded(tmp_path) == only_b, stock_fixed("fix 4, every step runs")


def test_stock_has_no_metrics(dask_cluster, tmp_path: Path) -> None:
    result = run_stock(one_step, tmp_path, dask_cluster)
    try:
        result.metrics()
    except NotImplementedError:
        return
    pytest.fail(stock_fixed("fix 5, metrics"))


def test_stock_cannot_read_files(dask_cluster, tmp_path: Path) -> None:
    try:
        run_stock(read_parquet, tmp_path, dask_cluster)
    except AttributeError as e:  # the Read's stand-in gave its consumer no bag
        assert "'NoneType' object has no attribute" in str(e)
        return
    pytest.fail(stock_fixed("fix 7, Read"))


def test_stock_puts_a_small_create_in_one_partition(dask_cluster, tmp_path: Path) -> None:
    run_stock(one_step, tmp_path, dask_cluster)
    assert len(bundles(tmp_path, "all")) == 1, stock_fixed("fix 6, partitions")


# --------------------------------------------------------------------------- our runner


@pytest.mark.parametrize("name", PIPELINES)
def test_ours_gives_the_in_process_runners_results(
    name: str, dask_beam_args: list[str], tmp_path: Path
) -> None:
    build = PIPELINES[name]
    local = run(build, tmp_path / "local", IN_PROCESS)
    ours = run(build, tmp_path / "dask", dask_beam_args)
    assert recorded(tmp_path / "dask") == recorded(tmp_path / "local")
    assert written(tmp_path / "dask") == written(tmp_path / "local")
    assert leftovers(tmp_path / "dask") == []
    assert counters(ours) == counters(local)


def test_ours_spreads_a_small_create_over_the_workers(
    dask_beam_args: list[str], tmp_path: Path
) -> None:
    from pipelines.runners.dask import PARTITIONS_PER_THREAD

    run(one_step, tmp_path, dask_beam_args)
    seen = bundles(tmp_path, "all")
    assert len(seen) == WORKERS * PARTITIONS_PER_THREAD, seen
    assert len({pid for pid, _ in seen}) == WORKERS, seen


# --------------------------------------------------------------------------- the caption job

FAST = CaptionerOptions(device="cpu", beam_size=1)


class CountImages:
    """on_model_load hook: each call of the loaded captioner writes how many images it captioned,
    and in which process, to a file in DIR."""

    def __init__(self, directory: Path):
        self._dir = str(directory)

    def __call__(self, captioner: Captioner) -> None:
        caption, directory = captioner.caption, self._dir

        def counted(inputs: Sequence[Any]) -> Any:
            with open(os.path.join(directory, f"{os.getpid()}-{uuid.uuid4().hex}"), "w") as f:
                f.write(str(len(inputs)))
            return caption(inputs)

        captioner.caption = counted  # type: ignore[method-assign]


class BreakModel:
    """on_model_load hook: the loaded captioner fails every image, like a device out of memory."""

    def __call__(self, captioner: Captioner) -> None:
        def fail(inputs: Sequence[Any]) -> Any:
            raise RuntimeError("CUDA out of memory (a test's broken model)")

        captioner.caption = fail  # type: ignore[method-assign]


@dataclass(frozen=True)
class CaptionRun:
    summary: RunSummary
    out: Path
    images_by_process: Counter[int]


def caption_run(archive: Path, model: Path, root: Path, beam_args: list[str]) -> CaptionRun:
    calls = root / "calls"
    calls.mkdir(parents=True)
    # Batches of 4 from shards of 6: each bundle's last batch leaves RunInference in
    # finish_bundle.
    config = CaptionConfig(
        input=str(archive), out=str(root / "out"), model=str(model), captioner=FAST, batch_size=4
    )
    summary = run_caption(config, beam_args, on_model_load=CountImages(calls))
    images: Counter[int] = Counter()
    for f in calls.iterdir():
        images[int(f.name.split("-")[0])] += int(f.read_text())
    return CaptionRun(summary, root / "out", images)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 images in 4 tar shards, and a corrupt JPEG (a fifth shard, failing at decode)."""
    root = tmp_path_factory.mktemp("dask-archive")
    write_archive(str(root), ArchiveConfig(images=24, shards=4, seed=5, format="tar", workers=1))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
    return root


@pytest.fixture(scope="module")
def local_run(archive, tiny_caption_model, tmp_path_factory) -> CaptionRun:
    return caption_run(archive, tiny_caption_model, tmp_path_factory.mktemp("local"), IN_PROCESS)


@pytest.fixture(scope="module")
def dask_run(archive, tiny_caption_model, tmp_path_factory, dask_beam_args) -> CaptionRun:
    return caption_run(archive, tiny_caption_model, tmp_path_factory.mktemp("dask"), dask_beam_args)


def test_caption_job_on_dask_writes_the_in_process_runners_rows(
    local_run: CaptionRun, dask_run: CaptionRun
) -> None:
    ours, expected = job_rows(dask_run.out), job_rows(local_run.out)
    assert (len(expected["captions"]), len(expected["failures"])) == (24, 1)
    assert ours == expected


def test_caption_job_on_dask_counts_like_the_in_process_runner(
    local_run: CaptionRun, dask_run: CaptionRun
) -> None:
    def counts(s: RunSummary) -> tuple[Any, ...]:
        return s.read, s.captioned, s.failed, s.failed_by_stage

    assert counts(dask_run.summary) == counts(local_run.summary)
    assert (dask_run.summary.read, dask_run.summary.captioned) == (25, 24)
    assert dask_run.summary.failed_by_stage["decode"] == 1
    assert set(dask_run.summary.stage_seconds) == set(local_run.summary.stage_seconds)


def test_caption_job_on_dask_spreads_images_over_worker_processes(dask_run: CaptionRun) -> None:
    by_process = dask_run.images_by_process
    assert sum(by_process.values()) == 24, by_process
    assert os.getpid() not in by_process, "the images were captioned in the test process"
    assert len(by_process) > 1, f"one worker process captioned every image: {by_process}"


def test_caption_job_on_dask_leaves_only_its_parts(dask_run: CaptionRun) -> None:
    for table in ("captions", "failures"):
        names = sorted(p.name for p in (dask_run.out / table).iterdir())
        assert names and all(n.startswith("part-") and n.endswith(".parquet") for n in names), names


def test_a_broken_model_stops_the_caption_job_on_dask(
    archive: Path, tiny_caption_model: Path, tmp_path: Path, dask_beam_args: list[str]
) -> None:
    # A worker's ModelBrokenError reaches run_caption through dask, which re-raises it here.
    config = CaptionConfig(
        input=str(archive),
        out=str(tmp_path / "out"),
        model=str(tiny_caption_model),
        captioner=FAST,
        batch_size=1,
    )
    with pytest.raises(JobFailed, match="stopped early: .*CUDA out of memory"):
        run_caption(config, dask_beam_args, on_model_load=BreakModel())
