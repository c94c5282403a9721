"""The update's plan job: tonight's listing joined with the previous catalog -> a row per key.

    ListShards -> ReadPresences --------------------------+
    (changed or new shards only: hashes every member)      |
    PreviousCatalog -> CarryUnchanged (rows of unchanged   +-> KeyPresences/KeyPrevious
                       shards, never read)                 |   -> JoinByKey (CoGroupByKey)
    PreviousCatalog -------------------------------------- +   -> Decide (indexing.catalog.decide)
                                                                -> JoinBySha (the caption cache)
                                                                -> WritePlan (Parquet)

Both joins are Beam's CoGroupByKey, so the diff scales with the workers, not the launcher.
A row that needs a caption and whose bytes were captioned before by the same model version
(another key, another shard, or an update that was killed) takes that caption from the cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io.parquetio import ReadFromParquet, WriteToParquet
from apache_beam.metrics import Metrics

from captioning.archives.listing import iter_shard
from captioning.archives.records import ReadConfig, Shard, ShardEntry, source_fields
from indexing.catalog import PLAN_SCHEMA, Presence, decide, with_caption

NAMESPACE = "imgindex.update"


def presence_of(entry: ShardEntry) -> Presence:
    """A read entry -> its Presence (bytes hashed, not kept). Entries that belong to no sample
    (a broken shard: key "<shard>", "<truncated>", ...) get a key unique to their shard."""
    key = entry.key if not entry.key.startswith("<") else f"{entry.source}#{entry.key}"
    fields = source_fields(entry)  # the same url / alt_text / metadata as the captions table
    source = {"url": fields.url, "alt_text": fields.alt_text, "metadata": fields.metadata}
    if entry.data is None:
        reason = entry.error or "read_error"
        return Presence(key, entry.source, entry.member, error_type=reason, stage=entry.stage,
                        message=entry.message or reason, **source)  # fmt: skip
    digest = hashlib.sha256(entry.data).hexdigest()
    return Presence(key, entry.source, entry.member, digest, len(entry.data), **source)


class ReadPresences(beam.DoFn):
    """A changed (or new) shard -> a Presence dict per sample."""

    def __init__(self, config: ReadConfig):
        self._config = config
        self._read = Metrics.counter(NAMESPACE, "read")

    def process(self, shard: Shard) -> Iterator[dict[str, Any]]:
        for entry in iter_shard(shard, self._config):
            self._read.inc()
            yield presence_of(entry).to_dict()


def carried(row: dict[str, Any]) -> dict[str, Any]:
    """A catalog row of an unchanged shard as a Presence (the shard is not read)."""
    return Presence(row["key"], row["source"], row["member"], row["sha256"], row["size"],
                    carried=True).to_dict()  # fmt: skip


class Decide(beam.DoFn):
    """(key, {"previous": [row], "now": [presence]}) -> plan rows (indexing.catalog.decide)."""

    def __init__(self, model_version: str):
        self._model_version = model_version

    def process(self, item: tuple[str, dict[str, list]]) -> Iterator[dict[str, Any]]:
        key, groups = item
        for row in decide(key, groups["previous"], groups["now"], self._model_version):
            Metrics.counter(NAMESPACE, f"action_{row['action']}").inc()
            yield row


class Reuse(beam.DoFn):
    """(sha256, {"rows": [plan row], "cache": [caption row]}) -> the plan rows, with the cached
    caption filled in where one exists for these bytes and this model version."""

    def process(self, item: tuple[str, dict[str, list]]) -> Iterator[dict[str, Any]]:
        _, groups = item
        cached = sorted(groups["cache"], key=lambda c: (c.get("captioned_at") or "", c["run_id"]))
        for row in groups["rows"]:
            if cached:
                Metrics.counter(NAMESPACE, "reused").inc()
                yield with_caption(row, cached[0])
            else:
                yield row


def build_plan(
    p: beam.Pipeline,
    changed: list[Shard],
    unchanged_sources: frozenset[str],
    previous_catalog: str | None,
    caption_cache: list[str],
    model_version: str,
    read: ReadConfig,
    plan_prefix: str,
) -> None:
    """Add the plan steps to `p`: the plan rows go to `plan_prefix`-*.parquet."""
    previous = (
        p | "PreviousCatalog" >> ReadFromParquet(previous_catalog)
        if previous_catalog
        else p | "NoPreviousCatalog" >> beam.Create([])
    )
    read_now = (
        p
        | "ListShards" >> beam.Create(changed)
        | "Reshuffle" >> beam.Reshuffle()
        | "ReadPresences" >> beam.ParDo(ReadPresences(read))
    )
    carry = (
        previous
        | "OfUnchangedShards" >> beam.Filter(lambda r, keep: r["source"] in keep, unchanged_sources)
        | "CarryUnchanged" >> beam.Map(carried)
    )
    now = (read_now, carry) | "Presences" >> beam.Flatten()
    planned = (
        {
            "previous": previous | "KeyPrevious" >> beam.Map(lambda r: (r["key"], r)),
            "now": now | "KeyPresences" >> beam.Map(lambda r: (r["key"], r)),
        }
        | "JoinByKey" >> beam.CoGroupByKey()
        | "Decide" >> beam.ParDo(Decide(model_version))
    )
    needs = planned | "NeedsCaption" >> beam.Filter(lambda r: r["needs_caption"])
    rest = planned | "Settled" >> beam.Filter(lambda r: not r["needs_caption"])
    cache = (
        p | "CaptionCache" >> beam.Create(caption_cache) | "ReadCache" >> beam.FlatMap(_read_rows)
        if caption_cache
        else p | "NoCaptionCache" >> beam.Create([])
    )
    reused = (
        {
            "rows": needs | "KeyRowsBySha" >> beam.Map(lambda r: (r["sha256"], r)),
            "cache": cache
            | "OfThisModel" >> beam.Filter(lambda c, v: c["model_version"] == v, model_version)
            | "KeyCacheBySha" >> beam.Map(lambda c: (c["sha256"], c)),
        }
        | "JoinBySha" >> beam.CoGroupByKey()
        | "Reuse" >> beam.ParDo(Reuse())
    )
    _ = (
        (rest, reused)
        | "PlanRows" >> beam.Flatten()
        | "WritePlan" >> WriteToParquet(plan_prefix, PLAN_SCHEMA, file_name_suffix=".parquet")
    )


def _read_rows(url: str) -> Iterator[dict[str, Any]]:
    """One caption cache file -> its rows (small files: one flush of a caption worker each)."""
    import fsspec
    import pyarrow.parquet as pq

    with fsspec.open(url, "rb") as f:
        yield from pq.read_table(f).to_pylist()
