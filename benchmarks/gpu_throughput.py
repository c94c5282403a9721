"""GPU images/s of an hf: captioner: shards -> read -> decode -> preprocess -> caption; raw model.

This measures our own loop, not the Beam pipeline (benchmarks/gpu_check.sh times `imgindex
caption` separately): a prefetch thread reads shard bytes (and, on the CPU-decode path, decodes
them) while the main thread decodes JPEGs on the GPU (torchvision.io.decode_jpeg, device="cuda";
other formats and undecodable files go through Pillow), preprocesses and captions. It then times the
model alone on batches that are already preprocessed and on the GPU, and reports the peak GPU memory
(torch.cuda.max_memory_allocated) of each part.

    python benchmarks/gpu_throughput.py /tmp/bench/blip-base '/tmp/bench/shards/*.tar' \
        --batch-size 64
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from captioning.backends import CaptionerOptions  # noqa: E402
from captioning.decode import DecodeError, decode_image  # noqa: E402
from captioning.hf import HFCaptioner  # noqa: E402
from captioning.shards import iter_shard, list_shards  # noqa: E402

_JPEG = b"\xff\xd8\xff"


def prefetch(pattern: str, decode_on_cpu: bool, depth: int = 256) -> queue.Queue:
    """A queue filled by a thread with (bytes, PIL image or None) per image, then None."""
    q: queue.Queue = queue.Queue(maxsize=depth)

    def fill() -> None:
        for shard in list_shards(pattern):
            for entry in iter_shard(shard):
                if entry.data is None:
                    continue
                image = None
                if decode_on_cpu or not entry.data.startswith(_JPEG):
                    try:
                        image = decode_image(entry.data).image
                    except DecodeError:
                        continue
                q.put((entry.data, image))
        q.put(None)

    threading.Thread(target=fill, daemon=True).start()
    return q


def gpu_pixel_values(cap: HFCaptioner, image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8 on the GPU -> (1, 3, S, S) normalised as the model's image processor does."""
    import torchvision.transforms.v2.functional as F

    ip = cap.image_processor
    size, crop = dict(ip.size), getattr(ip, "crop_size", None)
    if "shortest_edge" in size:  # CLIP-style: shortest edge, then a centre crop
        x = F.resize(image, size["shortest_edge"], antialias=True)  # (3, H', W')
        x = F.center_crop(x, [crop["height"], crop["width"]])  # (3, S, S)
    else:
        x = F.resize(image, [size["height"], size["width"]], antialias=True)  # (3, S, S)
    x = x.float().mul_(ip.rescale_factor)
    x = F.normalize(x, ip.image_mean, ip.image_std)
    return x.unsqueeze(0).to(cap.dtype)  # (3, S, S) -> (1, 3, S, S)


def on_gpu(cap: HFCaptioner, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pillow-path inputs in the GPU path's device and dtype, so one batch can mix both."""
    return {
        k: v.to("cuda", cap.dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()
    }


def end_to_end(cap: HFCaptioner, pattern: str, batch: int, gpu_decode: bool) -> tuple[int, float]:
    from torchvision.io import ImageReadMode, decode_jpeg

    q = prefetch(pattern, decode_on_cpu=not gpu_decode)
    done, pending, t = 0, [], time.perf_counter()
    while True:
        item = q.get()
        if item is not None:
            pending.append(item)
        if pending and (len(pending) == batch or item is None):
            jpegs = [torch.frombuffer(b, dtype=torch.uint8) for b, im in pending if im is None]
            decoded = iter(
                decode_jpeg(jpegs, mode=ImageReadMode.RGB, device="cuda") if jpegs else []
            )
            inputs = [
                on_gpu(cap, cap.preprocess(im))
                if im is not None
                else {"pixel_values": gpu_pixel_values(cap, next(decoded))}
                for _, im in pending
            ]
            cap.caption(inputs)
            done, pending = done + len(inputs), []
        if item is None:
            torch.cuda.synchronize()
            return done, time.perf_counter() - t


def raw_model(cap: HFCaptioner, pattern: str, batch: int, repeats: int) -> float:
    q = prefetch(pattern, decode_on_cpu=True)
    images = []
    while len(images) < batch and (item := q.get()) is not None:
        images.append(item[1])
    inputs = [on_gpu(cap, cap.preprocess(im)) for im in images]
    cap.caption(inputs)  # warm-up
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        cap.caption(inputs)
    torch.cuda.synchronize()
    return len(inputs) * repeats / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a model directory (what follows hf:)")
    ap.add_argument("shards", help="shard pattern, e.g. '/tmp/shards/*.tar'")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--new-tokens", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark is for a GPU machine")
    opts = CaptionerOptions(
        device="cuda",
        dtype=args.dtype,
        beam_size=1,
        max_length=args.new_tokens,
        min_new_tokens=args.new_tokens,
    )
    cap = HFCaptioner(args.model, opts)
    name = f"{cap.family} {args.dtype} b={args.batch_size}"
    for gpu_decode in (True, False):
        torch.cuda.reset_peak_memory_stats()
        n, s = end_to_end(cap, args.shards, args.batch_size, gpu_decode)
        peak = torch.cuda.max_memory_allocated() / 2**30
        path = "GPU JPEG decode" if gpu_decode else "CPU decode (prefetch thread)"
        print(
            f"| {name} | end to end, {path} | {n / s:.1f} img/s | {n} images | "
            f"peak {peak:.2f} GiB |",
            flush=True,
        )
    torch.cuda.reset_peak_memory_stats()
    ips = raw_model(cap, args.shards, args.batch_size, args.repeats)
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(
        f"| {name} | raw model, preprocessed batch on GPU | {ips:.1f} img/s | "
        f"{args.batch_size * args.repeats} images | peak {peak:.2f} GiB |",
        flush=True,
    )


if __name__ == "__main__":
    main()
