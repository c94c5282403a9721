"""A world image's truth (its KEY.json) -> a text query in words of our own, and whether another
image's truth answers it.

A query names the image's objects with their counts, or for two related objects one's size, the
relation and the other ("a small red circle left of a blue square", said either way round). An
image answers it when its truth has the same objects with the same counts, and the same size and
relation where the query names them. tests/test_retrieval.py and benchmarks/hybrid_weights.py
score retrieval with it.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from captioning.archives.synthetic.world import INVERSE_RELATION, NUMBER_WORDS, PLURALS


@dataclass(frozen=True)
class Query:
    text: str
    objects: Counter  # (colour, shape) -> count
    sizes: dict | None  # (colour, shape) -> size, where the query names sizes
    relation: tuple[tuple[str, str], str, tuple[str, str]] | None  # (subject, relation, object)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def query_for(truth: dict, rng: random.Random) -> Query:
    """A query that ``truth`` answers, worded by ``rng``."""
    objs = [(o["color"], o["shape"]) for o in truth["objects"]]
    counts = Counter(objs)
    if truth["relation"]:
        (a, b), sizes = (
            objs,
            {objs[0]: truth["objects"][0]["size"], objs[1]: truth["objects"][1]["size"]},
        )
        rel = truth["relation"]
        if rng.random() < 0.5:  # say it the other way round half of the time
            a, b, rel = b, a, INVERSE_RELATION[rel]
        text = f"{_article(sizes[a])} {sizes[a]} {a[0]} {a[1]} {rel} {_article(b[0])} {b[0]} {b[1]}"
        return Query(text, counts, {a: sizes[a]}, (a, rel, b))
    parts = []
    for (color, shape), n in counts.items():
        parts.append(
            f"{NUMBER_WORDS[n]} {color} {PLURALS[shape]}"
            if n > 1
            else f"{_article(color)} {color} {shape}"
        )
    rng.shuffle(parts)
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return Query(text, counts, None, None)


def matches(query: Query, truth: dict) -> bool:
    """Whether an image with ``truth`` answers ``query``."""
    objs = [(o["color"], o["shape"]) for o in truth["objects"]]
    if Counter(objs) != query.objects:
        return False
    if query.sizes:
        sizes = {(o["color"], o["shape"]): o["size"] for o in truth["objects"]}
        if any(sizes[k] != v for k, v in query.sizes.items()):
            return False
    if query.relation:
        if not truth["relation"]:
            return False
        subject, rel, _ = query.relation
        said = truth["relation"] if objs[0] == subject else INVERSE_RELATION[truth["relation"]]
        return said == rel
    return True

