"""A collection's catalog: one row per live image key, and the nightly diff that updates it.

The update job lists its input and, per key, meets what the previous catalog says with what the
input holds now (a Beam CoGroupByKey in pipelines/update/plan.py). `decide` is that meeting, as a
pure function: it gives each key an action (carry, new, changed, stale, deleted, duplicate) and a
plan row. Shards whose fingerprint (size and mtime, or an object store's ETag) did not change are
never read: their catalog rows arrive as "carry" presences instead of read ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

# What a catalog row holds; a failed image has status "failed" and stage/error_type/message.
CATALOG_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source", pa.string()),
        ("member", pa.string()),
        ("sha256", pa.string()),
        ("size", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("format", pa.string()),
        ("status", pa.string()),  # captioned | failed
        ("caption", pa.string()),
        ("candidates", pa.list_(pa.string())),
        ("model", pa.string()),
        ("model_version", pa.string()),
        ("run_id", pa.string()),  # the run whose caption (or failure) this row carries
        ("captioned_at", pa.string()),
        ("stage", pa.string()),
        ("error_type", pa.string()),
        ("message", pa.string()),
        ("url", pa.string()),
        ("alt_text", pa.string()),
        ("metadata", pa.string()),  # JSON of the source's other fields
    ]
)
CATALOG_COLUMNS = tuple(CATALOG_SCHEMA.names)
SOURCE_COLUMNS = ("url", "alt_text", "metadata")
CAPTION_COLUMNS = ("caption", "candidates", "model", "model_version", "captioned_at")

# A plan row is a catalog row plus what the update does with it.
ACTIONS = ("carry", "new", "changed", "stale", "deleted", "duplicate")
PLAN_SCHEMA = CATALOG_SCHEMA.append(pa.field("action", pa.string())).append(
    pa.field("needs_caption", pa.bool_())
)

SHARDS_SCHEMA = pa.schema(
    [("source", pa.string()), ("kind", pa.string()), ("fingerprint", pa.string())]
)


@dataclass(frozen=True, slots=True)
class Presence:
    """One image as the input holds it now: read from a changed shard (`carried` False, with
    its sha256, or a read error), or standing for a catalog row of an unchanged shard."""

    key: str
    source: str
    member: str
    sha256: str | None = None
    size: int | None = None
    carried: bool = False
    error_type: str | None = None  # a read failure
    message: str | None = None
    stage: str | None = None  # of a failure: "read", or "source" (the archive never had it)
    url: str | None = None
    alt_text: str | None = None
    metadata: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}  # type: ignore[attr-defined]


def empty_row(key: str) -> dict[str, Any]:
    return {name: None for name in CATALOG_COLUMNS} | {"key": key}


def fingerprint(info: Mapping[str, Any]) -> str:
    """A shard file's identity without reading it: size plus the store's version tag (ETag,
    md5, generation) where it has one, else the modification time."""
    size = info.get("size")
    for tag in ("ETag", "etag", "md5Hash", "generation", "version_id"):
        if info.get(tag):
            return f"{size}:{tag}={info[tag]}"
    mtime = info.get("mtime") or info.get("LastModified") or info.get("updated") or ""
    return f"{size}:mtime={mtime}"


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def decide(
    key: str,
    previous: Iterable[Mapping[str, Any]],
    presences: Iterable[Mapping[str, Any]],
    model_version: str,
) -> list[dict[str, Any]]:
    """The plan rows of one key: what the catalog said (`previous`, at most one row) and where
    the input holds it now (`presences`: Presence dicts). Returns one row for the key (unless it
    is gone and was never catalogued) plus one "duplicate" row per extra presence of the key.

    Actions: carry (unchanged, caption kept), stale (unchanged bytes but captioned by another
    model_version), new, changed (other bytes under the key), deleted (no longer listed),
    duplicate (the key again elsewhere: recorded as a failure, the first place wins).
    """
    prev = next(iter(previous), None)
    here = sorted(presences, key=lambda p: (not p["carried"], p["source"], p["member"]))
    if not here:
        if prev is None:
            return []
        return [{**_catalog(prev), "action": "deleted", "needs_caption": False}]
    first, extra = here[0], here[1:]
    rows = [_decide_one(key, prev, first, model_version)]
    for dup in extra:
        rows.append(
            {
                **empty_row(key),
                **_source(dup),
                "status": "failed",
                "stage": "read",
                "error_type": "duplicate_key",
                "message": f"key {key!r} is also at {first['source']} :: {first['member']}; "
                "the first place is indexed",
                "action": "duplicate",
                "needs_caption": False,
            }
        )
    return rows


def _decide_one(
    key: str, prev: Mapping[str, Any] | None, now: Mapping[str, Any], model_version: str
) -> dict[str, Any]:
    if now["carried"]:
        assert prev is not None, "a carried presence comes from a catalog row"
        return _keep(prev, now, model_version)
    if now.get("error_type"):  # the input holds the key, but it cannot be read
        return {
            **empty_row(key),
            **_source(now),
            "status": "failed",
            "stage": now.get("stage") or "read",
            "error_type": now["error_type"],
            "message": now.get("message") or now["error_type"],
            "action": "new" if prev is None else "changed",
            "needs_caption": False,
        }
    if prev is not None and prev.get("sha256") == now["sha256"]:
        return _keep(prev, now, model_version)
    return {
        **empty_row(key),
        **_source(now),
        "action": "new" if prev is None else "changed",
        "needs_caption": True,
    }


def _keep(prev: Mapping[str, Any], now: Mapping[str, Any], model_version: str) -> dict[str, Any]:
    """The same bytes: the catalog row stays, at its current place, with its source metadata
    from the input; a caption by another model version is stale."""
    row = {**_catalog(prev), "source": now["source"], "member": now["member"]}
    if not now["carried"]:
        row.update({c: now.get(c) for c in SOURCE_COLUMNS})
    stale = row.get("status") == "captioned" and row.get("model_version") != model_version
    return {**row, "action": "stale" if stale else "carry", "needs_caption": stale}


def _source(p: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "source": p["source"],
        "member": p["member"],
        "sha256": p.get("sha256"),
        "size": p.get("size"),
        **{c: p.get(c) for c in SOURCE_COLUMNS},
    }


def _catalog(row: Mapping[str, Any]) -> dict[str, Any]:
    return {name: row.get(name) for name in CATALOG_COLUMNS}


def with_caption(row: Mapping[str, Any], caption: Mapping[str, Any]) -> dict[str, Any]:
    """A plan row that needed a caption, given one (a cached or fresh caption row of the same
    bytes and model version)."""
    return {
        **row,
        "status": "captioned",
        "stage": None,
        "error_type": None,
        "message": None,
        **{c: caption.get(c) for c in CAPTION_COLUMNS},
        "width": caption.get("width"),
        "height": caption.get("height"),
        "format": caption.get("format"),
        "run_id": caption.get("run_id"),
        "candidates": list(caption.get("candidates") or []),
        "needs_caption": False,
    }


def with_failure(row: Mapping[str, Any], failure: Mapping[str, Any]) -> dict[str, Any]:
    """A plan row whose image could not be decoded or captioned tonight."""
    return {
        **row,
        "status": "failed",
        **{c: None for c in CAPTION_COLUMNS},
        "candidates": None,
        "stage": failure.get("stage"),
        "error_type": failure.get("error_type"),
        "message": failure.get("message"),
        "run_id": failure.get("run_id"),
        "needs_caption": False,
    }
