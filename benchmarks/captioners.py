"""Images/s of our HFCaptioner against transformers' own pipeline, per family and batch, on CPU.

Each family is a base-size architecture with random weights (built offline by
tests/captioning/hf/tiny.py, cached under --workdir), so every caption is exactly --new-tokens
tokens long (min_new_tokens = max_new_tokens) and the timings compare like with like. Both sides
start from the same decoded PIL images and include preprocessing. The baseline is a plain loop over
`transformers.pipeline("image-text-to-text")` (transformers 5 folded "image-to-text" into it) at
batch 1 and the same pipeline with batch_size=N; for families that pipeline cannot run (GIT: it
passes token_type_ids to generate; VisionEncoderDecoder: it has no processor class) it is the
model-card loop (processor -> generate -> decode, one image at a time). The baseline runs
transformers' own model: captioning/hf/patches.py's fixes are undone while it runs. The heap policy
(--cpu-heap, captioning/runtime.py) is process-wide, so the baseline runs under the same one:
compare runs with --cpu-heap keep and system to see what it saves.

    python benchmarks/captioners.py --families blip --batches 1,8,32 --images 64
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from captioning.api import CaptionerOptions  # noqa: E402
from captioning.hf.captioner import HFCaptioner  # noqa: E402
from captioning.hf.patches import FIXES, speed_up, undo_speed_ups  # noqa: E402
from tests.captioning.hf.tiny import FAMILIES, build  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def images(n: int, seed: int = 0) -> list[Image.Image]:
    """Photo-sized random images of a few aspect ratios (the processors resize them)."""
    rng = np.random.default_rng(seed)
    sizes = [(640, 480), (480, 640), (500, 500), (800, 450)]
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for w, h in (sizes[i % len(sizes)] for i in range(n))
    ]


def model_dir(family: str, workdir: Path, size: str) -> Path:
    d = workdir / f"{family}-{size}"
    if not (d / "config.json").is_file():
        print(f"building a {size} {family} model in {d} ...", file=sys.stderr)
        build(family, d, size)
    return d


def time_ours(
    cap: HFCaptioner, imgs: list[Image.Image], batch: int, per_call: int | None = None
) -> float:
    # warm-up on one whole batch: lazy inits, and the heap grown to this batch size, as it is
    # from a job's second batch on (otherwise whichever side runs first pays the page faults)
    cap.caption([cap.preprocess(im) for im in imgs[: per_call or batch]])
    t = time.perf_counter()
    for i in range(0, len(imgs), batch):
        inputs = [cap.preprocess(im) for im in imgs[i : i + batch]]
        step = per_call or len(inputs)
        for j in range(0, len(inputs), step):
            cap.caption(inputs[j : j + step])
    return len(imgs) / (time.perf_counter() - t)


def baseline(cap: HFCaptioner, gen: dict):
    """A callable (images, batch) -> None running transformers' own path, and its name."""
    from transformers import pipeline

    if cap.family in ("blip", "blip-2", "image-text-to-text", "florence2"):
        pipe = pipeline(
            "image-text-to-text", model=cap.model, processor=cap.processor, device=cap.device
        )
        text = cap.preprocessor().text or cap.prompt or ""

        def run(imgs: list[Image.Image], batch: int) -> None:
            if batch == 1:
                for im in imgs:
                    pipe(images=im, text=text, generate_kwargs=gen)
            else:
                pipe(images=imgs, text=[text] * len(imgs), batch_size=batch, generate_kwargs=gen)

        return run, "pipeline"

    def loop(imgs: list[Image.Image], batch: int) -> None:
        for i in range(0, len(imgs), batch):
            chunk = imgs[i : i + batch]
            if cap.processor is not None:
                enc = cap.processor(images=chunk, return_tensors="pt")
            else:
                enc = cap.image_processor(images=chunk, return_tensors="pt")
            with torch.inference_mode():
                out = cap.model.generate(pixel_values=enc["pixel_values"], **gen)
            cap.tokenizer.batch_decode(out, skip_special_tokens=True)

    return loop, "model-card loop"


def time_baseline(
    cap: HFCaptioner, run, imgs: list[Image.Image], batch: int, restore: bool
) -> float:
    """The baseline on transformers' own model: our speed fixes are off while it runs."""
    undo_speed_ups(cap.model)
    try:
        run(imgs[:batch], batch)  # warm-up, as time_ours
        t = time.perf_counter()
        run(imgs, batch)
        return len(imgs) / (time.perf_counter() - t)
    finally:
        if restore:
            speed_up(cap.model, cap.family)


def gflops_per_image(cap: HFCaptioner, imgs: list[Image.Image]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    inputs = [cap.preprocess(im) for im in imgs]
    with FlopCounterMode(display=False) as counter:
        cap.caption(inputs)
    return counter.get_total_flops() / len(imgs) / 1e9


def count_flops(args, opts: CaptionerOptions, imgs: list[Image.Image]) -> None:
    """Work, not time: unaffected by a noisy machine. Eager attention on both sides, because the
    flop counter has no formula for CPU SDPA kernels (it would count them as free)."""
    print(
        f"| family | beams | GFLOP/image | GFLOP/image, once-per-image fixes ({len(imgs)} images) |"
    )
    print("|---|---:|---:|---:|")
    once = [f for f in FIXES if f != "sdpa-vision"]
    for family in args.families.split(","):
        cap = HFCaptioner(str(model_dir(family, args.workdir, args.size)), opts)
        undo_speed_ups(cap.model)
        before = gflops_per_image(cap, imgs)
        applied = speed_up(cap.model, family, once)
        after = gflops_per_image(cap, imgs)
        print(
            f"| {family} | {args.beam_size} | {before:.1f} | {after:.1f} "
            f"({'+'.join(applied) or 'none apply'}) |",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--families",
        default=",".join(FAMILIES),
        help=f"comma-separated, from {', '.join(FAMILIES)}",
    )
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=20)
    ap.add_argument("--beam-size", type=int, default=1)
    ap.add_argument("--size", default="base", choices=("base", "tiny"))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="time each batch size N times, ours and the baseline in turn; report the medians",
    )
    ap.add_argument("--dtype", default="float32", help="float32, bfloat16, float16 or auto")
    ap.add_argument(
        "--cpu-images",
        type=int,
        default=None,
        help="split each batch into caption calls of at most N images (measures a cap on "
        "images per generate call; captioning.hf.captioner has none for greedy decoding)",
    )
    ap.add_argument(
        "--no-speed-fixes",
        action="store_true",
        help="undo captioning.hf.patches's fixes (SDPA in BLIP's vision tower; under beam search, "
        "image-only work once per image) to measure what they save",
    )
    ap.add_argument(
        "--beam-sequences",
        type=int,
        default=None,
        help="override captioning.hf.captioner.MAX_BEAM_SEQUENCES (sequences per generate call on "
        "a CPU under beam search) to measure that cap",
    )
    ap.add_argument(
        "--flops",
        action="store_true",
        help="instead of timing: GFLOP per image of one caption call on --images images "
        "(torch.utils.flop_counter), eager attention, with and without the once-per-image fixes",
    )
    ap.add_argument(
        "--cpu-heap",
        default="keep",
        choices=("keep", "system"),
        help="CaptionerOptions.cpu_heap, for this whole process",
    )
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/imgindex-bench-models"))
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.beam_sequences is not None:
        import captioning.hf.captioner as hf

        hf.MAX_BEAM_SEQUENCES = args.beam_sequences
    imgs = images(args.images)
    opts = CaptionerOptions(
        device="cpu",
        dtype=args.dtype,
        beam_size=args.beam_size,
        max_length=args.new_tokens,
        min_new_tokens=args.new_tokens,
        threads=args.threads,
        cpu_heap=args.cpu_heap,
    )
    opts.set_up_process()  # threads and CPU heap policy, once for this process
    if args.threads:  # before anything runs, so the baseline gets the same threads
        torch.set_num_threads(args.threads)
    gen = {
        "max_new_tokens": args.new_tokens,
        "min_new_tokens": args.new_tokens,
        "num_beams": args.beam_size,
        "do_sample": False,
    }
    import transformers

    print(
        f"machine: {cpu_name()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}; python {platform.python_version()}, torch "
        f"{torch.__version__}, transformers {transformers.__version__}"
    )
    print(
        f"{args.size} models, random weights, {args.images} images, exactly {args.new_tokens} "
        f"new tokens, beam size {args.beam_size}, dtype {args.dtype}, "
        f"CPU images per call {args.cpu_images or 'default'}, speed fixes "
        f"{'off' if args.no_speed_fixes else 'on'}, CPU heap {args.cpu_heap}, median of "
        f"{args.repeats} interleaved run(s)\n"
    )
    if args.flops:
        count_flops(args, opts, imgs)
        return
    print(
        "| family | batch | ours img/s | baseline | baseline img/s | ours / baseline | "
        "ours per-image cost vs ours batch 1 |"
    )
    print("|---|---:|---:|---|---:|---:|---:|")
    for family in args.families.split(","):
        cap = HFCaptioner(str(model_dir(family, args.workdir, args.size)), opts)
        if args.no_speed_fixes:
            undo_speed_ups(cap.model)
        run, base_name = baseline(cap, gen)
        first = None
        for b in batches:
            ours_runs, their_runs = [], []
            for _ in range(args.repeats):  # interleaved, so drift hits both sides alike
                ours_runs.append(time_ours(cap, imgs, b, args.cpu_images))
                if not args.no_baseline:
                    their_runs.append(
                        time_baseline(cap, run, imgs, b, restore=not args.no_speed_fixes)
                    )
            ours = statistics.median(ours_runs)
            first = first or ours
            theirs = statistics.median(their_runs) if their_runs else None
            theirs_s = "-" if theirs is None else f"{theirs:.2f}"
            ratio = "-" if theirs is None else f"{ours / theirs:.2f}x"
            print(
                f"| {family} | {b} | {ours:.2f} | {base_name} b={b} | {theirs_s} | {ratio} | "
                f"{first / ours:.2f} |",
                flush=True,
            )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    print(f"\npeak resident memory of this process: {peak:.1f} GiB")


if __name__ == "__main__":
    main()
