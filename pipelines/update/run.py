"""`imgindex update`: tonight's listing + the collection's current version -> a new published
version that captioned only what changed.

    lock -> list + fingerprint shards -> plan job (Beam: diff by key, reuse by content hash)
         -> shrink guard -> choose work (--max-images) -> caption job (Beam, into the cache)
         -> catalog + embeddings (only new caption texts) + index -> publish -> retention

Nothing is visible to readers until the last step switches CURRENT, so a run killed anywhere
leaves the current version serving; the next run takes over the dead run's lock, and its plan
reuses every caption the dead run finished (the cache is keyed by sha256 and model version).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from captioning.archives.listing import list_shards
from captioning.archives.records import Shard
from captioning.records import CAPTION_SCHEMA, FAILURE_SCHEMA
from indexing.build import Manifest
from indexing.catalog import CATALOG_SCHEMA, PLAN_SCHEMA, SHARDS_SCHEMA, fingerprint
from indexing.collection import (
    CAPTIONS_DIR,
    CATALOG_FILE,
    FAILURES_DIR,
    RUNS_DIR,
    SHARDS_FILE,
    VERSION_FILE,
    VERSIONS_DIR,
    Collection,
    CollectionError,
    parquet_files,
)
from indexing.embed import resolve_embedder
from pipelines import imgindex_version
from pipelines.caption.pipeline import check_model
from pipelines.caption.summary import model_broken
from pipelines.errors import JobFailed, UsageError
from pipelines.options import pipeline_options
from pipelines.update.caption import build_captioning
from pipelines.update.config import UpdateConfig, UpdateCounts
from pipelines.update.plan import build_plan
from pipelines.update.publish import (
    EmbedderLoader,
    assemble_catalog,
    choose_work,
    embed_captions,
    index_entries,
    plan_counts,
    read_tables,
    work_items,
    write_version,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UpdateSummary:
    run_id: str
    counts: UpdateCounts
    version: str | None  # the version current after the run
    published: bool
    previous_version: str | None
    seconds: float
    model: str
    model_version: str
    took_over_lock: str | None = None
    note: str = ""
    stage_seconds: dict[str, float] = field(default_factory=dict)  # list, plan, caption, publish
    # How the published version's index was made: mode incremental/rebuilt, reason, index_type,
    # added, removed, seconds by step (indexing.incremental.IndexUpdate.report); empty when
    # nothing was published.
    index: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "counts": asdict(self.counts)}


def run_update(config: UpdateConfig, beam_args: list[str]) -> UpdateSummary:
    """Run one update of `config.collection` from `config.caption.input` (see the module doc).

    Raises:
        UsageError / InputError: bad input, before anything is published.
        CollectionError: the collection cannot be used (newer format, corrupt pointer, locked).
        JobFailed: more images failed tonight than --max-failure-rate allows (no publish).
    """
    started = time.perf_counter()
    shards = list_shards(config.caption.input)  # InputError when nothing matches
    caption_config, identity = check_model(config.caption)
    config = replace(config, caption=caption_config)
    embedder = resolve_embedder(config.embedder)
    col = Collection.open(config.collection, create=True)
    run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    with col.lock(timeout_s=config.lock_timeout_s) as lock:
        if col.fs.exists(col.join("work")):  # what a killed run left half-written; we hold the lock
            col.fs.rm(col.join("work"), recursive=True)
        night = _Night(col, config, run_id, shards, (identity.name, identity.version), beam_args)
        try:
            summary = night.run(embedder)
        except JobFailed as e:  # the run's record says why nothing was published
            record = {"run_id": run_id, "published": False, "failed": str(e)}
            col.write_json_atomic(f"{RUNS_DIR}/{run_id}.json", record)
            raise
        summary = replace(
            summary, seconds=time.perf_counter() - started, took_over_lock=lock.took_over
        )
        col.write_json_atomic(f"{RUNS_DIR}/{run_id}.json", summary.to_dict())
    return summary


class _Night:
    """One update's state between its steps."""

    def __init__(
        self,
        col: Collection,
        config: UpdateConfig,
        run_id: str,
        shards: list[Shard],
        model: tuple[str, str],
        beam_args: list[str],
    ):
        self.col, self.config, self.run_id, self.shards = col, config, run_id, shards
        self.model, self.beam_args = model, beam_args
        self.previous = col.current()
        self.stage_seconds: dict[str, float] = {}
        # The current version's shard fingerprints and record, read once (_check_previous
        # checks the tables are readable first).
        self.before: dict[str, str] = {}
        self.record: dict[str, Any] = {}
        self.index: dict[str, Any] = {}  # the published index's IndexUpdate.report()

    def run(self, embedder: Any) -> UpdateSummary:
        if self.previous:
            self._check_previous()
            table = read_tables([self.col.version_url(self.previous, SHARDS_FILE)], SHARDS_SCHEMA)
            sources, prints = table.column("source"), table.column("fingerprint")
            self.before = dict(zip(sources.to_pylist(), prints.to_pylist(), strict=True))
            self.record = self.col.read_json(f"{VERSIONS_DIR}/{self.previous}/{VERSION_FILE}",
                                             "version record")  # fmt: skip
        with self._timed("list"):
            fingerprints, changed, unchanged = self._fingerprint()
        if self._same_as_before(changed, unchanged):
            return self._summary(
                self._unchanged_counts(), published=False, note="nothing changed: no new version"
            )
        with self._timed("plan"):
            plan = self._plan(changed, unchanged)
        counts = plan_counts(plan)
        self._check_shrink(counts)
        work = choose_work(plan, self.config.max_images)
        with self._timed("caption"):
            if work.members:
                self._caption(work)
            captions, failures = self._tonights_results()
        catalog, done = assemble_catalog(plan, work, captions, failures)
        tally = self._counts(plan, counts, done, work, len(changed))
        self._check_failure_rate(tally)
        if self._nothing_to_do(tally):
            return self._summary(tally, published=False, note="nothing changed: no new version")
        with self._timed("publish"):
            name = self._publish(catalog, fingerprints, EmbedderLoader(embedder), tally)
        return self._summary(tally, published=True, version=name)

    @contextlib.contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.stage_seconds[stage] = round(time.perf_counter() - started, 3)

    # -- listing ---------------------------------------------------------------------------
    def _fingerprint(self) -> tuple[pa.Table, list[Shard], frozenset[str]]:
        rows, changed, unchanged = [], [], set()
        for shard in self.shards:
            fs, path = _fs(shard.uri)
            fp = fingerprint(fs.info(path))
            rows.append({"source": shard.uri, "kind": shard.kind, "fingerprint": fp})
            if self.before.get(shard.uri) == fp:
                unchanged.add(shard.uri)
            else:
                changed.append(shard)
        return pa.Table.from_pylist(rows, SHARDS_SCHEMA), changed, frozenset(unchanged)

    def _check_previous(self) -> None:
        """The current version's tables must be readable before anything builds on them."""
        for name, schema in ((CATALOG_FILE, CATALOG_SCHEMA), (SHARDS_FILE, SHARDS_SCHEMA)):
            url = self.col.version_url(self.previous, name)  # type: ignore[arg-type]
            try:
                with fsspec.open(url, "rb") as f:
                    names = pq.read_schema(f).names
            except (OSError, pa.ArrowException) as e:
                raise CollectionError(
                    f"{url} is corrupt ({e}): nothing was published; `imgindex rollback "
                    f"{self.col.root} --to VERSION` makes a kept version current"
                ) from e
            if missing := [n for n in schema.names if n not in names]:
                raise CollectionError(f"{url} lacks column(s) {', '.join(missing)}")

    def _same_as_before(self, changed: list[Shard], unchanged: frozenset[str]) -> bool:
        """Every shard of the previous version, and no other, with its old fingerprint, the same
        model, and nothing left for later by --max-images: the catalog stands as it is, so no
        job runs at all."""
        if not self.previous or changed:
            return False
        return (
            len(unchanged) == len(self.before)  # unchanged shards are among `before`'s
            and self.record.get("model_version") == self.model[1]
            and self.record.get("counts", {}).get("deferred", 1) == 0
        )

    def _unchanged_counts(self) -> UpdateCounts:
        live = int(self.record.get("counts", {}).get("catalog", 0))
        return UpdateCounts(
            listed=live, unchanged=live, shards_listed=len(self.shards), shards_read=0
        )

    # -- the two Beam jobs -------------------------------------------------------------------
    def _plan(self, changed: list[Shard], unchanged: frozenset[str]) -> pa.Table:
        prefix = self.col.url("work", self.run_id, "plan", "part")
        previous = self.col.version_url(self.previous, CATALOG_FILE) if self.previous else None
        cache = list(parquet_files(self.col, CAPTIONS_DIR))
        p = beam.Pipeline(options=pipeline_options(self.beam_args))
        build_plan(
            p, changed, unchanged, previous, cache, self.model[1], self.config.caption.read, prefix
        )
        p.run().wait_until_finish()
        plan = read_tables(list(parquet_files(self.col, f"work/{self.run_id}/plan")), PLAN_SCHEMA)
        self.col.fs.rm(self.col.join("work", self.run_id), recursive=True)
        return plan

    def _caption(self, work: Any) -> None:
        try:
            self._run_caption_job(work)
        except Exception as e:
            if (broken := model_broken(e)) is None:
                raise
            raise JobFailed(f"stopped early: {broken}; nothing was published") from e

    def _run_caption_job(self, work: Any) -> None:
        p = beam.Pipeline(options=pipeline_options(self.beam_args))
        build_captioning(
            p,
            work_items(work, self.shards),
            self.config.caption,
            self.run_id,
            self.model,
            self.col.url(CAPTIONS_DIR),
            self.col.url(FAILURES_DIR),
            self.config.flush_rows,
        )
        p.run().wait_until_finish()

    def _tonights_results(self) -> tuple[pa.Table, pa.Table]:
        def of_run(sub: str) -> list[str]:
            return [u for u in parquet_files(self.col, sub) if f"/{self.run_id}--" in u]

        return (
            read_tables(of_run(CAPTIONS_DIR), CAPTION_SCHEMA),
            read_tables(of_run(FAILURES_DIR), FAILURE_SCHEMA),
        )

    # -- checks ------------------------------------------------------------------------------
    def _check_shrink(self, counts: dict[str, int]) -> None:
        deleted = counts.get("deleted", 0)
        before = (
            deleted + counts.get("carry", 0) + counts.get("stale", 0) + counts.get("changed", 0)
        )
        if not self.previous or before == 0 or self.config.allow_shrink:
            return
        if deleted / before > self.config.shrink_limit:
            raise UsageError(
                f"the input lists {before - deleted} of the {before} catalogued images "
                f"({deleted} would be deleted, over {self.config.shrink_limit:.0%}): is a mount "
                "missing? Nothing was published; pass --allow-shrink if the deletions are meant"
            )

    def _check_failure_rate(self, tally: UpdateCounts) -> None:
        failed = tally.failed - tally.unavailable  # not ours: the archive never had them
        tried = tally.captioned + failed
        limit = self.config.caption.max_failure_rate
        if tried and failed / tried > limit:
            raise JobFailed(
                f"{failed} of {tried} images failed tonight ({failed / tried:.0%}), "
                f"over --max-failure-rate {limit}: nothing was published; the failures are in "
                f"{self.col.url(FAILURES_DIR)}"
            )

    def _nothing_to_do(self, tally: UpdateCounts) -> bool:
        if self.previous is None:
            return False
        moved = tally.new + tally.changed + tally.deleted + tally.captioned + tally.reused
        return moved == 0 and tally.failed == 0 and tally.shards_read == 0

    # -- publishing ----------------------------------------------------------------------------
    def _publish(
        self, catalog: pa.Table, fingerprints: pa.Table, loader: EmbedderLoader, tally: UpdateCounts
    ) -> str:
        embedder = loader.resolved
        rows, vectors, embedded = embed_captions(
            self.col, catalog, loader, self.run_id, self.config.embed_batch
        )
        entries = index_entries(catalog, rows)
        dimension = vectors.shape[1] if vectors.size else loader.get().dimension
        manifest = Manifest(
            embedder_name=embedder.name,
            embedder_sha256=embedder.sha256,
            dimension=dimension,
            count=len(entries),
            caption_files=(self.col.url(VERSIONS_DIR),),
            imgindex_version=imgindex_version(),
        )
        name = self.col.next_version()
        tmp = self.col.new_version_dir(name)
        update = write_version(self.col, tmp, catalog, fingerprints, entries, vectors, manifest,
                               self.config.ann, previous=self.previous)  # fmt: skip
        self.index = update.report() if update is not None else {}
        record = {
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "run_id": self.run_id,
            "previous": self.previous,
            "model": self.model[0],
            "model_version": self.model[1],
            "embedder": embedder.name,
            "embedded_tonight": embedded,
            "index": self.index,
            "counts": {
                "catalog": catalog.num_rows,
                "indexed": len(entries),
                "failed": catalog.num_rows - len(entries),
                **asdict(tally),
            },
        }
        self.col.publish(tmp, name, record)
        dropped = self.col.prune(self.config.keep)
        removed = self.col.clean_captions(keep_runs={self.run_id})
        logger.info("published %s; dropped versions %s and %d cache files", name, dropped, removed)
        return name

    def _counts(
        self, plan: pa.Table, counts: dict[str, int], done: dict[str, int], work: Any, read: int
    ) -> UpdateCounts:
        failed_reads = plan.filter(
            pc.and_(
                pc.equal(plan.column("status"), "failed"),
                pc.is_in(plan.column("action"), pa.array(["new", "changed", "duplicate"])),
            )
        ).num_rows
        reused = plan.filter(  # found in the caption cache by the plan's JoinBySha
            pc.and_(
                pc.and_(
                    pc.is_in(plan.column("action"), pa.array(["new", "changed", "stale"])),
                    pc.equal(plan.column("status"), "captioned"),
                ),
                pc.invert(plan.column("needs_caption")),
            )
        ).num_rows
        unavailable = plan.filter(
            pc.and_(
                pc.equal(plan.column("stage"), "source"),
                pc.is_in(plan.column("action"), pa.array(["new", "changed"])),
            )
        ).num_rows
        listed = sum(v for k, v in counts.items() if k != "deleted")
        return UpdateCounts(
            listed=listed,
            new=counts.get("new", 0),
            changed=counts.get("changed", 0),
            deleted=counts.get("deleted", 0),
            unchanged=counts.get("carry", 0) + counts.get("stale", 0),
            stale=counts.get("stale", 0),
            reused=reused,
            captioned=done["captioned"],
            failed=done["failed"] + failed_reads,
            unavailable=unavailable,
            deferred=work.deferred,
            duplicates=counts.get("duplicate", 0),
            shards_listed=len(self.shards),
            shards_read=read,
        )

    def _summary(
        self, tally: UpdateCounts, published: bool, version: str | None = None, note: str = ""
    ) -> UpdateSummary:
        return UpdateSummary(
            run_id=self.run_id,
            counts=tally,
            version=version if published else self.previous,
            published=published,
            previous_version=self.previous,
            seconds=0.0,
            model=self.model[0],
            model_version=self.model[1],
            note=note,
            stage_seconds=dict(self.stage_seconds),
            index=dict(self.index) if published else {},
        )


def _fs(uri: str) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(uri)


def summary_json(summary: UpdateSummary) -> str:
    return json.dumps(summary.to_dict(), indent=2)
