"""Index types at scale: build time, memory, recall@10, queries/s and latency per index type.

    python benchmarks/index_scale.py [--vectors 1000000] [--base-captions 20000] \
        [--types flat,ivf-flat,ivf-sq8,ivf-pq,auto] [--queries 1000] [--workdir /tmp/index_scale]

Vectors: --base-captions distinct captions drawn from the synthetic world (canonical captions and
their references, captioning.archives.synthetic.world), embedded with the packaged MiniLM
(indexing.embed.TextEmbedder, bf16 on a CPU with native bf16), cached as .npy in --workdir. They
are extended to --vectors rows by perturbed copies: row i >= base is base[i % base] plus Gaussian
noise of standard deviation SIGMA per dimension, re-normalised. SIGMA is chosen so that a copy's
expected cosine to its base is COPY_COSINE (1 / sqrt(1 + D * SIGMA^2)); the measured mean is
printed. Queries: embeddings of the next --queries distinct world captions, none of them in the
base set. hnsw is only built when named (~400 s per 1M vectors on 2 cores).

Baseline, measured in the same run: exact search (faiss IndexFlatIP over every vector, batched,
all threads), which is also the ground truth for recall@10. Per type: write_index with
AnnConfig(index_type=TYPE, target_recall=0.95) (build, tune and write, timed), the manifest's
tuned search parameters, recall and estimated resident bytes, then through open_index and
SearchIndex.search_vectors: recall@10 of the queries against exact, batched queries/s at one and
at two FAISS threads, and single-query p50/p99 latency at one thread (embedding excluded).
Prints a markdown table with the machine and the versions, then the verdict on each goal for auto.
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
from machine import cpu_model  # noqa: E402

from captioning.archives.synthetic.world import describe, sample_scene  # noqa: E402
from indexing.ann import AUTO, AnnConfig  # noqa: E402
from indexing.build import IndexEntry, Manifest, write_index  # noqa: E402
from indexing.embed import DEFAULT_EMBEDDER, TextEmbedder  # noqa: E402
from indexing.search import open_index  # noqa: E402
from indexing.tuning import TargetRecallError, search_with  # noqa: E402

K = 10
COPY_COSINE = 0.97
TARGET_RECALL = 0.95
# Goals for the auto choice (2-core machine).
GOAL_BUILD_S = 180.0
GOAL_RECALL = 0.95
GOAL_QPS = 2000.0
GOAL_P99_MS = 5.0


def machine() -> str:
    return (
        f"{cpu_model()}; Python {platform.python_version()}, "
        f"faiss {faiss.__version__}, numpy {np.__version__}"
    )


def world_captions(n_base: int, n_queries: int, seed: int) -> tuple[list[str], list[str]]:
    """(n_base distinct world captions, the next n_queries distinct ones, disjoint from them)."""
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    while len(seen) < n_base + n_queries:
        _, references = describe(sample_scene(rng), rng)
        for text in references:
            if len(seen) < n_base + n_queries:
                seen.setdefault(text, None)
    texts = list(seen)
    return texts[:n_base], texts[n_base:]


def bench_entries(texts: list[str], n: int, seed: int) -> list[IndexEntry]:
    """Row i: the caption of its base vector (i mod len(texts)), one of 100 shard names and a
    seeded size, so the index can also serve benchmarks/serve.py's keyword and filter queries."""
    rng = np.random.default_rng(seed)
    widths = rng.integers(64, 1025, size=n)  # (n,)
    heights = rng.integers(64, 1025, size=n)  # (n,)
    return [
        IndexEntry(
            id=i,
            key=f"{i:09d}",
            caption=texts[i % len(texts)],
            source=f"bench-{i % 100:05d}.tar",
            member=f"{i:09d}.jpg",
            width=int(widths[i]),
            height=int(heights[i]),
        )
        for i in range(n)
    ]


def embedded(
    workdir: Path, n_base: int, n_queries: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(base (B, D), queries (Q, D)) float32 unit rows, cached in workdir."""
    base_path = workdir / f"base-{n_base}-{n_queries}-{seed}.npy"
    query_path = workdir / f"queries-{n_base}-{n_queries}-{seed}.npy"
    if base_path.exists() and query_path.exists():
        return np.load(base_path), np.load(query_path)
    base_texts, query_texts = world_captions(n_base, n_queries, seed)
    embedder = TextEmbedder(DEFAULT_EMBEDDER)
    start = time.perf_counter()
    vectors = embedder.embed(base_texts + query_texts, batch_size=128)  # (B+Q, D)
    took = time.perf_counter() - start
    print(
        f"embedded {len(vectors)} captions in {took:.1f} s "
        f"({len(vectors) / took:.0f}/s, bf16={embedder.uses_bf16})",
        flush=True,
    )
    base, queries = np.ascontiguousarray(vectors[:n_base]), np.ascontiguousarray(vectors[n_base:])
    np.save(base_path, base)
    np.save(query_path, queries)
    return base, queries


def extend(base: np.ndarray, n: int, sigma: float, seed: int) -> tuple[np.ndarray, float]:
    """(N, D) rows: base, then perturbed copies; and the mean cosine of a copy to its base."""
    b, d = base.shape
    out = np.empty((n, d), dtype=np.float32)  # (N, D)
    out[: min(b, n)] = base[: min(b, n)]
    rng = np.random.default_rng(seed)
    cosines = []
    chunk = 100_000
    for start in range(b, n, chunk):
        stop = min(n, start + chunk)
        src = base[np.arange(start, stop) % b]  # (C, D)
        noisy = src + rng.standard_normal(src.shape, dtype=np.float32) * np.float32(sigma)
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
        out[start:stop] = noisy
        cosines.append(np.einsum("ij,ij->i", noisy, src))  # (C,)
    mean_cos = float(np.concatenate(cosines).mean()) if cosines else 1.0
    return out, mean_cos


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def measure(index_dir: Path, queries: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    idx = open_index(index_dir)
    search = idx.search_vectors
    search(queries[:8], K)  # warm up
    faiss.omp_set_num_threads(1)
    start = time.perf_counter()
    hits = search(queries, K)
    qps1 = len(queries) / (time.perf_counter() - start)
    found = np.array([[int(h.key) for h in row] + [-1] * (K - len(row)) for row in hits])  # (Q, K)
    latencies = []
    for i in range(len(queries)):
        t = time.perf_counter()
        search(queries[i : i + 1], K)
        latencies.append((time.perf_counter() - t) * 1000)
    # The FAISS search alone, without mapping ids to entries (SearchIndex._hits).
    index, kind, params = idx._index, idx.manifest.index_type, idx.search_params
    start = time.perf_counter()
    search_with(index, kind, params, queries, K)  # (Q, D) -> (Q, K)
    raw_qps1 = len(queries) / (time.perf_counter() - start)
    raw = []
    for i in range(len(queries)):
        t = time.perf_counter()
        search_with(index, kind, params, queries[i : i + 1], K)
        raw.append((time.perf_counter() - t) * 1000)
    faiss.omp_set_num_threads(2)
    start = time.perf_counter()
    search(queries, K)
    qps2 = len(queries) / (time.perf_counter() - start)
    start = time.perf_counter()
    search_with(index, kind, params, queries, K)
    raw_qps2 = len(queries) / (time.perf_counter() - start)
    return {
        "recall": recall_at_k(found, truth),
        "qps1": qps1,
        "qps2": qps2,
        "p50": float(np.percentile(latencies, 50)),
        "p99": float(np.percentile(latencies, 99)),
        "raw_qps1": raw_qps1,
        "raw_qps2": raw_qps2,
        "raw_p50": float(np.percentile(raw, 50)),
        "raw_p99": float(np.percentile(raw, 99)),
    }


HEADER = (
    "| type | built | build s | params | bytes (est.) | tuned R@10 | R@10 | q/s 1 thr | "
    "q/s 2 thr | x exact | p50 ms | p99 ms | FAISS q/s 1 thr | FAISS q/s 2 thr | FAISS p50 ms | "
    "FAISS p99 ms |\n"
    "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def table_row(r: dict, exact_qps: float) -> str:
    tuned = "-" if r["tuned_recall"] is None else f"{r['tuned_recall']:.3f}"
    return (
        f"| {r['type']} | {r['built']} | {r['build_s']:.1f} | {r['params']} | "
        f"{r['bytes'] / 1e6:,.0f} MB | {tuned} | {r['recall']:.3f} | {r['qps1']:,.0f} | "
        f"{r['qps2']:,.0f} | {r['qps2'] / exact_qps:.1f} | {r['p50']:.2f} | {r['p99']:.2f} | "
        f"{r['raw_qps1']:,.0f} | {r['raw_qps2']:,.0f} | {r['raw_p50']:.2f} | {r['raw_p99']:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--base-captions", type=int, default=20_000)
    parser.add_argument("--types", default="flat,ivf-flat,ivf-sq8,ivf-pq,auto")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/index_scale"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    types = [t.strip() for t in args.types.split(",") if t.strip()]

    base, queries = embedded(args.workdir, args.base_captions, args.queries, args.seed)
    d = base.shape[1]
    sigma = math.sqrt((1 / COPY_COSINE**2 - 1) / d)
    vectors, mean_cos = extend(base, args.vectors, sigma, args.seed)
    print(
        f"{len(vectors)} x {d} vectors: {len(base)} caption embeddings + perturbed copies, "
        f"sigma {sigma:.5f} per dimension, measured mean cosine copy-to-base {mean_cos:.4f}",
        flush=True,
    )

    faiss.omp_set_num_threads(2)
    exact = faiss.IndexFlatIP(d)
    exact.add(vectors)
    start = time.perf_counter()
    _, truth = exact.search(queries, K)  # (Q, D) -> (Q, K) row numbers = ids
    exact_qps = len(queries) / (time.perf_counter() - start)
    del exact
    print(
        f"exact baseline (IndexFlatIP, 2 threads, batched): {exact_qps:.0f} queries/s", flush=True
    )

    embedder = TextEmbedder(DEFAULT_EMBEDDER)
    texts, _ = world_captions(args.base_captions, args.queries, args.seed)
    entries = bench_entries(texts, len(vectors), args.seed)
    rows = []
    missed: list[str] = []  # types whose tuning cannot reach TARGET_RECALL
    for kind in types:
        out = args.workdir / kind
        manifest = Manifest(
            embedder_name=embedder.name,
            embedder_sha256=embedder.sha256,
            dimension=d,
            count=len(vectors),
            caption_files=("bench.parquet",),
            imgindex_version="bench",
        )
        faiss.omp_set_num_threads(2)
        start = time.perf_counter()
        try:
            write_index(
                out,
                entries,
                vectors,
                manifest,
                overwrite=True,
                ann=AnnConfig(index_type=kind, target_recall=TARGET_RECALL, seed=args.seed),
            )
        except TargetRecallError as err:  # a named type that cannot reach the target: say so
            missed.append(f"{kind}: {err} (after {time.perf_counter() - start:.1f} s)")
            print(f"{kind}: {err}", flush=True)
            continue
        build_s = time.perf_counter() - start
        written = open_index(out, embedder=embedder).manifest
        m = measure(out, queries, truth)
        row = {"type": kind, "built": written.index_type, "build_s": build_s, **m}
        row |= {
            "params": ", ".join(f"{k}={v}" for k, v in written.search_params) or "-",
            "bytes": written.index_bytes or 0,
            "tuned_recall": written.recall_at_10,
        }
        rows.append(row)
        print(table_row(row, exact_qps), flush=True)
        if kind != AUTO:  # auto's directory stays: benchmarks/serve.py serves it
            shutil.rmtree(out, ignore_errors=True)

    print()
    print(f"Machine: {machine()}")
    print(f"Date: {datetime.date.today().isoformat()}")
    print(
        f"Vectors: {len(vectors):,} x {d}: {len(base):,} embedded world captions + perturbed "
        f"copies (sigma {sigma:.5f}, mean cosine to base {mean_cos:.4f}); {len(queries)} queries "
        "= embeddings of held-out world captions"
    )
    print(f"Baseline: exact IndexFlatIP, batched, 2 threads: {exact_qps:,.0f} queries/s")
    print()
    print(HEADER)
    for r in rows:
        print(table_row(r, exact_qps))
    for line in missed:
        print(f"Not built, target recall {TARGET_RECALL} out of reach: {line}")
    auto = next((r for r in rows if r["type"] == AUTO), None)
    if auto is not None:
        print()
        print(f"Goals for auto ({auto['built']}) at {len(vectors):,} vectors:")
        goals = [
            ("build <= 3 min", auto["build_s"] <= GOAL_BUILD_S, f"{auto['build_s']:.1f} s"),
            ("recall@10 >= 0.95", auto["recall"] >= GOAL_RECALL, f"{auto['recall']:.3f}"),
            (
                ">= 2,000 queries/s batched, 2 threads, search_vectors",
                auto["qps2"] >= GOAL_QPS,
                f"{auto['qps2']:,.0f}; FAISS alone {auto['raw_qps2']:,.0f}",
            ),
            (
                "p99 single query <= 5 ms, search_vectors",
                auto["p99"] <= GOAL_P99_MS,
                f"{auto['p99']:.2f} ms; FAISS alone {auto['raw_p99']:.2f} ms",
            ),
        ]
        for name, ok, value in goals:
            print(f"- {name}: {'met' if ok else 'NOT met'} ({value})")


if __name__ == "__main__":
    main()
