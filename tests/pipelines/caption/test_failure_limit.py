"""--max-failure-rate: a job that fails too much writes its output, then raises JobFailed; a model
that fails every image of its first batches alike stops the job early."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from captioning.api import CaptionerOptions, CaptionResult
from captioning.archives.synthetic.writer import ArchiveConfig, write_archive
from captioning.native.captioner import NativeCaptioner
from captioning.records import ImageInput
from pipelines.caption.handler import CaptionModelHandler, ModelBrokenError
from pipelines.caption.pipeline import CaptionConfig, run_caption
from pipelines.caption.summary import model_broken
from pipelines.errors import JobFailed, UsageError

FAST = CaptionerOptions(device="cpu", beam_size=1)
OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"


def config(input_: Path, out: Path, model: Path, **overrides: Any) -> CaptionConfig:
    return CaptionConfig(
        input=str(input_), out=str(out), model=str(model), captioner=FAST, **overrides
    )


@pytest.fixture
def broken_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model call raises, as a device out of memory would (the default runner is in this
    process, so the patch reaches the handler's captioner)."""

    def caption(self: NativeCaptioner, inputs: Any) -> list[CaptionResult]:
        raise RuntimeError(OOM)

    monkeypatch.setattr(NativeCaptioner, "caption", caption)


def folder(tmp_path: Path, images: int) -> Path:
    root = tmp_path / "images"
    write_archive(str(root), ArchiveConfig(images=images, shards=1, format="folder", workers=1))
    return root


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- the limit


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan")])
def test_a_rate_outside_0_to_1_is_a_usage_error(rate: float) -> None:
    with pytest.raises(UsageError, match="--max-failure-rate must be .* between 0 and 1"):
        CaptionConfig(input="in", out="out", max_failure_rate=rate)


@pytest.mark.slow
def test_a_job_over_the_limit_writes_its_output_then_fails_with_counts_by_stage(
    tiny_caption_model: Path, bad_input_dir: tuple[Path, dict], tmp_path: Path
) -> None:
    root, _ = bad_input_dir  # 24 images: 15 caption, 5 fail to read, 4 to decode
    out = tmp_path / "out"
    with pytest.raises(JobFailed) as caught:
        run_caption(config(root, out, tiny_caption_model, max_failure_rate=0.3), [])

    failures = pq.read_table(out / "failures").to_pylist()
    message = min(r["message"] for r in failures if r["error_type"] == "truncated_tar")
    assert str(caught.value) == (
        "9 of 24 images failed (38%), over --max-failure-rate 0.3: "
        "source 0, read 5, decode 4, caption 0; "
        f"most common: truncated_tar x2: {message}. Tables and run.json are in {out}"
    )
    assert len(pq.read_table(out / "captions")) == 15 and len(failures) == 9
    run = read_json(out / "run.json")
    assert run["counts"]["failed_by_stage"] == {"source": 0, "read": 5, "decode": 4, "caption": 0}
    assert run["failure_limit"] == {
        "max_failure_rate": 0.3,
        "failure_rate": 0.375,
        "exceeded": True,
    }


@pytest.mark.slow
@pytest.mark.usefixtures("broken_model")
def test_a_model_that_fails_every_image_fails_the_job(
    tiny_caption_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    # One image a batch, two batches: too few to stop early, so the job runs to its end.
    with pytest.raises(JobFailed) as caught:
        run_caption(config(folder(tmp_path, 2), out, tiny_caption_model, batch_size=1), [])

    assert str(caught.value) == (
        "2 of 2 images failed (100%), over --max-failure-rate 0.5: "
        "source 0, read 0, decode 0, caption 2; "
        f"most common: RuntimeError x2: {OOM}. Tables and run.json are in {out}"
    )
    failures = pq.read_table(out / "failures").to_pylist()
    assert [(r["stage"], r["error_type"], r["message"]) for r in failures] == [
        ("caption", "RuntimeError", OOM)
    ] * 2
    assert len(pq.read_table(out / "captions")) == 0
    run = read_json(out / "run.json")
    assert run["counts"]["failed_by_reason"] == {"RuntimeError": 2}
    assert run["failure_limit"]["exceeded"] is True


@pytest.mark.slow
@pytest.mark.usefixtures("broken_model")
def test_a_rate_of_1_accepts_any_failures_and_never_stops_early(
    tiny_caption_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    summary = run_caption(
        config(folder(tmp_path, 5), out, tiny_caption_model, batch_size=1, max_failure_rate=1.0),
        [],
    )

    assert (summary.read, summary.captioned, summary.failed) == (5, 0, {"RuntimeError": 5})
    assert summary.failed_by_stage == {"source": 0, "read": 0, "decode": 0, "caption": 5}
    assert read_json(out / "run.json")["failure_limit"] == {
        "max_failure_rate": 1.0,
        "failure_rate": 1.0,
        "exceeded": False,
    }


# --------------------------------------------------------------------------- stopping early


@pytest.mark.slow
@pytest.mark.usefixtures("broken_model")
def test_a_model_that_fails_its_first_batches_alike_stops_the_job_early(
    tiny_caption_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with pytest.raises(JobFailed) as caught:
        run_caption(config(folder(tmp_path, 6), out, tiny_caption_model, batch_size=1), [])

    assert str(caught.value) == (
        "stopped early: the model failed every image of its first 3 batches with "
        f"RuntimeError: {OOM}; no tables were written. Check the model and its device"
    )
    assert not (out / "run.json").exists()
    assert not list(out.rglob("*.parquet"))


class BrokenCaptioner:
    name, version = "broken", "0"

    def caption(self, inputs: Any) -> list[CaptionResult]:
        raise RuntimeError(OOM)


def batch(n: int) -> list[ImageInput]:
    return [ImageInput(f"k{i}", "s", "m", "h", 1, 1, "PNG", f"x{i}") for i in range(n)]


def test_the_handler_raises_after_its_first_batches_fail_alike() -> None:
    handler = CaptionModelHandler(None, FAST, batch_size=2)
    model: Any = BrokenCaptioner()
    for _ in range(2):  # failure rows, until the third batch
        out = list(handler.run_inference(batch(2), model))
        assert [r.inference.message for r in out] == [OOM, OOM]
    with pytest.raises(ModelBrokenError, match="first 3 batches with RuntimeError: CUDA out"):
        handler.run_inference(batch(1), model)

    patient = CaptionModelHandler(None, FAST, batch_size=2, stop_after_failed_batches=None)
    for _ in range(5):
        assert len(list(patient.run_inference(batch(2), model))) == 2


def test_model_broken_is_found_however_the_runner_wraps_it() -> None:
    text = "the model failed every image of its first 3 batches with RuntimeError: boom"
    step = " [while running 'CaptionImages/BeamML_RunInference']"
    # The in-process runner: the same class, with the step's name appended to its message.
    assert model_broken(ModelBrokenError(text + step)) == text
    # A runner in other processes: a RuntimeError holding the worker's traceback as text.
    remote = RuntimeError(
        "Pipeline failed:\nTraceback (most recent call last):\n  File ...\n"
        f"pipelines.caption.handler.ModelBrokenError: {text}{step}\n"
    )
    assert model_broken(remote) == text
    try:
        raise RuntimeError("job failed") from ModelBrokenError(text)
    except RuntimeError as e:
        assert model_broken(e) == text
    assert model_broken(RuntimeError("CUDA out of memory")) is None
