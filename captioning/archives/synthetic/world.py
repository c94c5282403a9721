"""A procedurally generated world of shapes: seed -> (image, exact captions, structured truth).

Each scene holds 1 to 3 objects (shape, colour, size) on a varied background. The canonical
caption follows fixed rules so that a model can learn it exactly:

* one object:                 "a large red circle"
* two different objects:      one is large and one small; the large one is the subject and the
                              relation says where it is:
                              "a large red circle left of a small blue square"
* an object repeated:         "two small green triangles", "three large blue stars"
* three objects:              groups by (size, colour, shape); larger first, then left to right:
                              "two large green triangles and a small blue star",
                              "a large red circle, a small blue square and a small yellow star"

The references (3 to 5 per image) reword the canonical caption with synonyms, the inverse
relation and the background, as human annotators would.
"""

from __future__ import annotations

import colorsys
import io
import math
import random
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross")
PLURALS: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "hexagon": "hexagons",
    "cross": "crosses",
}
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 25),
    "green": (35, 160, 60),
    "blue": (35, 75, 215),
    "purple": (135, 50, 175),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
SIZES: tuple[str, ...] = ("small", "large")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
INVERSE_RELATION = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
}
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "noise", "texture")
IMAGE_FORMATS: tuple[str, ...] = ("jpg", "png", "webp")
NUMBER_WORDS = {2: "two", 3: "three"}

# Object radius as a fraction of the image's shorter side.
_RADIUS = {"small": 0.095, "large": 0.17}
_SYNONYMS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
_BACKGROUND_WORDS = {
    "plain": "plain",
    "gradient": "gradient",
    "noise": "noisy",
    "texture": "textured",
}
_ASPECTS = (1.0, 4 / 3, 3 / 4, 3 / 2, 2 / 3)


@dataclass(frozen=True, slots=True)
class SceneObject:
    shape: str
    color: str
    size: str
    cx: float  # centre, fraction of width
    cy: float  # centre, fraction of height
    rotation: float  # degrees


@dataclass(frozen=True, slots=True)
class Scene:
    width: int
    height: int
    objects: tuple[SceneObject, ...]
    relation: str | None  # relation of objects[0] to objects[1], only for two different objects
    background: str
    image_format: str  # "jpg" | "png" | "webp"
    quality: int  # JPEG/WebP quality
    seed: int  # per-image seed for the background texture and jitter


@dataclass(frozen=True, slots=True)
class WorldImage:
    key: str
    scene: Scene
    data: bytes  # encoded image file
    extension: str  # "jpg" | "png" | "webp"
    caption: str
    references: tuple[str, ...]

    def annotation(self) -> dict:
        """The sidecar KEY.json contents."""
        return {
            "caption": self.caption,
            "references": list(self.references),
            "objects": [
                {"shape": o.shape, "color": o.color, "size": o.size} for o in self.scene.objects
            ],
            "relation": self.scene.relation,
        }


# --------------------------------------------------------------------------- sampling


def _sample_size(rng: random.Random) -> tuple[int, int]:
    aspect = rng.choice(_ASPECTS)  # width / height
    long_max = 1024
    short_max = long_max / max(aspect, 1 / aspect)
    short = math.exp(rng.uniform(math.log(64), math.log(short_max)))
    long = short * max(aspect, 1 / aspect)
    w, h = (long, short) if aspect >= 1 else (short, long)
    return max(64, round(w)), max(64, round(h))


def _fits(objs: list[tuple[float, float, float]], w: int, h: int) -> bool:
    """Objects (cx, cy, r) in pixels lie inside the image and do not overlap."""
    for i, (x, y, r) in enumerate(objs):
        if x - r < 1 or y - r < 1 or x + r > w - 1 or y + r > h - 1:
            return False
        for x2, y2, r2 in objs[:i]:
            if math.hypot(x - x2, y - y2) < (r + r2) * 1.15:
                return False
    return True


def _place(rng: random.Random, sizes: list[str], w: int, h: int, relation: str | None):
    """Random non-overlapping centres (pixels); for a relation, objects[0] relative to [1]."""
    short = min(w, h)
    for _ in range(2000):
        radii = [_RADIUS[s] * short * rng.uniform(0.9, 1.1) for s in sizes]
        pts = [(rng.uniform(r, w - r), rng.uniform(r, h - r), r) for r in radii]
        if relation is not None:
            (x0, y0, _), (x1, y1, _) = pts
            dx, dy = x0 - x1, y0 - y1
            horizontal = relation in ("left of", "right of")
            major, minor = (dx, dy) if horizontal else (dy, dx)
            # The relation must be plain to see: the main axis dominates clearly.
            if abs(major) < 1.5 * abs(minor):
                continue
            if relation in ("left of", "above") and major >= 0:
                continue
            if relation in ("right of", "below") and major <= 0:
                continue
        if _fits(pts, w, h):
            return pts
    raise RuntimeError("could not place objects")  # pragma: no cover - sizes always allow it


def sample_scene(rng: random.Random) -> Scene:
    """Draw one scene from the world's distribution."""
    w, h = _sample_size(rng)
    n = rng.choices((1, 2, 3), weights=(0.3, 0.4, 0.3))[0]
    relation: str | None = None
    kinds: list[tuple[str, str, str]]  # (shape, color, size)

    def kind(size: str | None = None) -> tuple[str, str, str]:
        return (rng.choice(SHAPES), rng.choice(list(COLORS)), size or rng.choice(SIZES))

    if n == 1:
        kinds = [kind()]
    elif n == 2 and rng.random() < 0.3:
        kinds = [kind()] * 2
    elif n == 2:
        a = kind("large")
        b = kind("small")
        while b[:2] == a[:2]:
            b = kind("small")
        kinds = [a, b]
        relation = rng.choice(RELATIONS)
    else:
        pattern = rng.choices(("same", "pair", "distinct"), weights=(0.2, 0.4, 0.4))[0]
        if pattern == "same":
            kinds = [kind()] * 3
        else:
            a = kind()
            kinds = [a, a] if pattern == "pair" else [a]
            while len(kinds) < 3:
                k = kind()
                if all(k[:2] != o[:2] for o in kinds):
                    kinds.append(k)
    pts = _place(rng, [k[2] for k in kinds], w, h, relation)
    objects = tuple(
        SceneObject(s, c, z, x / w, y / h, rng.uniform(-20.0, 20.0))
        for (s, c, z), (x, y, _) in zip(kinds, pts, strict=True)
    )
    fmt = rng.choices(IMAGE_FORMATS, weights=(0.5, 0.3, 0.2))[0]
    return Scene(
        width=w,
        height=h,
        objects=objects,
        relation=relation,
        background=rng.choice(BACKGROUNDS),
        image_format=fmt,
        quality=rng.randint(60, 95),
        seed=rng.getrandbits(32),
    )


# --------------------------------------------------------------------------- language


def _groups(scene: Scene) -> list[tuple[int, SceneObject]]:
    """(count, object) groups in caption order: large before small, then left to right."""
    groups: dict[tuple[str, str, str], list[SceneObject]] = {}
    for o in scene.objects:
        groups.setdefault((o.size, o.color, o.shape), []).append(o)
    ordered = sorted(groups.values(), key=lambda g: (g[0].size != "large", min(o.cx for o in g)))
    return [(len(g), g[0]) for g in ordered]


def _phrase(count: int, o: SceneObject, size_word: str | None, with_size: bool = True) -> str:
    words = [size_word or o.size] if with_size else []
    words += [o.color, PLURALS[o.shape] if count > 1 else o.shape]
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([NUMBER_WORDS[count] if count > 1 else article, *words])


def _join(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def describe(scene: Scene, rng: random.Random) -> tuple[str, tuple[str, ...]]:
    """The canonical caption and 3-5 references (references[0] is the caption)."""
    groups = _groups(scene)
    bg = _BACKGROUND_WORDS[scene.background]

    def syn(o: SceneObject) -> str:
        return rng.choice(_SYNONYMS[o.size][1:])

    if scene.relation is not None:
        a, b = scene.objects
        rel, inv = scene.relation, INVERSE_RELATION[scene.relation]
        caption = f"{_phrase(1, a, None)} {rel} {_phrase(1, b, None)}"
        rel_to = {"left of": "to the left of", "right of": "to the right of"}
        others = [
            f"{_phrase(1, b, None)} {inv} {_phrase(1, a, None)}",
            f"{_phrase(1, a, syn(a))} {rel_to.get(rel, rel)} {_phrase(1, b, syn(b))}",
            f"{_phrase(1, a, None, False)} and {_phrase(1, b, None, False)} on a {bg} background",
            f"there is {caption}",
        ]
    else:
        caption = _join([_phrase(c, o, None) for c, o in groups])
        others = [
            _join([_phrase(c, o, syn(o)) for c, o in groups]),
            _join([_phrase(c, o, None, False) for c, o in groups]) + f" on a {bg} background",
            ("there is " if len(scene.objects) == 1 else "there are ") + caption,
            f"a {bg} picture of " + _join([_phrase(c, o, None, False) for c, o in groups]),
        ]
    rng.shuffle(others)
    return caption, (caption, *others[: rng.randint(2, 4)])


_PAIR = re.compile(
    r"\b(" + "|".join(COLORS) + r")\s+(" + "|".join(sorted({*SHAPES, *PLURALS.values()})) + r")\b"
)
_SINGULAR = {p: s for s, p in PLURALS.items()}


def named_pairs(caption: str) -> set[tuple[str, str]]:
    """(colour, shape) pairs a caption names: 'two green triangles' -> {('green', 'triangle')}."""
    return {(c, _SINGULAR.get(s, s)) for c, s in _PAIR.findall(caption.lower())}


# --------------------------------------------------------------------------- rendering


def _shape_points(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple]:
    def poly(angles_radii: list[tuple[float, float]]) -> list[tuple[float, float]]:
        t = math.radians(rot)
        return [(cx + rr * math.cos(a + t), cy + rr * math.sin(a + t)) for a, rr in angles_radii]

    if shape == "square":
        return poly([(math.pi / 4 + k * math.pi / 2, r) for k in range(4)])
    if shape == "triangle":
        return poly([(-math.pi / 2 + k * 2 * math.pi / 3, r * 1.1) for k in range(3)])
    if shape == "hexagon":
        return poly([(k * math.pi / 3, r) for k in range(6)])
    if shape == "star":
        return poly(
            [(-math.pi / 2 + k * math.pi / 5, r if k % 2 == 0 else r * 0.45) for k in range(10)]
        )
    if shape == "cross":
        a = r * 0.33
        corners = [
            (a, r),
            (-a, r),
            (-a, a),
            (-r, a),
            (-r, -a),
            (-a, -a),
            (-a, -r),
            (a, -r),
            (a, -a),
            (r, -a),
            (r, a),
            (a, a),
        ]
        return poly([(math.atan2(y, x), math.hypot(x, y)) for x, y in corners])
    raise ValueError(f"unknown shape {shape!r}")


def _background(scene: Scene, rng: np.random.Generator) -> Image.Image:
    w, h = scene.width, scene.height

    def tone() -> np.ndarray:
        r, g, b = colorsys.hsv_to_rgb(
            rng.random(), rng.uniform(0.05, 0.25), rng.uniform(0.45, 0.75)
        )
        return np.array([r, g, b], dtype=np.float32) * 255

    base = tone()
    if scene.background == "plain":
        arr = np.broadcast_to(base, (h, w, 3))
    elif scene.background == "gradient":
        other = tone()
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        t = xs / w * math.cos(angle) + ys / h * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        arr = base + (other - base) * t[..., None]  # (H, W, 3)
    elif scene.background == "noise":
        arr = base + rng.normal(0, 14, size=(h, w, 1)).astype(np.float32)
    else:  # texture: low-contrast stripes or checks
        period = max(4, int(min(w, h) * rng.uniform(0.04, 0.12)))
        ys, xs = np.mgrid[0:h, 0:w]
        pattern = (xs // period + ys // period) % 2 if rng.random() < 0.5 else (xs // period) % 2
        arr = base + (pattern[..., None] * 2 - 1) * 14.0
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def render_scene(scene: Scene) -> Image.Image:
    """Draw a scene as an RGB picture of scene.width x scene.height."""
    rng = np.random.default_rng(scene.seed)
    img = _background(scene, rng)
    draw = ImageDraw.Draw(img)
    short = min(scene.width, scene.height)
    for o in scene.objects:
        # The same jitter per object regardless of drawing order.
        jitter = np.random.default_rng([scene.seed, int(o.cx * 1e6), int(o.cy * 1e6)])
        r = _RADIUS[o.size] * short * jitter.uniform(0.9, 1.1)
        color = tuple(int(np.clip(c + jitter.integers(-12, 13), 0, 255)) for c in COLORS[o.color])
        x, y = o.cx * scene.width, o.cy * scene.height
        if o.shape == "circle":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=color)
        else:
            draw.polygon(_shape_points(o.shape, x, y, r, o.rotation), fill=color)
    return img


def encode(img: Image.Image, image_format: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if image_format == "jpg":
        img.save(buf, "JPEG", quality=quality)
    elif image_format == "png":
        img.save(buf, "PNG", compress_level=1)
    elif image_format == "webp":
        img.save(buf, "WEBP", quality=quality)
    else:
        raise ValueError(f"unknown image format {image_format!r}")
    return buf.getvalue()


IMAGE_FORMATS = ("jpg", "png", "webp")


def generate_image(seed: int, index: int, image_format: str | None = None) -> WorldImage:
    """Image `index` of the world drawn with `seed`; independent of every other index.

    `image_format` forces one file format (an all-JPEG archive, as img2dataset writes); the scene
    itself, and so the pixels before encoding, are the same as with the drawn format.
    """
    rng = random.Random(f"imgindex-world-{seed}-{index}")
    scene = sample_scene(rng)
    caption, references = describe(scene, rng)
    fmt = scene.image_format if image_format is None else image_format
    data = encode(render_scene(scene), fmt, scene.quality)
    return WorldImage(
        key=f"{index:09d}",
        scene=scene,
        data=data,
        extension=fmt,
        caption=caption,
        references=references,
    )
