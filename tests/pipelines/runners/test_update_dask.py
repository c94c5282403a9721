"""`imgindex update` on a real dask.distributed cluster gives the local runner's catalog, on the
first night and on a night of changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipelines.update.run import run_update
from tests.pipelines.update.conftest import make_archive
from tests.pipelines.update.helpers import catalog, config

pytestmark = pytest.mark.slow
SAME = ("key", "source", "member", "sha256", "status", "caption", "error_type", "model_version")


def _rows(root: Path) -> list[tuple]:
    return sorted(tuple(r[c] for c in SAME) for r in catalog(root))


def test_update_on_dask_equals_the_local_runner(
    tmp_path: Path, tiny_caption_model: Path, tiny_embedder_dir: Path, dask_beam_args: list[str]
) -> None:
    archive = make_archive(tmp_path / "arch", 12, fmt="tar", shards=4)
    (archive / "broken.tar").write_bytes(b"not a tar at all")
    on_dask, local = tmp_path / "dask-col", tmp_path / "local-col"
    for night in range(2):
        if night:
            make_archive(tmp_path / "more", 3, fmt="tar", start=50, seed=6)
            shutil.move(str(next((tmp_path / "more").glob("*.tar"))), archive / "new.tar")
            sorted(archive.glob("shard-*.tar"))[0].unlink()
        a = run_update(
            config(archive, on_dask, tiny_caption_model, tiny_embedder_dir), dask_beam_args
        )
        b = run_update(config(archive, local, tiny_caption_model, tiny_embedder_dir), [])
        assert a.counts == b.counts and a.version == b.version
        assert _rows(on_dask) == _rows(local)
    assert a.counts.new == 3 and a.counts.deleted == 3 and a.counts.captioned == 3
