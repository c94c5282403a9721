"""indexing.collection: the layout, the CURRENT pointer, versions, rollback, retention, the lock."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from indexing.collection import (
    COLLECTION_FILE,
    CURRENT_FILE,
    LOCK_FILE,
    VERSION_FILE,
    Collection,
    CollectionError,
    CollectionLocked,
    is_collection,
)


def publish_empty(col: Collection, counts: dict | None = None) -> str:
    name = col.next_version()
    tmp = col.new_version_dir(name)
    col.publish(tmp, name, {"run_id": f"run-{name}", "counts": counts or {}})
    return name


def test_a_new_collection_and_its_first_versions(tmp_path: Path) -> None:
    col = Collection.open(tmp_path / "col", create=True)
    assert is_collection(tmp_path / "col") and col.current() is None
    assert publish_empty(col) == "v000001" and publish_empty(col) == "v000002"
    assert col.current() == "v000002"
    assert [(v.name, v.current) for v in col.versions()] == [("v000002", True), ("v000001", False)]
    assert col.rollback() == "v000001" and col.current() == "v000001"
    with pytest.raises(CollectionError, match="no version before"):
        col.rollback()


def test_open_refuses_what_is_not_a_usable_collection(tmp_path: Path) -> None:
    with pytest.raises(CollectionError, match="not an imgindex collection"):
        Collection.open(tmp_path / "nothing")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("x")
    with pytest.raises(CollectionError, match="not empty and not a collection"):
        Collection.open(tmp_path / "busy", create=True)
    col = Collection.open(tmp_path / "col", create=True)
    (tmp_path / "col" / COLLECTION_FILE).write_text(json.dumps({"format_version": 2}))
    with pytest.raises(CollectionError, match="newer imgindex"):
        Collection.open(tmp_path / "col")
    (tmp_path / "col" / COLLECTION_FILE).write_text("][")
    with pytest.raises(CollectionError, match="corrupt"):
        Collection.open(tmp_path / "col")
    assert col.root.endswith("col")


def test_a_corrupt_or_dangling_pointer_is_a_clear_error(tmp_path: Path) -> None:
    col = Collection.open(tmp_path / "col", create=True)
    publish_empty(col)
    (tmp_path / "col" / CURRENT_FILE).write_text(json.dumps({"version": "v000009"}))
    with pytest.raises(CollectionError, match="not a complete version"):
        col.current()
    (tmp_path / "col" / CURRENT_FILE).write_text(json.dumps({"version": "../etc"}))
    with pytest.raises(CollectionError, match="corrupt"):
        col.current()
    assert col.rollback("v000001") == "v000001"  # the way out the message names


def test_half_written_versions_are_invisible_and_never_reuse_a_name(tmp_path: Path) -> None:
    col = Collection.open(tmp_path / "col", create=True)
    publish_empty(col)
    crashed = col.new_version_dir(col.next_version())  # a run killed while writing v000002
    assert col.version_names() == ["v000001"] and col.current() == "v000001"
    assert col.next_version() == "v000003"
    assert col.prune(keep=5) == [] and not Path(crashed).exists()  # leftovers are cleaned


def test_prune_keeps_the_newest_and_the_current(tmp_path: Path) -> None:
    col = Collection.open(tmp_path / "col", create=True)
    for _ in range(4):
        publish_empty(col)
    col.rollback("v000001")
    assert col.prune(keep=2) == ["v000002"]
    assert col.version_names() == ["v000001", "v000003", "v000004"]
    assert (tmp_path / "col" / "versions" / "v000001" / VERSION_FILE).exists()
    with pytest.raises(CollectionError, match="--keep"):
        col.prune(keep=0)


def test_the_lock_refuses_a_second_writer_and_takes_over_a_silent_one(tmp_path: Path) -> None:
    col = Collection.open(tmp_path / "col", create=True)
    with col.lock(timeout_s=60, heartbeat_s=0.05) as held:
        before = json.loads((tmp_path / "col" / LOCK_FILE).read_text())["heartbeat"]
        time.sleep(0.3)
        assert json.loads((tmp_path / "col" / LOCK_FILE).read_text())["heartbeat"] > before
        with pytest.raises(CollectionLocked, match="another run"):
            col.lock(timeout_s=60).acquire()
        assert held.took_over is None
    assert not (tmp_path / "col" / LOCK_FILE).exists()
    # another host's lock whose heartbeat stopped long ago
    (tmp_path / "col" / LOCK_FILE).write_text(
        json.dumps({"host": "elsewhere", "pid": 1, "token": "t", "heartbeat": time.time() - 900})
    )
    with col.lock(timeout_s=600) as lock:
        assert lock.took_over and "heartbeat was" in lock.took_over
    (tmp_path / "col" / LOCK_FILE).write_text(
        json.dumps({"host": "elsewhere", "pid": 1, "token": "t", "heartbeat": time.time()})
    )
    with pytest.raises(CollectionLocked):
        col.lock(timeout_s=600).acquire()
