"""Training end to end on a tiny world: it learns, checkpoints every epoch, resumes exactly."""

from __future__ import annotations

import json
import math

import pytest
import torch

from captioning.archives.synthetic.writer import ArchiveConfig, write_archive
from captioning.native.checkpoint import load_checkpoint
from captioning.training import state
from captioning.training.config import TrainConfig
from captioning.training.data import load_training_data
from captioning.training.train import split, train


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    write_archive(str(out), ArchiveConfig(images=120, shards=2, seed=11, format="tar", workers=1))
    return load_training_data(str(out), image_size=32, workers=1)


def small(**kw) -> TrainConfig:
    return TrainConfig(
        epochs=3, batch_size=16, learning_rate=3e-3, seed=5, val_fraction=0.2, patience=5, **kw
    )


def test_loads_captions_references_and_truth(world):
    assert world.images.shape == (120, 3, 32, 32) and world.images.dtype == torch.uint8
    ex = world.examples[0]
    assert ex.caption == ex.references[0] and ex.truth


def test_split_is_stable_and_disjoint(world):
    train_rows, val_rows = split(world, 0.2)
    assert not set(train_rows) & set(val_rows)
    assert len(train_rows) + len(val_rows) == 120
    assert split(world, 0.2) == (train_rows, val_rows)


TINY = dict(encoder_channels=(8, 16), embed_dim=16, hidden_dim=32, attention_dim=16)


def test_training_checkpoints_and_lowers_the_loss(world, tmp_path):
    reports = train(world, tmp_path / "m", small(), architecture=TINY)
    assert [r.epoch for r in reports] == [1, 2, 3]
    assert reports[-1].train_loss < reports[0].train_loss
    ckpt = load_checkpoint(tmp_path / "m")
    best = max(reports, key=lambda r: r.val_cider)
    assert ckpt.info["epoch"] == best.epoch
    state = json.loads((tmp_path / "m" / ".train-state" / "state.json").read_text())
    assert state["epoch"] == 3


def test_resumed_run_equals_uninterrupted_run(world, tmp_path):
    full = train(world, tmp_path / "full", small(), architecture=TINY)

    class Crash(Exception):
        pass

    def crash_after_epoch_two(report):
        if report.epoch == 2:
            raise Crash  # after epoch 2's checkpoint was written, as a killed run would

    with pytest.raises(Crash):
        train(world, tmp_path / "part", small(), architecture=TINY, on_epoch=crash_after_epoch_two)
    resumed = train(world, tmp_path / "part", small(), resume=True)
    assert [r.epoch for r in resumed] == [1, 2, 3]
    assert resumed[-1].train_loss == pytest.approx(full[-1].train_loss, rel=1e-5)
    a = load_checkpoint(tmp_path / "full" / ".train-state").model.state_dict()
    b = load_checkpoint(tmp_path / "part" / ".train-state").model.state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_a_run_killed_while_saving_resumes_from_the_last_whole_epoch(world, tmp_path, monkeypatch):
    full = train(world, tmp_path / "full", small(), architecture=TINY)

    class Killed(Exception):
        pass

    real, saves = state.save_file, []

    def killed_in_epoch_two(*args, **kwargs):  # writes the optimizer state, then dies
        real(*args, **kwargs)
        saves.append(1)
        if len(saves) == 2:  # epoch 2's model and optimizer are written, its state.json is not
            raise Killed

    monkeypatch.setattr(state, "save_file", killed_in_epoch_two)
    with pytest.raises(Killed):
        train(world, tmp_path / "part", small(), architecture=TINY)
    monkeypatch.undo()

    # The state on disk is epoch 1's, all of it: model, optimizer steps and counters.
    steps_per_epoch = math.ceil(len(split(world, 0.2)[0]) / 16)
    resumed_from = state.load_state(tmp_path / "part")
    assert resumed_from.progress.epoch == 1
    assert resumed_from.checkpoint.info["epoch"] == 1
    steps = {int(s["step"]) for s in resumed_from.optimizer["state"].values()}
    assert steps == {steps_per_epoch}

    resumed = train(world, tmp_path / "part", small(), resume=True)
    assert [r.epoch for r in resumed] == [1, 2, 3]
    assert [r.train_loss for r in resumed] == pytest.approx([r.train_loss for r in full], rel=1e-5)


def test_resume_without_state_is_a_clear_error(world, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(world, tmp_path / "none", small(), resume=True)


def test_bad_config_says_what_to_change():
    with pytest.raises(ValueError, match="--epochs"):
        TrainConfig(epochs=0)


def test_a_folder_of_images_with_txt_captions_is_training_data(tmp_path):
    from PIL import Image

    for i, (color, name) in enumerate([((200, 30, 30), "red"), ((30, 30, 200), "blue")] * 3):
        Image.new("RGB", (40 + i, 30), color).save(tmp_path / f"photo {i}.png")
        (tmp_path / f"photo {i}.txt").write_text(f"a {name} picture\n")
    (tmp_path / "no caption.png").write_bytes((tmp_path / "photo 0.png").read_bytes())
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "broken.txt").write_text("a broken picture")
    data = load_training_data(str(tmp_path), image_size=16, workers=1)
    assert len(data.examples) == 6
    assert {e.caption for e in data.examples} == {"a red picture", "a blue picture"}
    assert data.examples[0].truth is None
    assert data.skipped == {"no_caption": 1, "unidentified": 1}


def test_an_archive_without_captions_is_a_clear_error(tmp_path):
    from PIL import Image

    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="no captioned images"):
        load_training_data(str(tmp_path), image_size=16, workers=1)


def test_stop_after_runs_the_first_epochs_of_the_longer_schedule(world, tmp_path):
    full = train(world, tmp_path / "full", small(), architecture=TINY)
    cut = train(world, tmp_path / "cut", small(stop_after=2), architecture=TINY)
    assert [r.epoch for r in cut] == [1, 2]
    # same learning rates as the full schedule's first two epochs, so the same losses
    assert [r.train_loss for r in cut] == pytest.approx([r.train_loss for r in full[:2]], rel=1e-5)
    with pytest.raises(ValueError, match="--stop-after must be between 1 and --epochs"):
        TrainConfig(epochs=3, stop_after=4)
