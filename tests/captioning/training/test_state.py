"""Resume state is one unit: a crash at any write leaves one epoch's files, never a mix."""

from __future__ import annotations

import pytest
import torch

from captioning.native.checkpoint import Checkpoint
from captioning.native.config import ModelConfig
from captioning.native.model import CaptionModel
from captioning.native.vocab import Vocabulary
from captioning.training import state
from captioning.training.state import (
    STATE_DIR,
    Progress,
    ResumeState,
    has_state,
    load_state,
    save_state,
)

TINY = dict(encoder_channels=(8, 16), embed_dim=16, hidden_dim=32, attention_dim=16)


class Crash(Exception):
    """Stands in for a kill: nothing after the raising write runs."""


def epoch_state(epoch: int) -> tuple[Checkpoint, torch.optim.Optimizer, Progress]:
    """A model whose weights all equal `epoch`, an optimizer stepped `epoch` times."""
    vocab = Vocabulary.build(["a red circle", "two blue squares"])
    model = CaptionModel(ModelConfig(vocab_size=len(vocab), image_size=32, **TINY))
    optimizer = torch.optim.Adam(model.parameters())
    for _ in range(epoch):
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        optimizer.step()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(epoch)
    ckpt = Checkpoint(model, vocab, "test", f"epoch{epoch}")
    return ckpt, optimizer, Progress(epoch=epoch, best_cider=epoch / 10, history=[{"e": epoch}])


def save(out, epoch: int) -> None:
    save_state(out, *epoch_state(epoch))


def assert_one_epoch(loaded: ResumeState, epoch: int) -> None:
    """Model, optimizer and progress all come from the save of `epoch`."""
    assert loaded.checkpoint.version == f"epoch{epoch}"
    assert all(bool((p == epoch).all()) for p in loaded.checkpoint.model.parameters())
    steps = {int(s["step"]) for s in loaded.optimizer["state"].values()}
    assert steps == {epoch}
    assert loaded.progress == Progress(epoch=epoch, best_cider=epoch / 10, history=[{"e": epoch}])


def leftovers(out) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name != STATE_DIR)


def test_saved_state_loads_back_into_an_optimizer(tmp_path):
    save(tmp_path, 1)
    save(tmp_path, 2)
    loaded = load_state(tmp_path)
    assert_one_epoch(loaded, 2)
    optimizer = torch.optim.Adam(loaded.checkpoint.model.parameters())
    optimizer.load_state_dict(loaded.optimizer)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("part", ["save_checkpoint", "save_file"])
def test_a_crash_while_writing_keeps_the_previous_state(tmp_path, monkeypatch, part):
    save(tmp_path, 1)
    real = getattr(state, part)

    def write_then_die(*args, **kwargs):
        real(*args, **kwargs)  # the file is complete, the rest of the save never happens
        raise Crash

    monkeypatch.setattr(state, part, write_then_die)
    with pytest.raises(Crash):
        save(tmp_path, 2)
    monkeypatch.undo()
    assert has_state(tmp_path)
    assert_one_epoch(load_state(tmp_path), 1)
    assert leftovers(tmp_path) == []  # the half-written folder was removed


def test_a_crash_between_the_renames_resumes_from_the_new_state(tmp_path, monkeypatch):
    save(tmp_path, 1)
    real, calls = state._rename, []

    def second_rename_dies(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the old folder is aside, the new one not yet in place
            raise Crash
        real(src, dst)

    monkeypatch.setattr(state, "_rename", second_rename_dies)
    with pytest.raises(Crash):
        save(tmp_path, 2)
    monkeypatch.undo()
    assert not (tmp_path / STATE_DIR).exists()
    assert has_state(tmp_path)
    assert_one_epoch(load_state(tmp_path), 2)
    assert (tmp_path / STATE_DIR).is_dir() and leftovers(tmp_path) == []


def test_an_aside_folder_alone_is_recovered(tmp_path):
    save(tmp_path, 1)
    (tmp_path / STATE_DIR).rename(tmp_path / f"{STATE_DIR}.old-abc")
    assert_one_epoch(load_state(tmp_path), 1)


def test_incomplete_leftover_folders_are_ignored_and_removed(tmp_path):
    save(tmp_path, 1)
    junk = tmp_path / f"{STATE_DIR}.tmp-junk"
    junk.mkdir()
    (junk / "model.safetensors").write_bytes(b"half")
    assert_one_epoch(load_state(tmp_path), 1)
    assert not junk.exists()

    (tmp_path / STATE_DIR).rename(tmp_path / "elsewhere")
    junk.mkdir()
    (junk / "model.safetensors").write_bytes(b"half")
    assert not has_state(tmp_path)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        load_state(tmp_path)
