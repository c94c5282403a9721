"""Retrieval with other words than the captions: precision@10 of paraphrase queries per embedder.

    python benchmarks/embed_paraphrase.py [--embedders all-MiniLM-L6-v2,mpnet] [--captions 2000]

Indexes distinct world captions (exact inner product), asks queries that name a colour and a shape
with words the world never uses ("a crimson disc"), and counts a hit when the caption names that
(colour, shape) pair. Also per embedder: captions/s when embedding the corpus, the latency of one
query embedded on its own (what a search request pays; p50/p99 over the queries asked
REPEATS times), and the bytes an exact index holds per caption and at 1M captions (D float32s).
Prints a markdown table with the machine and versions; the first embedder is the baseline.
"""

from __future__ import annotations

import argparse
import datetime
import time

import numpy as np
from embed_speed import machine, world_captions  # this script's directory is on sys.path

from captioning.archives.synthetic.world import named_pairs
from indexing.embed import DEFAULT_EMBEDDER, TextEmbedder

# (query, the (colour, shape) a relevant caption names)
PARAPHRASES: tuple[tuple[str, tuple[str, str]], ...] = (
    ("a crimson disc", ("red", "circle")),
    ("a round scarlet blob", ("red", "circle")),
    ("a tangerine coloured ring", ("orange", "circle")),
    ("an amber three-sided shape", ("orange", "triangle")),
    ("a golden five-pointed shape", ("yellow", "star")),
    ("a lemon pentagram", ("yellow", "star")),
    ("an emerald pyramid", ("green", "triangle")),
    ("a lime plus sign", ("green", "cross")),
    ("a navy box", ("blue", "square")),
    ("an azure tile with four equal sides", ("blue", "square")),
    ("a violet six-sided polygon", ("purple", "hexagon")),
    ("a lavender honeycomb cell", ("purple", "hexagon")),
    ("a snow-white star", ("white", "star")),
    ("an ivory box", ("white", "square")),
    ("a jet plus symbol", ("black", "cross")),
    ("an ebony x shape", ("black", "cross")),
)
K = 10
REPEATS = 5


def query_latency_ms(embedder: TextEmbedder, queries: list[str]) -> tuple[float, float]:
    """p50 and p99 ms of embedding one query at a time (after one warm-up call)."""
    embedder.embed(queries[:1])
    times = []
    for _ in range(REPEATS):
        for query in queries:
            start = time.perf_counter()
            embedder.embed([query])  # (1, D)
            times.append((time.perf_counter() - start) * 1000)
    p50, p99 = np.percentile(times, [50, 99])
    return float(p50), float(p99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--embedders", default=f"{DEFAULT_EMBEDDER},mpnet")
    parser.add_argument("--captions", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    captions, _ = world_captions(args.captions, args.seed)
    pairs = [named_pairs(c) for c in captions]
    rows = []
    for name in args.embedders.split(","):
        embedder = TextEmbedder(name, device="cpu")
        start = time.perf_counter()
        corpus = embedder.embed(captions)  # (N, D)
        seconds = time.perf_counter() - start
        queries = embedder.embed([q for q, _ in PARAPHRASES])  # (Q, D)
        top = np.argsort(-(queries @ corpus.T), axis=1)[:, :K]  # (Q, N) -> (Q, K)
        targets = [target for _, target in PARAPHRASES]
        hits = np.array(
            [[t in pairs[j] for j in row] for row, t in zip(top, targets, strict=True)]
        )  # (Q, K)
        latency = query_latency_ms(embedder, [q for q, _ in PARAPHRASES])
        rows.append(
            (embedder.name, embedder.dimension, hits.mean(), hits[:, 0].mean(), seconds, latency)
        )

    print(f"\n{datetime.date.today()} | {machine()}")
    print(f"{len(captions)} distinct world captions, {len(PARAPHRASES)} paraphrase queries\n")
    print(
        "| embedder | D | precision@10 | hit@1 | captions/s (embed) | query ms p50 | query ms p99 "
        "| index bytes/caption | exact index at 1M |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, dim, p10, hit1, seconds, (p50, p99) in rows:
        per = 4 * dim  # float32 vector; ids and mapping are the same for both embedders
        print(
            f"| {name} | {dim} | {p10:.3f} | {hit1:.3f} | {len(captions) / seconds:.0f} "
            f"| {p50:.1f} | {p99:.1f} | {per:,} | {per * 1_000_000 / 1e9:.2f} GB |"
        )


if __name__ == "__main__":
    main()
