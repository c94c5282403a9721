"""Beam's DaskRunner, fixed where it fails us: a batch Beam pipeline -> tasks on a Dask cluster.

`--runner DaskRunner` selects this runner (`pipelines.options` maps the name here; Beam's own
stays reachable as `apache_beam.runners.dask.dask_runner.DaskRunner`). Beam's DaskOptions apply:
`--dask_client_address tcp://HOST:8786` (none: Beam starts a LocalCluster in this process, closed
with the job), `--dask_npartitions N` or `--dask_partition_size N`.

The stock runner (Beam 2.77, apache_beam/runners/dask/) gives wrong results for the caption job.
This module replaces the parts that do, each fix for one stock bug; tests/pipelines/runners/
test_dask.py shows each bug on the stock runner and says "stock bug fixed: drop the workaround"
once a Beam release fixes it:

1. Tagged outputs: every output of a multi-output ParDo received every element (bags were looked
   up by producing step, and tags were dropped). A ParDo's bag now holds (tag, value) pairs and
   each PCollection selects its own tag.
2. finish_bundle outputs were dropped (collected before finish_bundle ran): every file sink
   (WriteToParquet, WriteToText) wrote empty files, and RunInference lost each bundle's last batch.
3. Side inputs were computed again inside every consuming task, outside the job's graph, so
   their upstream steps ran again (each WriteToText/WriteToParquet left extra temporary folders).
   They are now dependencies in the job's graph, computed once.
4. Only the last-visited step's bag was computed: of two sinks, one never ran. Every ParDo's
   bundles now report to the client, so every step runs.
5. `result.metrics()` raised NotImplementedError. Each bundle runs with a Beam MetricsContainer
   and returns its cumulative updates; the result commits them when the job has finished.
6. A Create of fewer than 128 elements made one partition, so one worker did all the work. The
   default is now PARTITIONS_PER_THREAD partitions per worker thread of the cluster.
7. beam.io.Read (ReadFromParquet, ReadFromText) had no translation: a job reading files failed
   with "'NoneType' object has no attribute 'map'". The source is now split into
   bundles of about READ_BUNDLE_BYTES, read one partition per bundle (at most npartitions).

As with the stock runner: bounded, globally windowed pipelines without state or timers; a
DoFn's setup and teardown run once per bundle (one per partition); Reshuffle does not
repartition, so a job's parallelism is set where its elements are created.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

import dask
import dask.bag as db
import distributed
from apache_beam import pvalue
from apache_beam.metrics.execution import MetricsContainer, MetricUpdates
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pipeline import AppliedPTransform, Pipeline, PipelineVisitor
from apache_beam.runners.common import DoFnRunner, Receiver
from apache_beam.runners.dask import dask_runner, overrides, transform_evaluator
from apache_beam.runners.direct.direct_metrics import DirectMetrics
from apache_beam.runners.runner import PipelineResult, PipelineState
from apache_beam.runners.worker import statesampler
from apache_beam.transforms.core import Windowing
from apache_beam.transforms.sideinputs import SideInputMap
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.counters import CounterFactory
from apache_beam.utils.windowed_value import WindowedValue

logger = logging.getLogger(__name__)

PARTITIONS_PER_THREAD = 2  # fix 6: a little slack for uneven shards, few per-bundle setups
METRICS = "imgindex.dask.metrics"  # the tag of a bundle's metric updates among its outputs
READ_BUNDLE_BYTES = 64 << 20  # fix 7: a source's split size (Parquet splits by row group)

Tagged = tuple[Any, Any]  # (output tag, None for the main output; value)


class _Collect(Receiver):
    """One output tag's receiver: appends (tag, value) to its bundle's outputs."""

    def __init__(self, tag: str | None, outputs: list[Tagged]):
        self._tag, self._outputs = tag, outputs

    def receive(self, windowed_value: WindowedValue) -> None:
        # Values leave their window here, as the stock runner's main outputs do (global window).
        self._outputs.append((self._tag, windowed_value.value))


class _Receivers(dict):
    """Tag -> receiver, made on first use; one per bundle (fix 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: list[Tagged] = []

    def __missing__(self, tag: str | None) -> _Collect:
        receiver = self[tag] = _Collect(tag, self.outputs)
        return receiver


class _ParDoSpec:
    """What a bundle of one ParDo needs; pickled into its tasks. A plain class, so that dask
    does not search it for collections."""

    def __init__(self, applied: AppliedPTransform, side_views: list[tuple[type, dict]]):
        transform = applied.transform
        args, kwargs = transform.raw_side_inputs
        main_input = next(iter(applied.main_inputs.values()))
        self.step = applied.full_label
        self.fn, self.args, self.kwargs = transform.fn, list(args), kwargs
        try:
            self.windowing = main_input.windowing
        except AttributeError:  # the stock stand-in for Read declares none: the global window
            self.windowing = Windowing(GlobalWindows())
        self.side_views = side_views  # (view class, view options) per side input, in order
        self._token = uuid.uuid4().hex  # a fresh key per run: never a result left by another

    def __dask_tokenize__(self) -> str:
        return self._token


def _run_bundle(
    items: Iterable[Any], spec: _ParDoSpec, side_parts: list[list[list[Any]]]
) -> list[Tagged]:
    """One partition of a ParDo -> its outputs as (tag, value), then (METRICS, updates)."""
    windowfn = spec.windowing.windowfn
    side_inputs = [
        SideInputMap(
            view,
            options,
            [transform_evaluator.get_windowed_value(v, windowfn) for part in parts for v in part],
        )
        for (view, options), parts in zip(spec.side_views, side_parts, strict=True)
    ]
    receivers = _Receivers()
    runner = DoFnRunner(
        spec.fn, spec.args, spec.kwargs, side_inputs, spec.windowing, receivers, step_name=spec.step
    )
    # Fix 5: Metrics.counter(...).inc() reports to the container of this thread's current state.
    container = MetricsContainer(spec.step)
    sampler = statesampler.StateSampler(spec.step, CounterFactory())
    previous = statesampler.get_current_tracker()
    statesampler.set_current_tracker(sampler)
    try:
        with sampler.scoped_state(spec.step, "process", metrics_container=container):
            runner.setup()
            runner.start()
            for item in items:
                runner.process(transform_evaluator.get_windowed_value(item, windowfn))
            runner.finish()  # fix 2: its outputs join the bundle's before they are returned
            runner.teardown()
    finally:
        statesampler.set_current_tracker(previous)
    return [*receivers.outputs, (METRICS, container.get_cumulative())]


def _select(outputs: list[Tagged], tag: Any) -> list[Any]:
    return [value for t, value in outputs if t == tag]


class _ParDo(transform_evaluator.ParDo):
    """A ParDo whose bag holds (tag, value) pairs (fixes 1-3, 5)."""

    def apply(self, input_bag: db.Bag, side_inputs: Any = None) -> db.Bag:
        sides: list[tuple[pvalue.AsSideInput, db.Bag]] = side_inputs or []
        # Beam's runners all build a SideInputMap from these private view options.
        views = [(type(si), si._view_options()) for si, _ in sides]
        # Fix 3: each side input's partitions are task dependencies, computed once in the graph.
        parts = [bag.to_delayed(optimize_graph=False) for _, bag in sides]
        return input_bag.map_partitions(_run_bundle, _ParDoSpec(self.applied, views), parts)


def _read_bundles(bundles: Iterable[Any]) -> list[Any]:
    return [
        value
        for b in bundles
        for value in b.source.read(b.source.get_range_tracker(b.start_position, b.stop_position))
    ]


class _Read(transform_evaluator.DaskBagOp):
    """A bounded source, read in bundles (fix 7)."""

    def apply(self, input_bag: Any, side_inputs: Any = None) -> db.Bag:
        bundles = list(self.transform.source.split(desired_bundle_size=READ_BUNDLE_BYTES))
        most = self.bag_kwargs.get("npartitions") or len(bundles)
        return db.from_sequence(
            bundles, npartitions=max(1, min(len(bundles), most))
        ).map_partitions(_read_bundles)


# The stock translations, with our ParDo, plus Read. The stock runner replaces beam.io.Read with
# its private _Read before translating; this is the only name of it.
TRANSLATIONS = {
    **{
        kind: _ParDo if op is transform_evaluator.ParDo else op
        for kind, op in transform_evaluator.TRANSLATIONS.items()
    },
    overrides._Read: _Read,
}


class _BagVisitor(PipelineVisitor):
    """Translates each leaf transform: a bag per PCollection (fix 1), and a metrics bag per
    ParDo (fixes 4, 5)."""

    def __init__(self, bag_kwargs: dict[str, int]):
        self.bags: dict[pvalue.PValue, db.Bag] = {}
        self.metrics: list[db.Bag] = []
        self._bag_kwargs = bag_kwargs

    def visit_transform(self, transform_node: AppliedPTransform) -> None:
        kind = TRANSLATIONS.get(type(transform_node.transform), transform_evaluator.NoOp)
        op = kind(transform_node, bag_kwargs=self._bag_kwargs)
        inputs = [self.bags[p] for p in transform_node.inputs if p in self.bags]
        if isinstance(op, transform_evaluator.Flatten):
            input_bag: Any = inputs
        else:
            input_bag = inputs[0] if len(inputs) == 1 else (inputs or None)
        if not isinstance(op, _ParDo):
            bag = op.apply(input_bag)
            for pcoll in transform_node.outputs.values():
                self.bags[pcoll] = bag
            return
        sides = [(si, self.bags[si.pvalue]) for si in transform_node.side_inputs]
        tagged = op.apply(input_bag, sides)
        for tag, pcoll in transform_node.outputs.items():
            self.bags[pcoll] = tagged.map_partitions(_select, tag)
        self.metrics.append(tagged.map_partitions(_select, METRICS))


class DaskRunner(dask_runner.DaskRunner):
    """Beam's DaskRunner with the fixes in this module's docstring."""

    def run_pipeline(self, pipeline: Pipeline, options: PipelineOptions) -> DaskResult:
        dask_options = options.view_as(dask_runner.DaskOptions).get_all_options(
            drop_default=True, current_only=True
        )
        bag_kwargs = {
            k: dask_options.pop(k) for k in ("npartitions", "partition_size") if k in dask_options
        }
        # Not the process's default dask scheduler: running a job changes nothing else.
        client = distributed.Client(**dask_options, set_as_default=False)
        if not bag_kwargs:  # fix 6
            threads = sum(client.nthreads().values())
            bag_kwargs["npartitions"] = max(threads, 1) * PARTITIONS_PER_THREAD
        logger.info("Dask job on %s, Create partitions %s", client.scheduler.address, bag_kwargs)
        pipeline.replace_all(overrides.dask_overrides())
        visitor = _BagVisitor(bag_kwargs)
        # GroupByKey shuffles through tasks: a cluster's workers share no disk. (The stock runner
        # gets this by making its client the process's default.)
        with dask.config.set({"dataframe.shuffle.method": "tasks"}):
            pipeline.visit(visitor)
        return DaskResult(client, client.compute(visitor.metrics))


class DaskResult(PipelineResult):
    """A running Dask job: waits for every step, then holds its committed metrics."""

    def __init__(self, client: distributed.Client, futures: list[distributed.Future]):
        super().__init__(PipelineState.RUNNING)
        self._client, self._futures = client, futures
        self._metrics = DirectMetrics()

    def wait_until_finish(self, duration: int | None = None) -> str:
        """Waits `duration` milliseconds (None: to the end); a finished job closes its client.

        Raises:
            The first exception a step raised (dask re-raises it here with its traceback).
        """
        if PipelineState.is_terminal(self._state):
            return self._state
        try:
            with self._client.as_current():
                distributed.wait(self._futures, None if duration is None else duration / 1000)
        except TimeoutError:
            return self._state
        try:
            for bundles in self._client.gather(self._futures):
                for updates in bundles:
                    self._commit(updates)
        except BaseException:
            self._state = PipelineState.FAILED
            raise
        finally:
            self._client.close()
        self._state = PipelineState.DONE
        return self._state

    def _commit(self, updates: MetricUpdates) -> None:
        # Every bundle's result was computed once and kept: attempted equals committed.
        self._metrics.commit_logical(None, updates)
        self._metrics.commit_physical(None, updates)

    def cancel(self) -> str:
        self._client.cancel(self._futures)
        self._client.close()
        self._state = PipelineState.CANCELLED
        return self._state

    def metrics(self) -> DirectMetrics:
        return self._metrics
