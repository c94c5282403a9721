"""CPU speed of the native captioner: images/s by batch size, greedy vs beam, and training images/s.

    python benchmarks/captioner_cpu.py [--model DIR] [--images 256] [--batches 1,8,32,128]

Prints a markdown table with the machine, the versions, and each batch size's per-image cost
relative to batch 1 measured in the same run (the baseline). Inputs are preprocessed world images
(decoding is measured by the pipeline benchmark, not here).
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import time

import torch
from machine import cpu_model

from captioning.api import CaptionerOptions
from captioning.archives.synthetic.world import generate_image
from captioning.images.preprocess import normalize, to_model_input
from captioning.native.beam_search import DecodeOptions, decode
from captioning.native.captioner import NativeCaptioner
from captioning.native.model import CaptionModel, caption_loss
from captioning.native.vocab import Vocabulary


def machine() -> str:
    return (
        f"{cpu_model()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model directory (default: the shipped one)")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument(
        "--dtypes",
        default="float32,auto",
        help="encoder dtypes to compare (CaptionerOptions.dtype; auto = what the CLI uses)",
    )
    ap.add_argument(
        "--cpu-heap",
        default="keep",
        choices=("keep", "system"),
        help="CaptionerOptions.cpu_heap: process-wide, so the training line runs under it too",
    )
    ap.add_argument(
        "--encoder-only",
        action="store_true",
        help="time the CNN encoder alone, float32, in one call vs in the captioner's chunks",
    )
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.encoder_only:
        encoder_table(args.model, batches, args.repeats)
        return

    CaptionerOptions(device="cpu", cpu_heap=args.cpu_heap).set_up_process()
    caps = {
        d: NativeCaptioner(
            args.model,
            CaptionerOptions(device="cpu", beam_size=1, dtype=d, cpu_heap=args.cpu_heap),
        )
        for d in args.dtypes.split(",")
    }
    cap = next(iter(caps.values()))
    size = cap.image_size
    pool = torch.stack([to_model_input(_rgb(i), size) for i in range(args.images)])  # (N,3,S,S)
    print(f"machine: {machine()}")
    print(f"model: {cap.name} {cap.version}, input {size}x{size}, {args.images} world images\n")
    print("| encoder dtype | decoding | batch | images/s | per-image ms | cost vs batch 1 |")
    print("|---|---|---:|---:|---:|---:|")
    for (dtype, cap), beam in itertools.product(caps.items(), (1, 3)):
        options = DecodeOptions(beam_size=beam, max_length=cap.model.config.max_length)
        base_ms = None
        label = f"{dtype} ({str(cap.encoder_dtype).removeprefix('torch.')})"
        for b in batches:
            chunks = [pool[i : i + b] for i in range(0, args.images - b + 1, b)] or [pool[:b]]

            def run(chunks=chunks, options=options, model=cap.model) -> None:
                for c in chunks:
                    decode(model, normalize(c), options)

            n = sum(len(c) for c in chunks)
            sec = timed(run, args.repeats)
            ms = 1000 * sec / n
            base_ms = base_ms or ms
            name = "greedy" if beam == 1 else f"beam {beam}"
            print(f"| {label} | {name} | {b} | {n / sec:.1f} | {ms:.2f} | {ms / base_ms:.2f} |")

    # Training throughput: a fresh model of the same architecture, batch 64, teacher forcing.
    model = CaptionModel(cap.model.config).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    words = _captions(cap.vocab)  # (64, T)
    images = normalize(pool[:64].repeat(1 + 64 // len(pool), 1, 1, 1)[:64])

    def step() -> None:
        logits, alphas = model(images, words)
        loss = caption_loss(logits, alphas, words)
        opt.zero_grad()
        loss.backward()
        opt.step()

    sec = timed(step, args.train_steps)
    print(f"\ntraining (batch 64, teacher forcing + backward + Adam): {64 / sec:.1f} images/s")


def encoder_table(model_dir: str | None, batches: list[int], repeats: int) -> None:
    cap = NativeCaptioner(model_dir, CaptionerOptions(device="cpu", dtype="float32"))
    chunked, whole = cap.model.encoder, cap.model.encoder.inner
    size = cap.image_size
    print(f"machine: {machine()}")
    print(f"model: {cap.name} {cap.version}, input {size}x{size}, encoder alone, float32\n")
    print("| batch | one call, ms/image | in chunks of 32, ms/image |")
    print("|---:|---:|---:|")
    for b in batches:
        x = normalize(torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8))
        with torch.inference_mode():
            t1 = timed(lambda x=x: whole(x), repeats)
            t2 = timed(lambda x=x: chunked(x), repeats)
        print(f"| {b} | {1000 * t1 / b:.2f} | {1000 * t2 / b:.2f} |", flush=True)


def _rgb(i: int):
    from io import BytesIO

    from PIL import Image

    return Image.open(BytesIO(generate_image(99, i).data)).convert("RGB")


def _captions(vocab: Vocabulary) -> torch.Tensor:
    rows = [vocab.encode(generate_image(99, i).caption, 24) for i in range(64)]
    out = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


if __name__ == "__main__":
    main()
