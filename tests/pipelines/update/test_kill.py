"""Crash safety: `kill -9` a real update process at several points; the current version keeps
serving, and the next update finishes the work with no duplicate keys, reusing what the dead run
finished. No mocking: the update runs in its own process and is killed when a file shows that it
reached the point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from indexing.collection import CAPTIONS_DIR, LOCK_FILE, TMP_PREFIX, VERSIONS_DIR, Collection
from indexing.search import open_index
from tests.pipelines.update.conftest import make_archive
from tests.pipelines.update.helpers import catalog, update

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[3]

SCRIPT = """
import sys
from pathlib import Path
from tests.pipelines.update.helpers import config
from pipelines.update.run import run_update
archive, root, model, embedder = map(Path, sys.argv[1:5])
run_update(config(archive, root, model, embedder, flush_rows=2), [])
"""


def _reached(root: Path, point: str, before: set[str]) -> bool:
    """Whether the update has reached `point`: holds the lock, has written a caption cache file,
    or is writing its new version (a temporary directory under versions/)."""
    if point == "lock":
        return (root / LOCK_FILE).exists()
    if point == "publish":
        return any(e.name.startswith(TMP_PREFIX) for e in os.scandir(root / VERSIONS_DIR))
    sub = root / CAPTIONS_DIR  # a whole cache file, renamed into place
    fresh = (e.name for e in os.scandir(sub) if e.name not in before)
    return sub.exists() and any(not name.startswith(TMP_PREFIX) for name in fresh)


def _kill_at(point: str, archive: Path, root: Path, model: Path, embedder: Path) -> None:
    before = {e.name for e in os.scandir(root / CAPTIONS_DIR)}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ["PYTHONPATH"]])}
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(archive), str(root), str(model), str(embedder)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not _reached(root, point, before):
        assert proc.poll() is None, f"the update ended before {point}: {proc.stderr.read()}"  # type: ignore[union-attr]
        assert time.monotonic() < deadline, f"the update never reached {point}"
        if point != "publish":  # the version is written in well under a second: poll tightly
            time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


@pytest.mark.parametrize("point", ["lock", "captions", "publish"])
def test_killed_update_leaves_the_current_version_and_the_next_one_finishes(
    point: str, tmp_path: Path, tiny_caption_model: Path, tiny_embedder_dir: Path
) -> None:
    archive = make_archive(tmp_path / "arch", 8)
    root, reference = tmp_path / "col", tmp_path / "reference"
    update(archive, root, tiny_caption_model, tiny_embedder_dir)
    make_archive(archive, 40, start=100, seed=11)  # tonight: 40 new images

    _kill_at(point, archive, root, tiny_caption_model, tiny_embedder_dir)
    assert Collection.open(root).current() == "v000001"  # still serving, untouched
    assert len(open_index(root).search("a", k=100)) == 8

    night = update(archive, root, tiny_caption_model, tiny_embedder_dir)
    assert night.published and night.version in ("v000002", "v000003")  # a name is never reused
    assert night.took_over_lock and "no longer running" in night.took_over_lock
    if point != "lock":  # the dead run's finished captions are reused, not redone
        assert night.counts.reused > 0 and night.counts.captioned < 40
    assert night.counts.reused + night.counts.captioned == 40

    update(archive, reference, tiny_caption_model, tiny_embedder_dir)
    rows = catalog(root)
    assert max(Counter(r["key"] for r in rows).values()) == 1  # no duplicate keys
    expected = {r["key"]: r["caption"] for r in catalog(reference)}
    assert {r["key"]: r["caption"] for r in rows} == expected
    hits = open_index(root).search("a", k=100)
    assert len(hits) == 48 and len({h.key for h in hits}) == 48  # no duplicates in the index
