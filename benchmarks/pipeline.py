"""Pipeline benchmarks: efficiency vs the raw model, peak memory by size, search latency.

    python benchmarks/pipeline.py efficiency --images 2000 [--batch-size 32] [-- BEAM_ARGS]
    python benchmarks/pipeline.py memory --sizes 2000,20000
    python benchmarks/pipeline.py search --index demo-out/run/index [--queries 200]

efficiency: end-to-end images/s from tar shards to Parquet, divided by the raw model's images/s on
the same images already decoded and preprocessed, same batch size, same run (the baseline).
memory: each size runs in a fresh process; peak RSS (ru_maxrss) of the largest process.
search: latency of `SearchIndex.search` per query, text embedding included.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORLD_SEED = 2026


def _machine() -> str:
    import platform

    import torch

    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown cpu"
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )


def _archive(root: Path, images: int, shards: int) -> Path:
    from captioning.archives.synthetic.writer import ArchiveConfig, write_archive

    out = root / f"world-{images}"
    if not out.exists():
        write_archive(
            str(out), ArchiveConfig(images=images, shards=shards, seed=WORLD_SEED, format="tar")
        )
    return out


def efficiency(args: argparse.Namespace, beam_args: list[str]) -> None:
    from captioning.api import CaptionerOptions
    from captioning.archives.listing import iter_shard, list_shards
    from captioning.images.decode import decode_image
    from captioning.registry import load_captioner
    from pipelines.caption.pipeline import CaptionConfig, run_caption

    root = Path(args.workdir)
    archive = _archive(root, args.images, args.shards)
    options = CaptionerOptions(device="cpu", beam_size=args.beam_size, cpu_heap=args.cpu_heap)
    out = root / "efficiency-out"
    config = CaptionConfig(
        input=str(archive),
        out=str(out),
        batch_size=args.batch_size,
        overwrite=True,
        captioner=options,
    )
    # Median of `repeats` runs on each side: on a shared 2-core machine one run varies by 30%.
    runs = [run_caption(config, beam_args) for _ in range(args.repeats)]
    summary = sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]
    e2e_all = sorted(r.read / r.seconds for r in runs)
    e2e = statistics.median(e2e_all)

    # Baseline: the same images, decoded and preprocessed before the clock starts.
    options.set_up_process()
    captioner = load_captioner(None, options)
    inputs = [
        captioner.preprocess(decode_image(e.data).image)
        for s in list_shards(str(archive))
        for e in iter_shard(s)
        if e.data is not None
    ]
    raw_all = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for i in range(0, len(inputs), args.batch_size):
            captioner.caption(inputs[i : i + args.batch_size])
        raw_all.append(len(inputs) / (time.perf_counter() - start))
    raw_all.sort()
    raw = statistics.median(raw_all)

    print(f"machine: {_machine()}")
    print(
        f"{summary.read} images in {args.shards} tar shards, batch {args.batch_size}, "
        f"beam {args.beam_size}, CPU heap {args.cpu_heap}, "
        f"beam args {beam_args or '(local default)'}\n"
    )
    print(f"| measure | images/s, median of {args.repeats} (range) |")
    print("|---|---:|")
    print(f"| raw model, pre-decoded (baseline) | {raw:.1f} ({raw_all[0]:.0f}-{raw_all[-1]:.0f}) |")
    print(f"| end to end, shards -> Parquet | {e2e:.1f} ({e2e_all[0]:.0f}-{e2e_all[-1]:.0f}) |")
    print(f"| **efficiency** | **{e2e / raw:.2f}** |")
    print(
        "\nper-stage seconds (summed over workers):",
        json.dumps({k: round(v, 1) for k, v in summary.stage_seconds.items()}),
        f"total wall {summary.seconds:.1f}",
    )


def memory(args: argparse.Namespace, beam_args: list[str]) -> None:
    root = Path(args.workdir)
    print(f"machine: {_machine()}; CPU heap {args.cpu_heap}\n")
    print("| images | seconds | peak RSS (MiB) | vs smallest |")
    print("|---:|---:|---:|---:|")
    base = None
    for n in [int(s) for s in args.sizes.split(",")]:
        archive = _archive(root, n, max(1, n // 250))
        out = root / f"memory-out-{n}"
        cmd = [
            sys.executable,
            "-m",
            "pipelines.cli.main",
            "caption",
            str(archive),
            "--out",
            str(out),
            "--overwrite",
            "--batch-size",
            str(args.batch_size),
            "--cpu-heap",
            args.cpu_heap,
            "--",
            *beam_args,
        ]
        start = time.perf_counter()
        code = f"""
import resource, subprocess, sys
p = subprocess.run({cmd!r}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kids_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(max(self_kb, kids_kb), p.returncode)
"""
        peak_kb, rc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
        if rc != "0":
            raise SystemExit(f"caption run of {n} images failed with exit code {rc}")
        mib = int(peak_kb) / 1024
        base = base or mib
        print(f"| {n} | {time.perf_counter() - start:.0f} | {mib:.0f} | {mib / base:.2f} |")


def search(args: argparse.Namespace, _beam_args: list[str]) -> None:
    from captioning.archives.synthetic.world import generate_image
    from indexing.search import open_index

    index = open_index(args.index)
    queries = [generate_image(777, i).references[-1] for i in range(args.queries)]
    index.search(queries[0], args.k)  # warm: loads the embedder
    times = []
    for q in queries:
        start = time.perf_counter()
        index.search(q, args.k)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    p99 = times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))]
    print(f"machine: {_machine()}")
    print(f"index: {args.index} ({index.count} captions), k={args.k}, {len(queries)} queries\n")
    print("| p50 ms | p99 ms | mean ms |")
    print("|---:|---:|---:|")
    print(f"| {statistics.median(times):.2f} | {p99:.2f} | {statistics.fmean(times):.2f} |")


def main() -> None:
    argv = sys.argv[1:]
    beam_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("efficiency", "memory", "search"))
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--sizes", default="2000,20000")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--beam-size", type=int, default=3)
    ap.add_argument("--index", default="demo-out/run/index")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--cpu-heap",
        default="keep",
        choices=("keep", "system"),
        help="efficiency and memory: CaptionerOptions.cpu_heap (process-wide)",
    )
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "imgindex-bench"))
    args = ap.parse_args(argv)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    {"efficiency": efficiency, "memory": memory, "search": search}[args.mode](args, beam_args)


if __name__ == "__main__":
    main()
