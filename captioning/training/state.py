"""A training run's resume state <-> one folder: the last epoch's model, optimizer and progress.

The three parts are written as one unit, so a run killed at any moment resumes from one epoch's
model, optimizer and counters, never a mix. A save writes a fresh `.train-state.tmp-<id>/` next to
the state folder and syncs it, then swaps it in with two renames (the old folder aside to
`.train-state.old-<id>/`, the new one to `.train-state/`) and deletes the old one. A kill between
the two renames leaves no `.train-state/`; loading finds the complete new folder and finishes the
swap. Leftover temporary or aside folders are removed by the next load or save.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from captioning.errors import MissingInputError
from captioning.native.checkpoint import (
    CONFIG,
    VOCAB,
    WEIGHTS,
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
)

logger = logging.getLogger(__name__)

STATE_DIR = ".train-state"  # inside the output folder
OPTIMIZER, PROGRESS = "optimizer.safetensors", "state.json"
# PROGRESS is written last: a folder that has it (and the rest) was written to the end.
_FILES = (WEIGHTS, CONFIG, VOCAB, OPTIMIZER, PROGRESS)
_NEW, _OLD = f"{STATE_DIR}.tmp-", f"{STATE_DIR}.old-"


@dataclass(slots=True)
class Progress:
    """The counters a resumed run continues from (state.json, with the optimizer's groups)."""

    epoch: int = 0  # epochs done
    best_cider: float = -1.0
    bad_epochs: int = 0  # epochs since the best one
    history: list[dict[str, Any]] = field(default_factory=list)  # one EpochReport dict per epoch


@dataclass(frozen=True, slots=True)
class ResumeState:
    checkpoint: Checkpoint  # the last epoch's model, not necessarily the best
    optimizer: dict[str, Any]  # for torch.optim.Optimizer.load_state_dict
    progress: Progress


def has_state(out: str | Path) -> bool:
    """Whether `out` holds a resume state (including one whose swap a crash interrupted)."""
    return _settled(Path(out)) is not None


def save_state(
    out: str | Path, ckpt: Checkpoint, optimizer: torch.optim.Optimizer, progress: Progress
) -> Path:
    """Replace the resume state in `out` with this epoch's, as one unit; return its folder."""
    out = Path(out)
    _recover(out)
    new = out / f"{_NEW}{uuid.uuid4().hex}"
    _write(new, ckpt, optimizer.state_dict(), progress)
    return _swap_in(new, out / STATE_DIR)


def load_state(out: str | Path, device: str | torch.device = "cpu") -> ResumeState:
    """The resume state in `out`, after finishing or cleaning up an interrupted save.

    Raises:
        MissingInputError: `out` holds no complete resume state.
    """
    out = Path(out)
    d = _recover(out)
    if d is None:
        raise MissingInputError(f"nothing to resume in {out}: no {STATE_DIR}/{PROGRESS}")
    meta = json.loads((d / PROGRESS).read_text())
    param_groups = meta.pop("param_groups")
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in load_file(str(d / OPTIMIZER)).items():
        pid, name = k.split(".", 1)
        opt_state.setdefault(int(pid), {})[name] = v
    return ResumeState(
        checkpoint=load_checkpoint(d, device),
        optimizer={"state": opt_state, "param_groups": param_groups},
        progress=Progress(**meta),
    )


def _write(d: Path, ckpt: Checkpoint, optimizer: dict[str, Any], progress: Progress) -> None:
    """Write and sync every file of a state folder, the progress file last."""
    d.mkdir(parents=True)
    save_checkpoint(d, ckpt)
    tensors = {f"{pid}.{name}": v for pid, s in optimizer["state"].items() for name, v in s.items()}
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(d / OPTIMIZER))
    for name in (WEIGHTS, CONFIG, VOCAB, OPTIMIZER):
        _fsync(d / name)
    meta = {**asdict(progress), "param_groups": optimizer["param_groups"]}
    (d / PROGRESS).write_text(json.dumps(meta, indent=2))
    _fsync(d / PROGRESS)
    _fsync(d)


def _swap_in(new: Path, d: Path) -> Path:
    """Put the complete folder `new` at `d`; between the renames only `new` and the aside exist."""
    aside = d.with_name(f"{_OLD}{new.name.removeprefix(_NEW)}")
    if d.exists():
        _rename(d, aside)
    _rename(new, d)
    _fsync(d.parent)
    # A folder left behind is harmless (loads ignore it) and the next save removes it.
    shutil.rmtree(aside, ignore_errors=True)
    return d


def _rename(src: Path, dst: Path) -> None:
    os.replace(src, dst)


def _complete(d: Path) -> bool:
    return all((d / name).is_file() for name in _FILES)


def _settled(out: Path) -> Path | None:
    """The folder a load should use: the state folder, else the newest complete one a crash left
    mid-swap (the new one was synced before the swap began; the aside one is the epoch before)."""
    d = out / STATE_DIR
    if d.is_dir():
        return d if _complete(d) else None
    for prefix in (_NEW, _OLD):
        found = [p for p in out.glob(f"{prefix}*") if p.is_dir() and _complete(p)]
        if found:
            return max(found, key=lambda p: p.stat().st_mtime_ns)
    return None


def _recover(out: Path) -> Path | None:
    """Finish a swap a crash interrupted, remove leftover folders; return the state folder."""
    d = out / STATE_DIR
    found = _settled(out)
    if found is not None and found != d:
        logger.warning("finishing an interrupted save of the training state: %s", found.name)
        _rename(found, d)
        _fsync(out)
    for leftover in [*out.glob(f"{_NEW}*"), *out.glob(f"{_OLD}*")]:
        logger.info("removing %s left by an interrupted save", leftover.name)
        shutil.rmtree(leftover, ignore_errors=True)
    return d if found is not None else None


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk (folders only where the OS allows it)."""
    if path.is_dir() and os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
