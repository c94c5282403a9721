"""`imgindex update`, `versions` and `rollback` as scripts and schedulers call them: JSON out,
exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from indexing.collection import Collection
from tests.pipelines.cli.test_cli import imgindex
from tests.pipelines.update.conftest import make_archive

pytestmark = pytest.mark.slow


def _update(archive: Path, root: Path, model: Path, embedder: Path, *extra: str):
    flags = ["--model", str(model), "--embedder", str(embedder), "--device", "cpu"]
    return imgindex("update", str(archive), "--collection", str(root), *flags, "--beam-size", "1",
                    *extra)  # fmt: skip


def test_update_versions_rollback_and_search(
    tmp_path: Path, tiny_caption_model: Path, tiny_embedder_dir: Path
) -> None:
    archive = make_archive(tmp_path / "arch", 6)
    root = tmp_path / "col"
    first = _update(archive, root, tiny_caption_model, tiny_embedder_dir, "--json")
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    for name in ("listed", "new", "changed", "deleted", "unchanged", "captioned", "failed"):
        assert name in summary["counts"]
    assert summary["version"] == "v000001" and summary["published"]
    assert (root / "runs" / f"{summary['run_id']}.json").exists()

    same = _update(archive, root, tiny_caption_model, tiny_embedder_dir)
    assert same.returncode == 0 and "nothing changed" in same.stdout

    make_archive(archive, 1, start=30, seed=5)
    assert _update(archive, root, tiny_caption_model, tiny_embedder_dir).returncode == 0
    listed = imgindex("versions", str(root), "--json", check=True).stdout.splitlines()
    assert [json.loads(line)["version"] for line in listed] == ["v000002", "v000001"]
    assert json.loads(listed[0])["current"] and json.loads(listed[0])["counts"]["indexed"] == 7

    back = imgindex("rollback", str(root), check=True)
    assert "v000001" in back.stdout and Collection.open(root).current() == "v000001"
    hits = imgindex("search", str(root), "a", "-k", "20", "--json", check=True).stdout
    assert len(hits.splitlines()) == 6  # the rolled-back version serves


def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, tiny_caption_model: Path, tiny_embedder_dir: Path
) -> None:
    missing = _update(tmp_path / "nope", tmp_path / "col", tiny_caption_model, tiny_embedder_dir)
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")
    assert len(missing.stderr.strip().splitlines()) == 1
    for args in (["versions", str(tmp_path)], ["rollback", str(tmp_path / "x")]):
        proc = imgindex(*args)
        assert proc.returncode == 2 and "not an imgindex collection" in proc.stderr
    archive = make_archive(tmp_path / "arch", 2)
    root = tmp_path / "col"
    _update(archive, root, tiny_caption_model, tiny_embedder_dir)
    proc = imgindex("rollback", str(root))
    assert proc.returncode == 2 and "no version before" in proc.stderr
    bad = _update(archive, root, tiny_caption_model, tiny_embedder_dir, "--keep", "0")
    assert bad.returncode == 2 and "--keep must be at least 1" in bad.stderr
    with Collection.open(root).lock():
        locked = _update(archive, root, tiny_caption_model, tiny_embedder_dir)
    assert locked.returncode == 2 and "being updated by another run" in locked.stderr
