"""The generated world: deterministic, varied, and its captions follow the stated rules."""

from __future__ import annotations

import io
import json
import random

from PIL import Image

from captioning.archives.synthetic.world import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    describe,
    generate_image,
    named_pairs,
    sample_scene,
)


def test_deterministic_for_a_seed():
    a, b = generate_image(5, 17), generate_image(5, 17)
    assert a.data == b.data and a.references == b.references
    assert generate_image(6, 17).data != a.data


def test_images_decode_to_their_declared_size():
    for i in range(20):
        w = generate_image(3, i)
        img = Image.open(io.BytesIO(w.data))
        assert img.size == (w.scene.width, w.scene.height)
        assert 64 <= min(img.size) and max(img.size) <= 1024
        assert img.format in ("JPEG", "PNG", "WEBP")


def test_distribution_covers_the_world():
    rng = random.Random(0)
    scenes = [sample_scene(rng) for _ in range(600)]
    objects = [o for s in scenes for o in s.objects]
    assert {o.shape for o in objects} == set(SHAPES)
    assert {o.color for o in objects} == set(COLORS)
    assert {s.background for s in scenes} == set(BACKGROUNDS)
    assert {len(s.objects) for s in scenes} == {1, 2, 3}
    assert {s.relation for s in scenes} >= {"left of", "right of", "above", "below", None}
    ratios = {round(s.width / s.height, 2) for s in scenes}
    assert len(ratios) >= 5


def test_relation_matches_geometry():
    rng = random.Random(1)
    for _ in range(300):
        s = sample_scene(rng)
        if s.relation is None:
            continue
        a, b = s.objects
        dx, dy = (a.cx - b.cx) * s.width, (a.cy - b.cy) * s.height
        expected = {"left of": dx < 0, "right of": dx > 0, "above": dy < 0, "below": dy > 0}
        assert expected[s.relation]
        assert a.size == "large" and b.size == "small"


def test_caption_names_every_object_and_counts():
    rng = random.Random(2)
    for _ in range(300):
        s = sample_scene(rng)
        caption, refs = describe(s, rng)
        assert refs[0] == caption and 3 <= len(refs) <= 5 and len(set(refs)) == len(refs)
        assert named_pairs(caption) == {(o.color, o.shape) for o in s.objects}
        kinds = {(o.size, o.color, o.shape) for o in s.objects}
        if len(kinds) < len(s.objects):
            assert "two " in caption or "three " in caption


def test_named_pairs_handles_plurals():
    assert named_pairs("two green crosses and a small Red Circle") == {
        ("green", "cross"),
        ("red", "circle"),
    }
    assert named_pairs("a circle") == set()


def test_annotation_is_the_documented_sidecar():
    w = generate_image(0, 3)
    ann = json.loads(json.dumps(w.annotation()))
    assert set(ann) == {"caption", "references", "objects", "relation"}
    assert ann["caption"] == ann["references"][0]
    assert all(set(o) == {"shape", "color", "size"} for o in ann["objects"])


def test_forced_image_format_keeps_the_scene():
    drawn = generate_image(3, 4)
    for fmt in ("jpg", "png", "webp"):
        forced = generate_image(3, 4, image_format=fmt)
        assert forced.extension == fmt and forced.caption == drawn.caption
        assert forced.references == drawn.references
        assert Image.open(io.BytesIO(forced.data)).format == {"jpg": "JPEG"}.get(fmt, fmt.upper())
