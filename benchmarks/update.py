"""Nightly update cost: a full `imgindex run` against `imgindex update` nights on the same archive.

    python benchmarks/update.py --images 20000 --shards 40

Night 1 updates an empty collection (everything is new). Night 2 sees 1% new images (a new
shard), 0.5% changed (other pictures under existing keys in one shard) and 0.5% deleted (gone
from another shard). Night 3 sees no change: its wall time is the cost of listing and
fingerprinting the archive and joining it with the catalog. The baseline is `imgindex run` over
night 2's archive, in the same script. Every command runs as a user runs it (the CLI, a fresh
process), with the shipped default model and embedder, on Beam's local runner.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import cpu_model  # noqa: E402

from captioning.archives.synthetic.writer import ArchiveConfig, write_archive  # noqa: E402

IMGINDEX = [sys.executable, "-m", "pipelines.cli.main"]


def timed(args: list[str]) -> tuple[float, dict | None]:
    started = time.perf_counter()
    proc = subprocess.run([*IMGINDEX, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"imgindex {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    out = proc.stdout.strip()
    return seconds, json.loads(out) if out.startswith("{") else None


def rewrite_tar(path: Path, keep: int, replace_from: Path | None, replace: int) -> None:
    """Keep the first `keep` samples of a tar; with `replace_from`, give the first `replace`
    kept keys the image bytes of samples from another tar (changed images)."""
    with tarfile.open(path) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers() if m.isfile()]  # type: ignore[union-attr]
    keys = sorted({m.name.split(".")[0] for m, _ in members})[:keep]
    donors: list[bytes] = []
    if replace_from is not None:
        with tarfile.open(replace_from) as t:
            donors = [t.extractfile(m).read() for m in t.getmembers()  # type: ignore[union-attr]
                      if m.name.endswith((".png", ".jpg", ".webp"))][:replace]  # fmt: skip
    changed = dict(zip(keys[: len(donors)], donors, strict=False))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as out:
        for m, data in members:
            key, ext = m.name.split(".", 1)
            if key not in keys:
                continue
            if key in changed and ext in ("png", "jpg", "webp"):
                data = changed[key]
            info = tarfile.TarInfo(m.name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--shards", type=int, default=40)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/imgindex-bench-update"))
    args = ap.parse_args()
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    archive, col, full = work / "archive", work / "collection", work / "full-run"
    per_shard = args.images // args.shards
    write_archive(str(archive), ArchiveConfig(args.images, args.shards, seed=2026, format="tar"))

    rows = []
    night1, s1 = timed(["update", str(archive), "--collection", str(col), "--json"])
    rows.append(("night 1: everything new", night1, s1))

    # night 2: 1% new (one new shard), 0.5% changed, 0.5% deleted
    new = max(1, args.images // 100)
    write_archive(str(work / "new"), ArchiveConfig(new, 1, seed=7, format="tar", start=10**7))
    shutil.move(str(next((work / "new").glob("*.tar"))), archive / "shard-new.tar")
    shards = sorted(archive.glob("shard-0*.tar"))
    half = max(1, args.images // 200)
    rewrite_tar(shards[0], per_shard, replace_from=shards[-1], replace=half)  # changed
    rewrite_tar(shards[1], per_shard - half, replace_from=None, replace=0)  # deleted
    night2, s2 = timed(["update", str(archive), "--collection", str(col), "--json"])
    rows.append(("night 2: 1% new, 0.5% changed, 0.5% deleted", night2, s2))
    night3, s3 = timed(["update", str(archive), "--collection", str(col), "--json"])
    rows.append(("night 3: nothing changed (list + fingerprint + join)", night3, s3))
    baseline, _ = timed(["run", str(archive), "--out", str(full)])

    print(f"machine: {cpu_model()}, Python {platform.python_version()}")
    print(f"archive: {args.images} images in {args.shards} tar shards (+1 new shard on night 2)")
    print("| run | wall s | vs full run | new | changed | deleted | captioned | reused | "
          "shards read | published |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    print(f"| `imgindex run` (baseline, night 2's archive) | {baseline:.1f} | 1.00 | | | | | | | |")
    for name, seconds, summary in rows:
        c = (summary or {}).get("counts", {})
        print(
            f"| {name} | {seconds:.1f} | {seconds / baseline:.3f} | {c.get('new')} | "
            f"{c.get('changed')} | {c.get('deleted')} | {c.get('captioned')} | "
            f"{c.get('reused')} | {c.get('shards_read')} | {(summary or {}).get('version')} |"
        )
    print(f"goal: night 2 <= 5% of the full run: {night2 / baseline:.1%} "
          f"({'met' if night2 <= 0.05 * baseline else 'not met'})")  # fmt: skip


if __name__ == "__main__":
    main()
