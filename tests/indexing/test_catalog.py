"""indexing.catalog.decide: one key's previous catalog row + where the input holds it now ->
the plan rows, without Beam."""

from __future__ import annotations

from typing import Any

import pytest

from indexing.catalog import CATALOG_COLUMNS, Presence, decide, fingerprint


def prev_row(key: str = "k", sha: str = "a" * 64, version: str = "v1", **kw: Any) -> dict:
    row = {c: None for c in CATALOG_COLUMNS}
    row.update(key=key, source="s1", member=f"{key}.png", sha256=sha, size=10, status="captioned",
               caption="a red circle", model="m", model_version=version, run_id="r1")  # fmt: skip
    return row | kw


def now(key: str = "k", sha: str | None = "a" * 64, source: str = "s1", **kw: Any) -> dict:
    return Presence(key, source, f"{key}.png", sha, 10, **kw).to_dict()


def test_unchanged_bytes_carry_the_caption() -> None:
    [row] = decide("k", [prev_row()], [now()], "v1")
    assert row["action"] == "carry" and not row["needs_caption"]
    assert row["caption"] == "a red circle" and row["run_id"] == "r1"


def test_new_changed_deleted() -> None:
    [new] = decide("k", [], [now()], "v1")
    assert new["action"] == "new" and new["needs_caption"] and new["caption"] is None
    [changed] = decide("k", [prev_row()], [now(sha="b" * 64)], "v1")
    assert changed["action"] == "changed" and changed["needs_caption"]
    assert changed["sha256"] == "b" * 64 and changed["caption"] is None
    [deleted] = decide("k", [prev_row()], [], "v1")
    assert deleted["action"] == "deleted"
    assert decide("k", [], [], "v1") == []


def test_another_model_version_is_stale_but_keeps_its_caption() -> None:
    [row] = decide("k", [prev_row(version="v0")], [now()], "v1")
    assert row["action"] == "stale" and row["needs_caption"]
    assert row["caption"] == "a red circle"  # kept until a night recaptions it
    failed = prev_row(version=None, status="failed", caption=None, error_type="truncated")
    [row] = decide("k", [failed], [now()], "v1")
    assert row["action"] == "carry" and row["status"] == "failed"


def test_moved_bytes_keep_their_row_at_the_new_place() -> None:
    [row] = decide("k", [prev_row()], [now(source="s9", url="http://x/k.png")], "v1")
    assert (row["action"], row["source"], row["url"]) == ("carry", "s9", "http://x/k.png")


def test_carried_presences_of_unchanged_shards() -> None:
    carried = Presence("k", "s1", "k.png", "a" * 64, 10, carried=True).to_dict()
    [row] = decide("k", [prev_row()], [carried], "v1")
    assert row["action"] == "carry"


def test_a_duplicate_key_is_a_failure_row_and_the_first_place_wins() -> None:
    rows = decide("k", [prev_row()], [now(source="s2", sha="c" * 64), now(source="s1")], "v1")
    assert [r["action"] for r in rows] == ["carry", "duplicate"]
    assert rows[0]["source"] == "s1"
    dup = rows[1]
    assert (dup["status"], dup["stage"], dup["error_type"]) == ("failed", "read", "duplicate_key")
    assert "s1" in dup["message"]


def test_an_unreadable_image_is_a_failed_row() -> None:
    [row] = decide("k", [prev_row()], [now(sha=None, error_type="truncated", message="cut")], "v1")
    assert (row["action"], row["status"], row["error_type"]) == ("changed", "failed", "truncated")
    assert not row["needs_caption"]


@pytest.mark.parametrize(
    "info, expected",
    [
        ({"size": 5, "mtime": 1.5}, "5:mtime=1.5"),
        ({"size": 5, "ETag": '"abc"', "LastModified": "x"}, '5:ETag="abc"'),
        ({"size": 5, "md5Hash": "q=="}, "5:md5Hash=q=="),
    ],
)
def test_fingerprint_prefers_a_version_tag(info: dict, expected: str) -> None:
    assert fingerprint(info) == expected
