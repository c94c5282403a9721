"""Several SDK worker processes, one model: share_model_across_processes via --model-copies.

Beam issue #22895 is the trap: with a shared model, RunInference hands run_inference a proxy to a
model living in another process. Our handler therefore preprocesses in the worker (CPU tensors
only cross the process boundary) and lets the captioner move inputs to its own device. Model
loads are counted with run_caption's public `on_model_load` hook, called where the model loads.
"""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest

from captioning.api import CaptionerOptions
from captioning.archives.synthetic.writer import ArchiveConfig, write_archive
from pipelines.caption.pipeline import CaptionConfig, run_caption

pytestmark = pytest.mark.slow
MULTI = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharing-archive")
    write_archive(str(out), ArchiveConfig(images=24, shards=4, seed=12, format="tar", workers=1))
    return out


def rows(out):
    table = pq.read_table(out / "captions", columns=["key", "sha256", "caption"])
    return sorted(map(tuple, (r.values() for r in table.to_pylist())))


def test_shared_model_loads_once_and_matches_one_process(archive, tiny_checkpoint, tmp_path):
    options = CaptionerOptions(device="cpu", beam_size=2, threads=1)
    single = run_caption(
        CaptionConfig(
            input=str(archive),
            out=str(tmp_path / "single"),
            model=str(tiny_checkpoint),
            batch_size=5,
            captioner=options,
        ),
        [],
    )
    log = tmp_path / "loads.txt"

    def record_load(captioner):  # runs where the model loads: the process that serves it
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {captioner.name}\n")

    shared = run_caption(
        CaptionConfig(
            input=str(archive),
            out=str(tmp_path / "shared"),
            model=str(tiny_checkpoint),
            batch_size=5,
            captioner=options,
            model_copies=1,
        ),
        MULTI,
        on_model_load=record_load,
    )
    assert shared.read == single.read == 24 and shared.balanced
    assert rows(tmp_path / "shared") == rows(tmp_path / "single")
    (load,) = log.read_text().splitlines()  # one model for both worker processes
    pid, name = load.split()
    assert name == "tiny" and int(pid) != os.getpid()  # loaded in a worker's process, not here
