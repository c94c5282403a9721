"""Every Hugging Face family end to end through the Beam caption job, offline, tiny models."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from captioning.api import CaptionerOptions
from captioning.archives.synthetic.writer import ArchiveConfig, write_archive
from pipelines.caption.pipeline import CaptionConfig, run_caption
from tests.captioning.hf.tiny import FAMILIES, build

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf-archive")
    write_archive(str(out), ArchiveConfig(images=6, shards=2, seed=5, format="tar", workers=1))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_family_through_the_pipeline(family, archive, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = build(family, tmp_path / family)
    options = CaptionerOptions(
        device="cpu", beam_size=2, num_return_sequences=2, max_length=6, min_new_tokens=2, threads=1
    )
    summary = run_caption(
        CaptionConfig(
            input=str(archive),
            out=str(tmp_path / "out"),
            model=f"hf:{model}",
            batch_size=4,
            captioner=options,
        ),
        [],
    )
    assert summary.read == 6 and summary.captioned == 6 and summary.balanced
    assert summary.model == f"hf:{model}" and summary.model_version.startswith(
        (
            "blip",
            "git",
            "vision-encoder-decoder",
            "blip-2",
            "llava",
            "idefics",
            "smolvlm",
            "florence2",
        )
    )
    rows = pq.read_table(tmp_path / "out" / "captions").to_pylist()
    assert len(rows) == 6
    for row in rows:
        assert len(row["candidates"]) == 2 and row["candidates"][0] == row["caption"]
        assert row["model"] == f"hf:{model}"


def test_a_bad_hf_model_fails_before_the_job(archive, tmp_path):
    from captioning.hf.resolve import ModelLoadError

    with pytest.raises(ModelLoadError, match="no model directory"):
        run_caption(
            CaptionConfig(
                input=str(archive), out=str(tmp_path / "out"), model=f"hf:{tmp_path / 'nope'}"
            ),
            [],
        )
    assert not (tmp_path / "out").exists()


def test_a_bad_florence_task_prompt_fails_before_the_job(archive, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = build("florence2", tmp_path / "florence2")
    options = CaptionerOptions(device="cpu", prompt="<CAPTION> and more words")
    with pytest.raises(ValueError, match="Florence-2 takes a task token alone"):
        run_caption(
            CaptionConfig(
                input=str(archive),
                out=str(tmp_path / "out"),
                model=f"hf:{model}",
                captioner=options,
            ),
            [],
        )
    assert not (tmp_path / "out").exists()
