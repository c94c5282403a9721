"""GPU images/s of an hf: captioner: shards -> read -> decode -> preprocess -> caption; raw model.

This measures our own loop, not the Beam pipeline (benchmarks/gpu_check.sh times `imgindex
caption` separately where Apache Beam is installed). A prefetch thread reads shard bytes and
prepares whole batches ahead of the model, on its own CUDA stream:
  - GPU path: HFCaptioner.preprocess_encoded, as the pipeline's --decode-on device runs it:
    captioning.images.device_decode.decode_batch (nvJPEG, batched; Pillow for what it refuses),
    then the model's own image processor on the GPU (transformers' torchvision-backed processors
    take `device=`), so the pixels go through the same code as on the CPU path;
  - CPU path: Pillow decode and the image processor in a thread pool, pinned host memory, a
    non-blocking copy.
The main thread only waits for a batch's event and runs generate. Then the model alone is timed on
batches already preprocessed on the GPU, and the peak GPU memory of each part is reported.
Finally the two paths are compared on the first batch: the largest pixel difference after
preprocessing and the share of identical captions.

    python benchmarks/gpu_throughput.py /tmp/bench/blip-base '/tmp/bench/shards/*.tar' \\
        --batch-size 64 256
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from captioning.api import CaptionerOptions  # noqa: E402
from captioning.archives.listing import iter_shard, list_shards  # noqa: E402
from captioning.hf.captioner import HFCaptioner  # noqa: E402
from captioning.hf.patches import speed_up, undo_speed_ups  # noqa: E402
from captioning.images.decode import DecodeError, decode_image  # noqa: E402


def read_bytes(pattern: str, limit: int | None = None) -> list[bytes]:
    out = []
    for shard in list_shards(pattern):
        for entry in iter_shard(shard):
            if entry.data is not None:
                out.append(entry.data)
                if limit is not None and len(out) == limit:
                    return out
    return out


def _batches(pattern: str, batch: int, limit: int | None = None):
    pending: list[bytes] = []
    count = 0
    for shard in list_shards(pattern):
        for entry in iter_shard(shard):
            if entry.data is None:
                continue
            pending.append(entry.data)
            if len(pending) == batch:
                yield pending
                pending, count = [], count + 1
                if limit is not None and count == limit:
                    return
    if pending:
        yield pending


def gpu_pixels(cap: HFCaptioner, datas: list[bytes]) -> torch.Tensor:
    """JPEG bytes -> (B, 3, S, S) pixel_values on the GPU in the model's dtype: the pipeline's
    --decode-on device path (HFCaptioner.preprocess_encoded: nvJPEG, then the image processor on
    the GPU); undecodable files are left out."""
    prepared = cap.preprocess_encoded(datas)
    pv = torch.cat([p["pixel_values"] for p in prepared if isinstance(p, dict)])  # (B, 3, S, S)
    return pv.to(cap.dtype)


def cpu_pixels(cap: HFCaptioner, datas: list[bytes], pool: ThreadPoolExecutor) -> torch.Tensor:
    """Pillow decode + the image processor on CPU threads -> pinned (B, 3, S, S), then the GPU."""

    def one(data: bytes) -> torch.Tensor | None:
        try:
            return cap.preprocess(decode_image(data).image)["pixel_values"]  # (1, 3, S, S)
        except DecodeError:
            return None

    parts = [p for p in pool.map(one, datas) if p is not None]
    pv = torch.cat(parts).pin_memory()  # (B, 3, S, S)
    return pv.to("cuda", non_blocking=True).to(cap.dtype)


def prefetch(
    cap: HFCaptioner,
    pattern: str,
    batch: int,
    gpu_decode: bool,
    depth: int = 3,
    limit: int | None = None,
):
    """A queue of (pixel_values on the GPU, ready event), then None; filled on a side stream."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stream = torch.cuda.Stream()
    pool = ThreadPoolExecutor(os.cpu_count() or 4)

    def fill() -> None:
        with torch.cuda.stream(stream):
            for datas in _batches(pattern, batch, limit):
                pv = gpu_pixels(cap, datas) if gpu_decode else cpu_pixels(cap, datas, pool)
                event = torch.cuda.Event()
                event.record(stream)
                q.put((pv, event))
        q.put(None)

    threading.Thread(target=fill, daemon=True).start()
    return q


def end_to_end(
    cap: HFCaptioner, pattern: str, batch: int, gpu_decode: bool, limit: int | None = None
) -> tuple[int, float]:
    """Images captioned and seconds taken, over the shards (or `limit` batches of them)."""
    q = prefetch(cap, pattern, batch, gpu_decode, limit=limit)
    done, t = 0, time.perf_counter()
    main = torch.cuda.current_stream()
    while (item := q.get()) is not None:
        pv, event = item
        main.wait_event(event)
        pv.record_stream(main)  # made on the side stream, used here: keep its memory till done
        cap.caption([{"pixel_values": pv[i : i + 1]} for i in range(pv.shape[0])])
        done += pv.shape[0]
    torch.cuda.synchronize()
    return done, time.perf_counter() - t


def raw_model(cap: HFCaptioner, datas: list[bytes], batch: int, repeats: int) -> float:
    pv = gpu_pixels(cap, datas[:batch])
    inputs = [{"pixel_values": pv[i : i + 1]} for i in range(pv.shape[0])]
    cap.caption(inputs)  # warm-up
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        cap.caption(inputs)
    torch.cuda.synchronize()
    return len(inputs) * repeats / (time.perf_counter() - t)


def compare_paths(cap: HFCaptioner, datas: list[bytes]) -> tuple[float, float]:
    """(largest |pixel difference| after preprocessing, share of identical captions)."""
    gpu = gpu_pixels(cap, datas)
    with ThreadPoolExecutor(4) as pool:
        cpu = cpu_pixels(cap, datas, pool)
    diff = (gpu.float() - cpu.float()).abs().max().item()
    a = cap.caption([{"pixel_values": gpu[i : i + 1]} for i in range(len(datas))])
    b = cap.caption([{"pixel_values": cpu[i : i + 1]} for i in range(len(datas))])
    same = sum(x.caption == y.caption for x, y in zip(a, b, strict=True)) / len(a)
    return diff, same


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a model directory (what follows hf:)")
    ap.add_argument("shards", help="shard pattern, e.g. '/tmp/shards/*.tar'")
    ap.add_argument("--batch-size", type=int, nargs="+", default=[64])
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--new-tokens", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cpu-decode", action="store_true", help="also time the CPU decode path")
    ap.add_argument(
        "--ab-speed-fixes",
        action="store_true",
        help="also time the raw model without captioning.hf.patches's fixes (e.g. BLIP's vision "
        "attention back to eager)",
    )
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
    opts.set_up_process()  # threads and CPU heap policy, once for this process
    cap = HFCaptioner(args.model, opts)
    datas = read_bytes(args.shards, limit=max(args.batch_size))
    for gpu_decode in (True, False):  # warm-up: kernels, nvJPEG handles, thread pools
        end_to_end(cap, args.shards, min(args.batch_size), gpu_decode, limit=2)
    for b in args.batch_size:
        name = f"{cap.family} {args.dtype} b={b}"
        torch.cuda.reset_peak_memory_stats()
        ips = raw_model(cap, datas, b, args.repeats)
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(
            f"| {name} | raw model, preprocessed batch on GPU | {ips:.1f} img/s | "
            f"{b * args.repeats} images | peak {peak:.2f} GiB |",
            flush=True,
        )
        if args.ab_speed_fixes and cap.speed_fixes:
            undo_speed_ups(cap.model)
            torch.cuda.reset_peak_memory_stats()
            off = raw_model(cap, datas, b, args.repeats)
            peak = torch.cuda.max_memory_allocated() / 2**30
            speed_up(cap.model, cap.family)
            print(
                f"| {name} | raw model without {'+'.join(cap.speed_fixes)} | {off:.1f} img/s | "
                f"{b * args.repeats} images | peak {peak:.2f} GiB |",
                flush=True,
            )
        for gpu_decode in (True, False) if args.cpu_decode else (True,):
            torch.cuda.reset_peak_memory_stats()
            n, s = end_to_end(cap, args.shards, b, gpu_decode)
            peak = torch.cuda.max_memory_allocated() / 2**30
            path = "GPU JPEG decode" if gpu_decode else "CPU decode (thread pool)"
            print(
                f"| {name} | end to end, {path} | {n / s:.1f} img/s ({n / s / ips:.0%} of raw) | "
                f"{n} images | peak {peak:.2f} GiB |",
                flush=True,
            )
    diff, same = compare_paths(cap, datas[:64])
    print(
        f"| {cap.family} | GPU vs CPU decode path, 64 images | max pixel difference {diff:.4f} "
        f"(normalised units) | identical captions {same:.0%} |",
        flush=True,
    )


if __name__ == "__main__":
    Image.init()  # register Pillow's plugins before the threads start
    main()
