"""Incremental IVF updates against rebuilds: what growth and drift cost, and the update's time.

    python benchmarks/index_incremental.py [--base 20000] [--dim 128] [--type ivf-flat] \
        [--workdir /tmp/index_incremental]

Vectors: unit-normalised Gaussian clusters (2 * CENTRES centres, noise SIGMA per dimension). The
first version is write_index(ann=AnnConfig(TYPE)) over --base vectors of the first CENTRES
centres. Each scenario then makes a second version two ways, from the same final vectors:

- incremental: indexing.incremental.update_index with a rule that never rebuilds (so every
  scenario is measured), then write_index(index=...); the table says what the default
  RebuildRule decides;
- rebuilt (the baseline, same run): write_index(ann=...) from scratch (new k-means, new nlist).

Scenarios: growth (more vectors of the same centres: x1.25 .. x4) and drift (a share of vectors
from CENTRES centres the quantizer never saw). Per version: seconds to make it, the tuned
nprobe, recall@10 of 1,000 fresh queries from the final mixture against exact search, and the
FAISS ms/query (batched, one thread) at the tuned nprobe.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from machine import cpu_model  # noqa: E402

from indexing.ann import AnnConfig  # noqa: E402
from indexing.build import (  # noqa: E402
    INDEX_FILE,
    MANIFEST_FILE,
    MAPPING_FILE,
    IndexEntry,
    Manifest,
    write_index,
)
from indexing.drift import QuantizerFit, RebuildRule, measure_fit  # noqa: E402
from indexing.incremental import update_index  # noqa: E402
from indexing.tuning import search_with  # noqa: E402

CENTRES = 1000
SIGMA = 0.5
K = 10
NEVER = RebuildRule(max_growth=1e9, min_shrink=0.0, max_residual_rise=1e9,
                    max_imbalance_rise=1e9)  # fmt: skip
GROWTH = (1.25, 1.5, 2.0, 3.0, 4.0)
DRIFT = (0.05, 0.1, 0.2, 0.4)
BURST = (0.05, 0.1, 0.2)
SCENARIOS = ("night", "growth", "drift", "burst")


def clustered(n: int, d: int, unseen: bool, seed: int) -> np.ndarray:
    """(n, d) unit vectors around the first (unseen=False) or second CENTRES centres."""
    centres = np.random.default_rng(0).standard_normal((2 * CENTRES, d)).astype(np.float32)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, CENTRES, n) + (CENTRES if unseen else 0)  # (n,)
    vectors = centres[pick] + SIGMA * rng.standard_normal((n, d)).astype(np.float32)  # (n, d)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def near_copies(seeds: np.ndarray, n: int, seed: int) -> np.ndarray:
    """(n, D) unit near-copies (noise of norm ~0.1: cosine ~0.995) of rows of seeds (S, D)."""
    rng = np.random.default_rng(seed)
    sigma = 0.1 / np.sqrt(seeds.shape[1])
    noisy = seeds[rng.integers(0, len(seeds), n)] + sigma * rng.standard_normal((n, seeds.shape[1]))
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


def entries(n: int, start: int = 0, version: int = 1) -> list[IndexEntry]:
    """Entries for rows start.. start+n; the caption names the version (a new one = changed)."""
    return [IndexEntry(id=i, key=f"k{i:07d}", caption=f"c{i} v{version}", source="s",
                       member=f"m{i}") for i in range(start, start + n)]  # fmt: skip


def manifest(n: int, d: int) -> Manifest:
    return Manifest(embedder_name="synthetic", embedder_sha256="0" * 64, dimension=d, count=n,
                    caption_files=(), imgindex_version="bench")  # fmt: skip


def measure(path: Path, vectors: np.ndarray, rows: list[IndexEntry], queries: np.ndarray
            ) -> dict[str, float]:  # fmt: skip
    """Tuned nprobe, fresh-query recall@10 against exact, batched 1-thread FAISS ms/query."""
    found_manifest = Manifest.from_json((path / MANIFEST_FILE).read_text())
    kind, params = found_manifest.index_type, found_manifest.params
    index = faiss.read_index(str(path / INDEX_FILE))
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)  # (N, D)
    _, truth = exact.search(queries, K)  # (Q, K) rows of vectors
    mapping = pq.read_table(path / MAPPING_FILE, columns=["id", "key"])
    row_of_key = {entry.key: row for row, entry in enumerate(rows)}
    keys = mapping.column("key").to_pylist()
    row_of = {i: row_of_key[key] for i, key in zip(mapping.column("id").to_pylist(), keys,
                                                    strict=True)}  # id -> row  # fmt: skip
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    times = []
    for _ in range(5):  # best of 5: other processes share the cores
        start = time.perf_counter()
        _, found = search_with(index, kind, params, queries, K)  # (Q, K) ids
        times.append(time.perf_counter() - start)
    ms = min(times) * 1000 / len(queries)
    faiss.omp_set_num_threads(threads)
    hits = sum(len({row_of.get(i, -1) for i in f} & set(t))
               for f, t in zip(found.tolist(), truth.tolist(), strict=True))  # fmt: skip
    return {"nprobe": params.get("nprobe", 0), "recall": hits / truth.size, "ms": ms}


def scenario(work: Path, first: Path, rows: list[IndexEntry], vectors: np.ndarray,
             queries: np.ndarray, ann: AnnConfig) -> dict[str, object]:  # fmt: skip
    n, d = vectors.shape
    for sub in ("inc", "full"):
        shutil.rmtree(work / sub, ignore_errors=True)
    start = time.perf_counter()
    update = update_index(first, rows, vectors, manifest(n, d), ann, rule=NEVER)
    assert update.index is not None, update.reason
    write_index(work / "inc", update.entries, vectors, update.manifest, index=update.index)
    inc_s = time.perf_counter() - start
    before = Manifest.from_json((first / MANIFEST_FILE).read_text())
    trained = QuantizerFit(before.trained_count or 0, before.train_residual or 0.0,
                           before.train_imbalance or 1.0)  # fmt: skip
    now = measure_fit(update.index, vectors)
    start = time.perf_counter()
    write_index(work / "full", rows, vectors, manifest(n, d), ann=ann)
    full_s = time.perf_counter() - start
    return {
        "n": n, "residual": now.residual / trained.residual - 1,
        "imbalance": now.imbalance / trained.imbalance - 1,
        "rule": RebuildRule().reason(trained, now) or "incremental",
        "inc": {**measure(work / "inc", vectors, rows, queries), "s": inc_s},
        "full": {**measure(work / "full", vectors, rows, queries), "s": full_s},
        "nlist": Manifest.from_json((work / "full" / MANIFEST_FILE).read_text()).factory,
        "steps": update.seconds,
    }  # fmt: skip


def row(name: str, r: dict) -> str:
    inc, full = r["inc"], r["full"]
    rule = r["rule"] if r["rule"] == "incremental" else "rebuild: " + r["rule"].split(":")[0]
    rule = rule if len(rule) < 40 else rule.split(" since")[0]
    return (f"| {name} | {r['n']:,} | {r['residual']:+.1%} | {r['imbalance']:+.1%} | {rule} | "
            f"{inc['s']:.1f} | {inc['nprobe']} | {inc['recall']:.3f} | {inc['ms']:.3f} | "
            f"{full['s']:.1f} | {r['nlist']} | {full['nprobe']} | {full['recall']:.3f} | "
            f"{full['ms']:.3f} | {inc['ms'] / full['ms']:.2f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--type", default="ivf-flat", choices=("ivf-flat", "ivf-sq8"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/index_incremental"))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated, of {', '.join(SCENARIOS)}")  # fmt: skip
    args = parser.parse_args()
    work, n0, d = args.workdir, args.base, args.dim
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ann = AnnConfig(index_type=args.type, mutable=True)
    base = clustered(n0, d, unseen=False, seed=1)
    start = time.perf_counter()
    write_index(work / "v1", entries(n0), base, manifest(n0, d), ann=ann)
    print(f"first version: {n0:,} x {d} {args.type} in {time.perf_counter() - start:.1f} s")
    results = []
    queries = clustered(1000, d, unseen=False, seed=9)
    if "night" in args.scenarios:  # 0.5% deleted, 0.5% changed, 1% new
        cut, changed, new = n0 // 200, n0 // 200, n0 // 100
        keep = base[cut:].copy()
        keep[:changed] = clustered(changed, d, unseen=False, seed=4)  # other vectors, same keys
        rows = entries(changed, cut, version=2) + entries(n0 - cut - changed, cut + changed)
        rows += entries(new, n0)
        vectors = np.concatenate([keep, clustered(new, d, unseen=False, seed=2)])
        results.append(("night: -0.5% ~0.5% +1%", scenario(work, work / "v1", rows, vectors,
                                                            queries, ann)))  # fmt: skip
    for growth in GROWTH if "growth" in args.scenarios else ():
        extra = clustered(int(n0 * (growth - 1)), d, unseen=False, seed=2)
        vectors = np.concatenate([base, extra])
        results.append((f"growth x{growth:g}", scenario(work, work / "v1", entries(len(vectors)),
                                                        vectors, queries, ann)))  # fmt: skip
    for share in DRIFT if "drift" in args.scenarios else ():
        extra = clustered(int(n0 * share), d, unseen=True, seed=3)
        fresh = int(1000 * share / (1 + share))
        mixed = np.concatenate([clustered(1000 - fresh, d, False, 9), clustered(fresh, d, True, 9)])
        vectors = np.concatenate([base, extra])
        results.append((f"drift +{share:.0%} unseen", scenario(work, work / "v1",
                        entries(len(vectors)), vectors, mixed, ann)))  # fmt: skip
    for share in BURST if "burst" in args.scenarios else ():
        # near-copies of 5 vectors (one archive of one subject): a few lists fill up; the
        # queries follow the data (the same share ask about that subject)
        extra = near_copies(base[:5], int(n0 * share), seed=6)
        fresh = int(1000 * share / (1 + share))
        mixed = np.concatenate([queries[: 1000 - fresh], near_copies(base[:5], fresh, seed=7)])
        vectors = np.concatenate([base, extra])
        results.append((f"burst +{share:.0%} near-copies", scenario(work, work / "v1",
                        entries(len(vectors)), vectors, mixed, ann)))  # fmt: skip
    print(f"\n{datetime.date.today()}, {cpu_model()}; Python {platform.python_version()}, "
          f"faiss {faiss.__version__}, numpy {np.__version__}; {args.type}, d={d}\n")  # fmt: skip
    print("| scenario | vectors | residual | imbalance | default rule | inc s | inc nprobe | "
          "inc R@10 | inc ms/q | rebuild s | rebuild factory | rebuild nprobe | rebuild R@10 | "
          "rebuild ms/q | ms ratio |")  # fmt: skip
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for name, r in results:
        print(row(name, r))
    print("\nincremental seconds by step (read, apply, fit, tune; the rest is writing):")
    for name, r in results:
        print(f"- {name}: {r['steps']}")


if __name__ == "__main__":
    main()
