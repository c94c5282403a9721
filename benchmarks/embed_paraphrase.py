"""Retrieval with other words than the captions: precision@10 of paraphrase queries per embedder.

    python benchmarks/embed_paraphrase.py [--embedders all-MiniLM-L6-v2,mpnet] [--captions 2000]

Indexes distinct world captions (exact inner product), asks queries that name a colour and a shape
with words the world never uses ("a crimson disc"), and counts a hit when the caption names that
(colour, shape) pair. Prints a markdown table with the machine and versions; the first embedder is
the baseline.
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
        rows.append((embedder.name, embedder.dimension, hits.mean(), hits[:, 0].mean(), seconds))

    print(f"\n{datetime.date.today()} | {machine()}")
    print(f"{len(captions)} distinct world captions, {len(PARAPHRASES)} paraphrase queries\n")
    print("| embedder | D | precision@10 | hit@1 | captions/s (embed) |")
    print("|---|---:|---:|---:|---:|")
    for name, dim, p10, hit1, seconds in rows:
        print(f"| {name} | {dim} | {p10:.3f} | {hit1:.3f} | {len(captions) / seconds:.0f} |")


if __name__ == "__main__":
    main()
