"""Deterministic captioned toy scenes with ground truth (shapes, colours, masks, caption edits).

A scene is one or two flat-coloured shapes on a uniform background. Layout is fixed by the number of
objects so that a caption determines where its objects are: one object sits in the centre, two
objects sit side by side with the first (leftmost) named first in the caption. Object colours are
pairwise distinct, object shapes are pairwise distinct and the background colour differs from every
object's colour, so each colour or shape word occurs at most once in a caption and a word-level edit
(prompt-to-prompt) is unambiguous.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, Sequence

import numpy as np
from PIL import Image, ImageDraw

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 215, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
"""Named colours with fixed RGB values (objects and backgrounds)."""

COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
EDIT_KINDS: tuple[str, ...] = ("colour", "shape", "background")

# Object radius as a fraction of the image size, per number of objects (low, high).
RADIUS_RANGE: dict[int, tuple[float, float]] = {1: (0.24, 0.32), 2: (0.15, 0.19)}
# Nominal centres (x, y) as fractions of the image size, per number of objects.
SLOTS: dict[int, tuple[tuple[float, float], ...]] = {1: ((0.5, 0.5),), 2: ((0.27, 0.5), (0.73, 0.5))}

EditKind = Literal["colour", "shape", "background"]


@dataclass(frozen=True)
class SceneObject:
    """One shape: its kind, colour name, centre (x, y) and radius, both as fractions of the image size."""

    shape: str
    colour: str
    centre: tuple[float, float]
    radius: float


@dataclass(frozen=True)
class Scene:
    """Objects (left to right, in caption order) on a uniform background colour."""

    objects: tuple[SceneObject, ...]
    background: str


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Vertices of a square, triangle or star of nominal radius ``r`` centred at (cx, cy), in pixels."""
    if shape == "square":
        h = 0.85 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        rr = 1.15 * r
        cy = cy + 0.25 * rr  # centre the bounding box vertically
        return [(cx + rr * math.cos(a), cy - rr * math.sin(a)) for a in (math.pi / 2, math.pi * 7 / 6, math.pi * 11 / 6)]
    if shape == "star":
        outer, inner = 1.2 * r, 0.5 * r
        pts = []
        for k in range(10):
            a = math.pi / 2 + k * math.pi / 5
            rad = outer if k % 2 == 0 else inner
            pts.append((cx + rad * math.cos(a), cy - rad * math.sin(a)))
        return pts
    raise ValueError(f"unknown polygon shape {shape!r}")


def _draw_shape(draw: ImageDraw.ImageDraw, obj: SceneObject, size: int, fill: int | tuple[int, int, int]) -> None:
    """Draw one object onto ``draw`` (an image of side ``size``)."""
    cx, cy, r = obj.centre[0] * size, obj.centre[1] * size, obj.radius * size
    if obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif obj.shape in SHAPES:
        draw.polygon(_polygon(obj.shape, cx, cy, r), fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; expected one of {SHAPES}")


def render(scene: Scene, size: int = 64, supersample: int = 4) -> tuple[Image.Image, list[np.ndarray]]:
    """Render ``scene`` antialiased at ``size``×``size``.

    Returns the RGB image and one boolean (size, size) mask per object: the pixels whose area is at
    least half covered by that object (objects never overlap).
    """
    big = size * supersample
    image = Image.new("RGB", (big, big), PALETTE[scene.background])
    draw = ImageDraw.Draw(image)
    masks = []
    for obj in scene.objects:
        _draw_shape(draw, obj, big, PALETTE[obj.colour])
        cover = Image.new("L", (big, big), 0)
        _draw_shape(ImageDraw.Draw(cover), obj, big, 255)
        cover_small = np.asarray(cover.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0
        masks.append(cover_small >= 0.5)
    return image.resize((size, size), Image.Resampling.BOX), masks


def caption(scene: Scene) -> str:
    """Caption such as ``"a blue square and a yellow star on a white background"``."""
    things = " and ".join(f"a {o.colour} {o.shape}" for o in scene.objects)
    return f"{things} on a {scene.background} background"


def random_scene(
    rng: np.random.Generator,
    n_objects: int | None = None,
    jitter: float = 0.03,
    colours: Sequence[str] = COLOURS,
    shapes: Sequence[str] = SHAPES,
) -> Scene:
    """Draw a scene: 1 or 2 objects (``n_objects`` or an even coin), distinct colours and shapes.

    Centres are the fixed slots of ``SLOTS`` moved by at most ``jitter`` (fraction of the image size).
    """
    n = int(rng.integers(1, 3)) if n_objects is None else int(n_objects)
    if n not in SLOTS:
        raise ValueError(f"n_objects must be 1 or 2, got {n}")
    picked = rng.permutation(len(colours))[: n + 1]
    obj_colours = [colours[i] for i in picked[:n]]
    background = colours[picked[n]]
    obj_shapes = [shapes[i] for i in rng.permutation(len(shapes))[:n]]
    lo, hi = RADIUS_RANGE[n]
    objects = []
    for k in range(n):
        sx, sy = SLOTS[n][k]
        dx, dy = rng.uniform(-jitter, jitter, size=2)
        objects.append(
            SceneObject(
                shape=obj_shapes[k],
                colour=obj_colours[k],
                centre=(float(sx + dx), float(sy + dy)),
                radius=float(rng.uniform(lo, hi)),
            )
        )
    return Scene(objects=tuple(objects), background=background)


def scene_from_seed(seed: int, **kwargs: object) -> Scene:
    """The scene of an integer seed (seeds >= ``HELDOUT_SEED_START`` are reserved for evaluation)."""
    return random_scene(np.random.default_rng(int(seed)), **kwargs)  # type: ignore[arg-type]


HELDOUT_SEED_START = 1_000_000
"""Seeds at or above this value are evaluation-only: training never uses them."""


def edit_scene(scene: Scene, kind: EditKind, rng: np.random.Generator) -> tuple[Scene, str, str]:
    """Change one attribute of ``scene``; return (new scene, source word, target word) of the caption edit.

    ``colour``: the first object's colour; ``shape``: the first object's shape; ``background``: the
    background colour. The new value keeps colours and shapes unique within the scene.
    """
    first = scene.objects[0]
    if kind == "colour":
        used = {o.colour for o in scene.objects} | {scene.background}
        options = [c for c in COLOURS if c not in used]
        new = options[int(rng.integers(len(options)))]
        return replace(scene, objects=(replace(first, colour=new),) + scene.objects[1:]), first.colour, new
    if kind == "shape":
        used = {o.shape for o in scene.objects}
        options = [s for s in SHAPES if s not in used]
        new = options[int(rng.integers(len(options)))]
        return replace(scene, objects=(replace(first, shape=new),) + scene.objects[1:]), first.shape, new
    if kind == "background":
        used = {o.colour for o in scene.objects} | {scene.background}
        options = [c for c in COLOURS if c not in used]
        new = options[int(rng.integers(len(options)))]
        return replace(scene, background=new), scene.background, new
    raise ValueError(f"unknown edit kind {kind!r}; expected one of {EDIT_KINDS}")


def nearest_colour(rgb: Sequence[float], palette: dict[str, tuple[int, int, int]] = PALETTE) -> str:
    """Name of the palette colour nearest (Euclidean RGB) to ``rgb``."""
    v = np.asarray(rgb, dtype=np.float64)
    return min(palette, key=lambda name: float(np.sum((v - np.asarray(palette[name], dtype=np.float64)) ** 2)))
