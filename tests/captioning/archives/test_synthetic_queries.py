"""Tests for captioning.archives.synthetic.queries: queries written from a world image's truth."""

from __future__ import annotations

import random
from collections import Counter

from captioning.archives.synthetic.queries import Query, matches, query_for


def test_query_matching_rules():
    truth = {
        "objects": [
            {"color": "red", "shape": "circle", "size": "large"},
            {"color": "blue", "shape": "square", "size": "small"},
        ],
        "relation": "left of",
    }
    base = Counter({("red", "circle"): 1, ("blue", "square"): 1})
    assert matches(Query("", base, None, (("red", "circle"), "left of", ("blue", "square"))), truth)
    assert matches(
        Query("", base, None, (("blue", "square"), "right of", ("red", "circle"))), truth
    )
    assert not matches(
        Query("", base, None, (("red", "circle"), "above", ("blue", "square"))), truth
    )
    assert not matches(Query("", base, {("red", "circle"): "small"}, None), truth)
    assert not matches(Query("", Counter({("red", "circle"): 2}), None, None), truth)


def test_a_query_written_from_a_truth_is_answered_by_that_truth():
    truths = [
        {"objects": [{"color": "red", "shape": "circle", "size": "small"},
                     {"color": "blue", "shape": "square", "size": "large"}],
         "relation": "left of"},
        {"objects": [{"color": "green", "shape": "triangle", "size": "small"}] * 2,
         "relation": None},
    ]  # fmt: skip
    rng = random.Random(0)
    for truth in truths:
        for _ in range(10):  # both wordings of the relation
            query = query_for(truth, rng)
            assert matches(query, truth), query.text
    assert not matches(query_for(truths[0], rng), truths[1])
