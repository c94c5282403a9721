"""Train several captioner variants at once on one GPU, then score each on held-out images.

A search tool for the shipped default, not part of the product: the data are decoded once per image
size, then each variant trains in its own forked process (the GPU runs them side by side: one
variant's small kernels leave most of the card idle). A variant still running at --deadline is
stopped; its best epoch so far is what gets scored (the report says it was cut short). Scores are
validation-style (greedy and beam 3 on every held-out image: CIDEr-D and attribute accuracy); the
numbers that go in the README come from `imgindex evaluate` on the model that is kept.

    python benchmarks/train_sweep.py 'data/train-world/*.tar' 'data/heldout-world' --out sweep \\
        --variant c128:128:32,64,128,192 --variant w128:128:48,96,192,256 --epochs 16 --device cuda
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from captioning.native.beam_search import DecodeOptions  # noqa: E402
from captioning.native.checkpoint import load_checkpoint  # noqa: E402
from captioning.training.config import EpochReport, TrainConfig  # noqa: E402
from captioning.training.data import TrainingData, load_training_data  # noqa: E402
from captioning.training.train import train, validate  # noqa: E402

_DATA: dict[int, TrainingData] = {}  # image size -> data, inherited by the forked children


def _subset(data: TrainingData, n: int) -> TrainingData:
    return TrainingData(data.images[:n], data.examples[:n], data.skipped)


def _run(name: str, size: int, channels: tuple[int, ...], limit: int | None, args) -> None:
    torch.set_num_threads(1)  # one core per variant: the GPU does the work
    data = _DATA[size] if limit is None else _subset(_DATA[size], limit)

    def on_epoch(r: EpochReport) -> None:
        print(f"[{name}] {json.dumps(asdict(r))}", flush=True)

    config = TrainConfig(epochs=args.epochs, seed=args.seed, patience=args.patience)
    train(
        data,
        Path(args.out) / name,
        config,
        architecture={"encoder_channels": channels},
        on_epoch=on_epoch,
        device=args.device,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("train", help="training shards (pattern or folder)")
    ap.add_argument("heldout", help="held-out archive with references and truth")
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--variant",
        action="append",
        required=True,
        help="NAME:IMAGE_SIZE:CHANNELS[:LIMIT], e.g. w128:128:48,96,192,256:24000",
    )
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--patience", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--workers", type=int, default=mp.cpu_count())
    ap.add_argument("--deadline", type=float, default=1e9, help="seconds of training at most")
    args = ap.parse_args()

    variants = []
    for v in args.variant:
        parts = v.split(":")
        if len(parts) not in (3, 4):
            sys.exit(f"--variant {v!r}: expected NAME:IMAGE_SIZE:CHANNELS[:LIMIT]")
        limit = int(parts[3]) if len(parts) == 4 else None
        variants.append(
            (parts[0], int(parts[1]), tuple(int(c) for c in parts[2].split(",")), limit)
        )

    t0 = time.perf_counter()
    for size in sorted({v[1] for v in variants}):
        _DATA[size] = load_training_data(args.train, size, workers=args.workers)
        print(
            f"decoded {len(_DATA[size].examples)} training images at {size} px "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )

    ctx = mp.get_context("fork")  # children inherit the decoded data; CUDA starts in each child
    procs = {
        name: ctx.Process(target=_run, args=(name, size, ch, lim, args))
        for name, size, ch, lim in variants
    }
    started = time.perf_counter()
    for p in procs.values():
        p.start()
    cut: set[str] = set()
    while any(p.is_alive() for p in procs.values()):
        if time.perf_counter() - started > args.deadline:
            for name, p in procs.items():
                if p.is_alive():
                    p.terminate()
                    cut.add(name)
            break
        time.sleep(1)
    for p in procs.values():
        p.join()
    print(
        f"training took {time.perf_counter() - started:.0f} s; cut short: {sorted(cut) or 'none'}",
        flush=True,
    )

    results = []
    for name, size, channels, limit in variants:
        model_dir = Path(args.out) / name
        if not (model_dir / "model.safetensors").is_file():
            print(f"| {name} | no checkpoint |", flush=True)
            continue
        ckpt = load_checkpoint(model_dir, device=args.device)
        held = load_training_data(args.heldout, size, workers=args.workers)
        rows = list(range(len(held.examples)))
        row = {
            "variant": name,
            "image_size": size,
            "channels": channels,
            "limit": limit,
            "cut_short": name in cut,
            "version": ckpt.version,
        }
        for beam in (1, 3):
            opts = DecodeOptions(beam_size=beam, max_length=ckpt.model.config.max_length)
            cider, attr = validate(ckpt.model, ckpt.vocab, held, rows, options=opts)
            row[f"beam{beam}"] = {"cider": cider, "attr": attr}
        results.append(row)
        print(
            f"| {name} | {size} px | {','.join(map(str, channels))} | {limit or 'all'} | "
            f"{ckpt.version} | greedy CIDEr {row['beam1']['cider']:.3f} "
            f"attr {row['beam1']['attr']:.3f} | beam3 CIDEr {row['beam3']['cider']:.3f} "
            f"attr {row['beam3']['attr']:.3f} |{' cut short' if name in cut else ''}",
            flush=True,
        )
    (Path(args.out) / "sweep.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
