"""Top-5 hit rate of vector, keyword and hybrid ranking at several keyword weights, on an index.

    python benchmarks/hybrid_weights.py [--index demo-out/run/index] [--archive demo-out/archive]
        [--weights 1.0,0.5,0.3]

One query per image of a generated world archive, written from the image's truth in words of
our own (captioning.archives.synthetic.queries, the same queries as tests/test_retrieval.py); a
hit is a top-5 result whose truth answers the query. Each query is embedded once and every
ranking gets the same vector. The baseline, in the same run, is vector search alone.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import sys
import tarfile
from pathlib import Path

from machine import cpu_model  # this script's directory is on sys.path

import indexing.retrieval as retrieval
from captioning.archives.synthetic.queries import matches, query_for

K = 5


def truths(archive: Path) -> dict[str, dict]:
    """key -> the image's truth (KEY.json) from every tar shard of a world archive."""
    found = {}
    for shard in sorted(archive.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    data = tar.extractfile(member)
                    assert data is not None
                    found[member.name.removesuffix(".json")] = json.load(data)
    if not found:
        raise SystemExit(f"no KEY.json in {archive}/*.tar: pass a tar world archive")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", type=Path, default=Path("demo-out/run/index"))
    parser.add_argument("--archive", type=Path, default=Path("demo-out/archive"))
    parser.add_argument("--weights", default="1.0,0.5,0.3")
    args = parser.parse_args()

    known = truths(args.archive)
    retriever = retrieval.Retriever.open(args.index)
    rng = random.Random(7)
    queries = [query_for(known[key], rng) for key in sorted(known)]
    vectors = retriever.embed([q.text for q in queries])  # (Q, D)

    def hit_rate(mode: str) -> float:
        found = 0
        for query, vector in zip(queries, vectors, strict=True):
            hits = retriever.query(query.text, k=K, mode=mode, vector=vector)
            found += any(matches(query, known[h.entry["key"]]) for h in hits)
        return found / len(queries)

    rows = [("vector alone (baseline)", hit_rate("vector")), ("keyword alone", hit_rate("keyword"))]
    default = retrieval.KEYWORD_WEIGHT
    for weight in (float(w) for w in args.weights.split(",")):
        retrieval.KEYWORD_WEIGHT = weight  # read by Retriever.query on each call
        rows.append((f"hybrid, keyword weight {weight:g}", hit_rate("hybrid")))
    retrieval.KEYWORD_WEIGHT = default

    print(f"\n{datetime.date.today()} | {cpu_model()} | Python {sys.version.split()[0]}")
    print(f"{args.index}: {retriever.count} entries; {len(queries)} queries, one per image\n")
    print(f"| ranking | top-{K} hit rate | x baseline |")
    print("|---|---:|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:.4f} | {rate / rows[0][1]:.3f} |")
    print(f"\nThe shipped default: keyword weight {default:g}")


if __name__ == "__main__":
    main()
