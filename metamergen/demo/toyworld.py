"""A procedural toy scene world: small seeded scenes, ground-truth objects and viewer scanpaths.

The world exists so that MetamerGen can be trained and evaluated end to end on a laptop CPU.
Everything is generated from integer seeds with numpy and PIL, about a millisecond
per 64-px scene, and written to disk like any real dataset (canonical scanpath JSON Lines plus a
``dataset.json`` sidecar, see :mod:`metamergen.fixations.io`).

What a scene contains
---------------------
- A **layout** that the periphery can convey: ``"outdoor"`` (sky above a random horizon, ground
  below, a large hill on the horizon and sometimes a path) or ``"indoor"`` (wall above, floor
  below, a window or door on the wall and sometimes a rug). Layout colours come from muted
  palettes (:data:`SKY_COLOURS`, ...).
- 2-5 small **objects** whose identity needs the fovea: a shape from :data:`SHAPES` in a saturated
  colour from :data:`OBJECT_COLOURS` (side 8-14 px at 64 px, scaled with the image size),
  sometimes with a small black or white inner mark (:data:`MARKS`). Objects never overlap (a gap
  of at least 2 px) and their boxes are the tight bounding boxes of their drawn pixels.

Every object colour is more than 80 RGB units (Euclidean) from every layout colour and from the
other object colours, so "which palette colour is this" is well defined (:func:`object_attributes`).

Boxes and coordinates follow :mod:`metamergen.fixations`: pixels of the image file, origin
top-left, pixel ``i`` covers ``[i, i + 1)``. A box ``(x0, y0, x1, y1)`` covers pixels
``x0 <= i < x1``, ``y0 <= j < y1`` (right/bottom exclusive, as :meth:`PIL.Image.Image.getbbox`),
and its centre is ``((x0 + x1) / 2, (y0 + y1) / 2)``.

Viewers and salience
--------------------
An object's **salience** is ``contrast * sqrt(area)`` where ``contrast`` is the Euclidean RGB
distance between the object colour and the mean layout colour in a 3-px (at 64 px) ring around
the object's footprint, divided by the largest possible distance (``255 * sqrt(3)``), and
``area`` is the object's pixel count divided by ``(size / 64) ** 2`` (so salience does not depend
on the image size). A toy viewer (:func:`viewer_scanpath`) makes ``n_fixations`` fixations: each
one is, with probability ``p_background``, a background fixation (uniform over the image outside
the object boxes); else, with probability ``p_refixation`` when an object has been visited, a
refixation of a visited object; else the next unvisited object in decreasing salience. Once every
object has been visited, the viewer refixates objects with probability proportional to salience.
Object fixations land at the box centre plus Gaussian jitter (``fixation_jitter`` px at 64 px,
scaled). Durations are uniform in ``duration_ms``; onsets accumulate durations plus a 30 ms
saccade. :func:`random_scanpath` is the count- and timing-matched uniform control
(:func:`metamergen.fixations.matched_random`).

Pixels per degree
-----------------
A toy image is taken to span :attr:`ToyWorldConfig.degrees_per_image` = 4 degrees of visual angle,
so a 64-px image has 16 px/deg (96 px: 24, 128 px: 32). An object is then 0.5-0.9 deg across:
about what a 1-deg foveal radius shows at once, while the layout needs the periphery.

On disk (:func:`write_split`)::

    <out>/images/<scene id>.png   the scenes
    <out>/scanpaths.jsonl         viewer (condition "viewer") and random (condition "random")
    <out>/objects.jsonl           one line per scene: id, image, seed, size, layout, objects
    <out>/dataset.json            DatasetInfo(image_root="images", pixels_per_degree, ...)

Note that ``objects.jsonl`` is *not* a scanpath file: read it with :func:`read_objects`.

Command line: ``metamergen toyworld OUT --train N --test M --seed S [--size 64]``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from metamergen.fixations.io import DatasetInfo, write_scanpaths
from metamergen.fixations.records import Fixation, Scanpath, matched_random
from metamergen.utils.io import atomic_write

__all__ = [
    "SHAPES",
    "MARKS",
    "OBJECT_COLOURS",
    "MARK_COLOURS",
    "SKY_COLOURS",
    "GROUND_COLOURS",
    "WALL_COLOURS",
    "FLOOR_COLOURS",
    "ToyWorldConfig",
    "ToyObject",
    "ToyScene",
    "ObjectAttributes",
    "ColourMatch",
    "generate_scene",
    "render_shape_mask",
    "viewer_scanpath",
    "random_scanpath",
    "scene_scanpaths",
    "scene_seeds",
    "write_split",
    "write_world",
    "read_objects",
    "object_attributes",
    "object_colour_match",
]

RGB = tuple[int, int, int]
Box = tuple[int, int, int, int]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "ring", "bar")
"""Object shape vocabulary."""

MARKS: tuple[str, ...] = ("dot", "stripe", "slash")
"""Inner mark kinds (a small glyph in black or white drawn at the object's centre)."""

OBJECT_COLOURS: dict[str, RGB] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (245, 225, 40),
    "green": (40, 185, 70),
    "cyan": (40, 200, 220),
    "blue": (45, 70, 225),
    "magenta": (210, 50, 210),
}
"""Saturated object colours; pairwise at least 87 RGB units apart."""

MARK_COLOURS: dict[str, RGB] = {"ink": (25, 25, 25), "chalk": (245, 245, 245)}

SKY_COLOURS: dict[str, RGB] = {
    "sky-blue": (150, 185, 215),
    "haze": (195, 200, 205),
    "dusk": (210, 170, 160),
    "night": (60, 70, 110),
}
GROUND_COLOURS: dict[str, RGB] = {
    "grass": (110, 120, 70),
    "sand": (180, 160, 120),
    "soil": (110, 90, 70),
    "rock": (130, 130, 125),
}
WALL_COLOURS: dict[str, RGB] = {
    "cream": (215, 205, 180),
    "slate": (150, 160, 175),
    "sage": (165, 180, 150),
    "haze": (195, 200, 205),
}
FLOOR_COLOURS: dict[str, RGB] = {
    "wood": (135, 100, 70),
    "tile": (95, 95, 105),
    "carpet": (140, 80, 80),
    "soil": (110, 90, 70),
}

_MAX_DIST = 255.0 * math.sqrt(3.0)
_SEED_STRIDE = 1_000_000  # scene seed = split seed * stride + index (see scene_seeds)


def _rgb_dist(a: Sequence[float], b: Sequence[float]) -> float:
    return float(np.sqrt(((np.asarray(a, float) - np.asarray(b, float)) ** 2).sum()))


@dataclass
class ToyWorldConfig:
    """Parameters of the toy world. Lengths marked "at 64 px" scale with ``size / 64``.

    Attributes
    ----------
    size : int
        Image side in pixels (square images); 64 by default, 96 and 128 work alike (32-512).
    n_objects : (int, int)
        Inclusive range of objects per scene.
    object_size : (int, int)
        Inclusive range of an object's footprint side, px at 64 px.
    shapes, marks : tuple of str
        Vocabularies drawn from uniformly (subsets of :data:`SHAPES` / :data:`MARKS`).
    p_mark : float
        Probability that an object carries an inner mark.
    object_colours, sky_colours, ground_colours, wall_colours, floor_colours : dict name -> RGB
        Palettes. Layout colours should stay > 2 * ``colour_tolerance`` from object colours.
    p_indoor : float
        Probability of the indoor layout (else outdoor).
    min_contrast : float
        Smallest RGB distance between an object's colour and the mean layout colour around it.
    n_fixations : int
        Fixations per viewer scanpath (10: the paper's longest prefix).
    fixation_jitter : float
        Standard deviation of the Gaussian landing error around an object centre, px at 64 px.
    p_refixation, p_background : float
        Per-fixation probabilities of a refixation of a visited object / a background fixation.
    duration_ms : (float, float)
        Fixation durations are uniform in this range.
    degrees_per_image : float
        Visual angle the image is taken to span; ``pixels_per_degree = size / degrees_per_image``.
    colour_tolerance : float
        RGB distance within which a pixel counts as a palette colour (:func:`object_attributes`).
    seed : int
        Default world seed (used by :func:`write_split` / :func:`write_world` when none is given).
    """

    size: int = 64
    n_objects: tuple[int, int] = (2, 5)
    object_size: tuple[int, int] = (8, 14)
    shapes: tuple[str, ...] = SHAPES
    marks: tuple[str, ...] = MARKS
    p_mark: float = 0.5
    object_colours: dict[str, RGB] = field(default_factory=lambda: dict(OBJECT_COLOURS))
    sky_colours: dict[str, RGB] = field(default_factory=lambda: dict(SKY_COLOURS))
    ground_colours: dict[str, RGB] = field(default_factory=lambda: dict(GROUND_COLOURS))
    wall_colours: dict[str, RGB] = field(default_factory=lambda: dict(WALL_COLOURS))
    floor_colours: dict[str, RGB] = field(default_factory=lambda: dict(FLOOR_COLOURS))
    p_indoor: float = 0.5
    min_contrast: float = 80.0
    n_fixations: int = 10
    fixation_jitter: float = 1.5
    p_refixation: float = 0.1
    p_background: float = 0.1
    duration_ms: tuple[float, float] = (200.0, 400.0)
    degrees_per_image: float = 4.0
    colour_tolerance: float = 40.0
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or not 32 <= self.size <= 512:
            raise ValueError(f"ToyWorldConfig.size must be an int in [32, 512] pixels, got {self.size!r}.")
        self.size = int(self.size)
        lo, hi = self.n_objects
        if not 1 <= lo <= hi:
            raise ValueError(f"ToyWorldConfig.n_objects must be (lo, hi) with 1 <= lo <= hi, got {self.n_objects}.")
        lo, hi = self.object_size
        if not 4 <= lo <= hi <= 32:
            raise ValueError(
                f"ToyWorldConfig.object_size must be (lo, hi) px at 64 px with 4 <= lo <= hi <= 32, got {self.object_size}."
            )
        for name, vocab, allowed in (("shapes", self.shapes, SHAPES), ("marks", self.marks, MARKS)):
            bad = [s for s in vocab if s not in allowed]
            if bad or (name == "shapes" and not vocab):
                raise ValueError(f"ToyWorldConfig.{name} must be a non-empty subset of {allowed}, got {tuple(vocab)}.")
        for name in ("p_mark", "p_indoor", "p_refixation", "p_background"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"ToyWorldConfig.{name} must be a probability in [0, 1], got {p!r}.")
        if self.n_fixations < 1:
            raise ValueError(f"ToyWorldConfig.n_fixations must be >= 1, got {self.n_fixations}.")
        if not 0 < self.duration_ms[0] <= self.duration_ms[1]:
            raise ValueError(f"ToyWorldConfig.duration_ms must be (lo, hi) with 0 < lo <= hi, got {self.duration_ms}.")
        if not self.degrees_per_image > 0:
            raise ValueError(f"ToyWorldConfig.degrees_per_image must be > 0, got {self.degrees_per_image}.")
        for name in ("object_colours", "sky_colours", "ground_colours", "wall_colours", "floor_colours"):
            palette = getattr(self, name)
            if not palette:
                raise ValueError(f"ToyWorldConfig.{name} must name at least one colour.")
            setattr(self, name, {str(k): tuple(int(c) for c in v) for k, v in palette.items()})
        self.n_objects = tuple(self.n_objects)
        self.object_size = tuple(self.object_size)
        self.shapes, self.marks = tuple(self.shapes), tuple(self.marks)
        self.duration_ms = tuple(float(d) for d in self.duration_ms)

    @property
    def scale(self) -> float:
        """``size / 64``: the factor applied to lengths given "at 64 px"."""
        return self.size / 64.0

    @property
    def pixels_per_degree(self) -> float:
        """Toy pixels per degree of visual angle: ``size / degrees_per_image`` (16 at 64 px)."""
        return self.size / self.degrees_per_image

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ToyWorldConfig:
        return cls(**dict(data))


@dataclass(frozen=True)
class ToyObject:
    """One object of a scene, in pixels of the scene image.

    ``box`` is ``(x0, y0, x1, y1)`` with right/bottom exclusive (tight around the drawn pixels,
    mark included); ``centre`` is the box centre in the continuous pixel frame. ``mark`` is the
    inner mark kind or ``None``; ``salience`` as in the module docstring.
    """

    shape: str
    colour: str
    rgb: RGB
    box: Box
    centre: tuple[float, float]
    mark: str | None = None
    mark_rgb: RGB | None = None
    salience: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ToyObject:
        d = dict(data)
        d["rgb"] = tuple(d["rgb"])
        d["box"] = tuple(d["box"])
        d["centre"] = tuple(d["centre"])
        if d.get("mark_rgb") is not None:
            d["mark_rgb"] = tuple(d["mark_rgb"])
        return cls(**d)


@dataclass
class ToyScene:
    """A generated scene: the image, its objects (in decreasing-salience order is *not* implied:
    objects are in drawing order), the layout description and the seed that reproduces it."""

    image: Image.Image
    objects: list[ToyObject]
    layout: dict[str, Any]
    seed: int | None
    config: ToyWorldConfig | None = None

    @property
    def size(self) -> int:
        return self.image.width

    def record(self, *, id: str | None = None, image: str | None = None) -> dict[str, Any]:
        """The scene's ``objects.jsonl`` line (everything but the pixels)."""
        return {
            "id": id,
            "image": image,
            "seed": self.seed,
            "width": self.image.width,
            "height": self.image.height,
            "layout": self.layout,
            "objects": [o.to_dict() for o in self.objects],
        }


# ---------------------------------------------------------------------------------- drawing


def render_shape_mask(shape: str, side: int, *, horizontal: bool = True) -> Image.Image:
    """Binary ``L`` mask (0/255) of ``shape`` drawn in a ``side`` x ``side`` footprint."""
    if shape not in SHAPES:
        raise ValueError(f"Unknown shape {shape!r}; known shapes: {SHAPES}.")
    s = int(side)
    m = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(m)
    e = s - 1
    c = e / 2.0
    t = max(2, round(s / 3))  # stroke thickness of cross and bar
    lo, hi = round(c - (t - 1) / 2), round(c - (t - 1) / 2) + t - 1
    if shape == "circle":
        d.ellipse((0, 0, e, e), fill=255)
    elif shape == "square":
        k = max(1, s // 10)
        d.rectangle((k, k, e - k, e - k), fill=255)
    elif shape == "triangle":
        d.polygon([(c, 0), (e, e), (0, e)], fill=255)
    elif shape == "diamond":
        d.polygon([(c, 0), (e, c), (c, e), (0, c)], fill=255)
    elif shape == "cross":
        d.rectangle((0, lo, e, hi), fill=255)
        d.rectangle((lo, 0, hi, e), fill=255)
    elif shape == "ring":
        d.ellipse((0, 0, e, e), fill=255)
        k = max(2, round(s * 0.25))
        d.ellipse((k, k, e - k, e - k), fill=0)
    elif shape == "bar":
        d.rectangle((0, lo, e, hi) if horizontal else (lo, 0, hi, e), fill=255)
    return m


def _mark_mask(mark: str, side: int, centre: tuple[float, float]) -> Image.Image:
    s = int(side)
    m = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(m)
    cx, cy = centre
    r = max(1.0, s / 8.0)
    if mark == "dot":
        d.rectangle((round(cx - r + 0.5), round(cy - r + 0.5), round(cx + r - 0.5), round(cy + r - 0.5)), fill=255)
    elif mark == "stripe":
        h = max(1.0, s / 4.0)
        d.line((round(cx - h), round(cy), round(cx + h), round(cy)), fill=255, width=1)
    elif mark == "slash":
        h = max(1.0, s / 5.0)
        d.line((round(cx - h), round(cy + h), round(cx + h), round(cy - h)), fill=255, width=1)
    return m


def _pick(rng: np.random.Generator, palette: Mapping[str, RGB], exclude: Sequence[str] = ()) -> tuple[str, RGB]:
    names = [n for n in palette if n not in exclude] or list(palette)
    name = names[int(rng.integers(len(names)))]
    return name, palette[name]


def _draw_layout(rng: np.random.Generator, cfg: ToyWorldConfig) -> tuple[Image.Image, dict[str, Any]]:
    S = cfg.size
    img = Image.new("RGB", (S, S))
    d = ImageDraw.Draw(img)
    indoor = bool(rng.random() < cfg.p_indoor)
    regions: list[dict[str, Any]] = []
    if indoor:
        horizon = int(round(S * rng.uniform(0.55, 0.75)))
        top_name, top = _pick(rng, cfg.wall_colours)
        bot_name, bot = _pick(rng, cfg.floor_colours, exclude=[top_name])
        d.rectangle((0, 0, S - 1, horizon - 1), fill=top)
        d.rectangle((0, horizon, S - 1, S - 1), fill=bot)
        regions += [
            {"name": "wall", "colour": top_name, "rgb": list(top), "box": [0, 0, S, horizon]},
            {"name": "floor", "colour": bot_name, "rgb": list(bot), "box": [0, horizon, S, S]},
        ]
        # a window (high on the wall) or a door (standing on the floor)
        kind = "window" if rng.random() < 0.5 else "door"
        w = int(round(S * rng.uniform(0.2, 0.35)))
        x0 = int(rng.integers(2, max(3, S - w - 2)))
        if kind == "window":
            y0 = int(round(horizon * rng.uniform(0.1, 0.3)))
            y1 = y0 + int(round(horizon * rng.uniform(0.35, 0.5)))
            name, rgb = _pick(rng, cfg.sky_colours, exclude=[top_name])
        else:
            y0 = int(round(horizon * rng.uniform(0.2, 0.35)))
            y1 = horizon
            name, rgb = _pick(rng, cfg.floor_colours, exclude=[top_name, bot_name])
        d.rectangle((x0, y0, x0 + w - 1, y1 - 1), fill=rgb)
        regions.append({"name": kind, "colour": name, "rgb": list(rgb), "box": [x0, y0, x0 + w, y1]})
        if rng.random() < 0.5:  # a rug on the floor
            name, rgb = _pick(rng, cfg.wall_colours, exclude=[top_name])
            rw = int(round(S * rng.uniform(0.3, 0.55)))
            rh = max(3, int(round((S - horizon) * rng.uniform(0.3, 0.55))))
            rx = int(rng.integers(0, max(1, S - rw)))
            ry = int(rng.integers(horizon + 1, max(horizon + 2, S - rh)))
            d.ellipse((rx, ry, rx + rw - 1, ry + rh - 1), fill=rgb)
            regions.append({"name": "rug", "colour": name, "rgb": list(rgb), "box": [rx, ry, rx + rw, ry + rh]})
    else:
        horizon = int(round(S * rng.uniform(0.35, 0.65)))
        top_name, top = _pick(rng, cfg.sky_colours)
        bot_name, bot = _pick(rng, cfg.ground_colours, exclude=[top_name])
        d.rectangle((0, 0, S - 1, horizon - 1), fill=top)
        d.rectangle((0, horizon, S - 1, S - 1), fill=bot)
        regions += [
            {"name": "sky", "colour": top_name, "rgb": list(top), "box": [0, 0, S, horizon]},
            {"name": "ground", "colour": bot_name, "rgb": list(bot), "box": [0, horizon, S, S]},
        ]
        # a hill standing on the horizon
        name, rgb = _pick(rng, cfg.ground_colours, exclude=[top_name, bot_name])
        hw = int(round(S * rng.uniform(0.35, 0.8)))
        hh = max(3, int(round(horizon * rng.uniform(0.25, 0.6))))
        hx = int(rng.integers(-hw // 3, S - 2 * hw // 3))
        d.pieslice((hx, horizon - hh, hx + hw - 1, horizon + hh - 1), 180, 360, fill=rgb)
        regions.append(
            {
                "name": "hill",
                "colour": name,
                "rgb": list(rgb),
                "box": [max(0, hx), horizon - hh, min(S, hx + hw), horizon],
            }
        )
        if rng.random() < 0.5:  # a path from the bottom edge to the horizon
            name, rgb = _pick(rng, cfg.ground_colours, exclude=[bot_name])
            cx = S * rng.uniform(0.3, 0.7)
            wb, wt = S * rng.uniform(0.2, 0.35), S * 0.04
            pts = [(cx - wb / 2, S - 1), (cx + wb / 2, S - 1), (cx + wt / 2, horizon), (cx - wt / 2, horizon)]
            d.polygon(pts, fill=rgb)
            regions.append(
                {
                    "name": "path",
                    "colour": name,
                    "rgb": list(rgb),
                    "box": [max(0, int(cx - wb / 2)), horizon, min(S, int(math.ceil(cx + wb / 2)) + 1), S],
                }
            )
    layout = {"kind": "indoor" if indoor else "outdoor", "horizon": horizon, "regions": regions}
    return img, layout


def _rng_and_seed(rng_or_seed: np.random.Generator | int | None) -> tuple[np.random.Generator, int | None]:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed, None
    if rng_or_seed is None or isinstance(rng_or_seed, bool) or not isinstance(rng_or_seed, (int, np.integer)):
        raise TypeError(f"rng_or_seed must be an int seed or a numpy Generator, got {rng_or_seed!r}.")
    if rng_or_seed < 0:
        raise ValueError(f"seed must be >= 0, got {rng_or_seed}.")
    return np.random.default_rng(int(rng_or_seed)), int(rng_or_seed)


def generate_scene(rng_or_seed: np.random.Generator | int, config: ToyWorldConfig | None = None) -> ToyScene:
    """Generate one scene. The same int seed and config always give the same pixels and objects.

    Parameters
    ----------
    rng_or_seed : int or numpy.random.Generator
        An int seed (stored in :attr:`ToyScene.seed`) or a generator (``seed`` is then ``None``).
    config : ToyWorldConfig, optional
        Defaults to ``ToyWorldConfig()``.
    """
    cfg = config or ToyWorldConfig()
    rng, seed = _rng_and_seed(rng_or_seed)
    S, k = cfg.size, cfg.scale
    img, layout = _draw_layout(rng, cfg)
    bg = np.asarray(img, dtype=np.float64)
    gap = max(2, round(2 * k))
    ring = max(2, round(3 * k))
    n_target = int(rng.integers(cfg.n_objects[0], cfg.n_objects[1] + 1))
    placed: list[tuple[int, int, int]] = []  # footprints (x, y, side)
    objects: list[ToyObject] = []
    colour_names = list(cfg.object_colours)
    for _ in range(n_target):
        side = max(4, int(round(rng.integers(cfg.object_size[0], cfg.object_size[1] + 1) * k)))
        for _attempt in range(100):
            x = int(rng.integers(1, S - side))
            y = int(rng.integers(1, S - side))
            if all(
                x + side + gap <= px or px + ps + gap <= x or y + side + gap <= py or py + ps + gap <= y
                for px, py, ps in placed
            ):
                break
        else:
            continue  # no room left: fewer objects
        placed.append((x, y, side))
        shape = cfg.shapes[int(rng.integers(len(cfg.shapes)))]
        horizontal = bool(rng.random() < 0.5)
        mask = render_shape_mask(shape, side, horizontal=horizontal)
        # local layout colour: mean over a ring around the footprint
        X0, Y0 = max(0, x - ring), max(0, y - ring)
        X1, Y1 = min(S, x + side + ring), min(S, y + side + ring)
        outer = bg[Y0:Y1, X0:X1].reshape(-1, 3).sum(0)
        inner = bg[y : y + side, x : x + side].reshape(-1, 3).sum(0)
        n_ring = (Y1 - Y0) * (X1 - X0) - side * side
        local = (outer - inner) / max(1, n_ring)
        ok = [n for n in colour_names if _rgb_dist(cfg.object_colours[n], local) >= cfg.min_contrast] or colour_names
        colour = ok[int(rng.integers(len(ok)))]
        rgb = cfg.object_colours[colour]
        img.paste(rgb, (x, y), mask)
        full = mask
        mark = mark_rgb = None
        if cfg.marks and rng.random() < cfg.p_mark:
            mark = cfg.marks[int(rng.integers(len(cfg.marks)))]
            mark_rgb = max(MARK_COLOURS.values(), key=lambda m: _rgb_dist(m, rgb))
            mb = mask.getbbox()
            if shape == "triangle":  # centroid, not box centre
                centre = ((mb[0] + mb[2] - 1) / 2.0, mb[1] + (mb[3] - mb[1] - 1) * 2.0 / 3.0)
            else:
                centre = ((mb[0] + mb[2] - 1) / 2.0, (mb[1] + mb[3] - 1) / 2.0)
            mmask = _mark_mask(mark, side, centre)
            img.paste(mark_rgb, (x, y), mmask)
            full = Image.fromarray(np.maximum(np.asarray(mask), np.asarray(mmask)))
        bx0, by0, bx1, by1 = full.getbbox()
        box = (x + bx0, y + by0, x + bx1, y + by1)
        area = float((np.asarray(full) > 0).sum()) / (k * k)
        salience = _rgb_dist(rgb, local) / _MAX_DIST * math.sqrt(area)
        objects.append(
            ToyObject(
                shape=shape,
                colour=colour,
                rgb=tuple(rgb),
                box=box,
                centre=((box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0),
                mark=mark,
                mark_rgb=None if mark_rgb is None else tuple(mark_rgb),
                salience=round(salience, 6),
            )
        )
    return ToyScene(image=img, objects=objects, layout=layout, seed=seed, config=cfg)


# ---------------------------------------------------------------------------------- scanpaths


def in_box(x: float, y: float, box: Box, margin: float = 0.0) -> bool:
    """Whether image point ``(x, y)`` lies in ``box`` (``(left, top, right, bottom)``) grown by ``margin`` pixels."""
    return box[0] - margin <= x < box[2] + margin and box[1] - margin <= y < box[3] + margin


def viewer_scanpath(
    scene: ToyScene,
    rng_or_seed: np.random.Generator | int,
    config: ToyWorldConfig | None = None,
    **metadata: Any,
) -> Scanpath:
    """A toy viewer's scanpath on ``scene`` by the salience rule of the module docstring.

    ``metadata`` goes to :class:`Scanpath` (``image``, ``id``, ...); ``subject`` defaults to
    ``"toy-viewer"`` and ``condition`` to ``"viewer"``. ``extra["targets"]`` lists, per fixation,
    the index in ``scene.objects`` of the object aimed at, or -1 for a background fixation.
    """
    cfg = config or scene.config or ToyWorldConfig()
    rng, _ = _rng_and_seed(rng_or_seed)
    S = scene.image.width
    H = scene.image.height
    sigma = cfg.fixation_jitter * S / 64.0
    objs = scene.objects
    order = sorted(range(len(objs)), key=lambda i: -objs[i].salience)
    sal = np.array([max(o.salience, 1e-6) for o in objs])
    visited: list[int] = []
    targets: list[int] = []
    xs: list[float] = []
    ys: list[float] = []
    x_max, y_max = float(np.nextafter(S, 0)), float(np.nextafter(H, 0))
    for _ in range(cfg.n_fixations):
        u = rng.random()
        if not objs or u < cfg.p_background:
            for _attempt in range(50):
                x, y = rng.uniform(0, S), rng.uniform(0, H)
                if not any(in_box(x, y, o.box) for o in objs):
                    break
            targets.append(-1)
        else:
            unvisited = [i for i in order if i not in visited]
            if visited and (not unvisited or rng.random() < cfg.p_refixation):
                if unvisited:  # a refixation: any visited object, uniformly
                    i = visited[int(rng.integers(len(visited)))]
                else:  # everything seen: revisit by salience
                    i = int(rng.choice(len(objs), p=sal / sal.sum()))
            else:
                i = unvisited[0]
                visited.append(i)
            cx, cy = objs[i].centre
            x, y = cx + rng.normal(0.0, sigma), cy + rng.normal(0.0, sigma)
            targets.append(i)
        xs.append(min(max(round(float(x), 3), 0.0), x_max))
        ys.append(min(max(round(float(y), 3), 0.0), y_max))
    durations = rng.uniform(cfg.duration_ms[0], cfg.duration_ms[1], size=len(xs)).round(1)
    onsets = np.concatenate([[0.0], np.cumsum(durations[:-1] + 30.0)]).round(1)
    metadata.setdefault("subject", "toy-viewer")
    metadata.setdefault("condition", "viewer")
    extra = dict(metadata.pop("extra", None) or {})
    extra["targets"] = targets
    fixations = tuple(Fixation(x, y, float(d), float(o)) for x, y, d, o in zip(xs, ys, durations, onsets))
    return Scanpath(fixations, S, H, extra=extra, **metadata)


def random_scanpath(viewer: Scanpath, rng_or_seed: np.random.Generator | int) -> Scanpath:
    """Uniform random control matched to ``viewer`` in count and timing (``matched_random``).

    ``subject`` becomes ``"random"``, ``condition`` ``"random"``, ``id`` gets ``"-random"``, and
    ``extra`` is ``{"matched": viewer.id}`` (the viewer's targets do not apply).
    """
    out = matched_random(viewer, generator=rng_or_seed)
    return dataclasses.replace(out, subject="random", extra={"matched": viewer.id})


def scene_scanpaths(
    scene: ToyScene,
    *,
    image: str,
    scene_id: str,
    viewers: int = 1,
    config: ToyWorldConfig | None = None,
) -> list[Scanpath]:
    """Viewer scanpaths ``<scene_id>-v<k>`` and their random controls ``<scene_id>-v<k>-random``.

    Randomness comes from ``(scene.seed, k)``, separate from the scene's own stream, so adding
    viewers never changes the scene or the earlier viewers.
    """
    if scene.seed is None:
        raise ValueError("scene_scanpaths needs a scene generated from an int seed (scene.seed is None).")
    out = []
    for k in range(viewers):
        v = viewer_scanpath(
            scene,
            np.random.default_rng([scene.seed, k, 0]),
            config,
            image=image,
            id=f"{scene_id}-v{k}",
            extra={"scene": scene_id},
        )
        out.append(v)
        out.append(random_scanpath(v, np.random.default_rng([scene.seed, k, 1])))
    return out


# ---------------------------------------------------------------------------------- on disk


def scene_seeds(seed: int, n_scenes: int) -> list[int]:
    """Scene seeds of a split: ``seed * 1_000_000 + i`` for ``i < n_scenes`` (``n_scenes`` <= 10**6).

    Splits with different ``seed`` therefore never share a scene; :func:`write_world` uses
    ``2 * seed`` for train and ``2 * seed + 1`` for test.
    """
    if not 0 <= n_scenes <= _SEED_STRIDE:
        raise ValueError(f"n_scenes must be in [0, {_SEED_STRIDE}], got {n_scenes}.")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}.")
    return [int(seed) * _SEED_STRIDE + i for i in range(n_scenes)]


def _save_png(path: Path, image: Image.Image) -> None:
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def write_split(
    out_dir: str | Path,
    n_scenes: int,
    *,
    seed: int | None = None,
    config: ToyWorldConfig | None = None,
    viewers_per_scene: int = 1,
    name: str | None = None,
) -> dict[str, Any]:
    """Write ``n_scenes`` scenes with scanpaths and ground truth to ``out_dir`` (every file atomic).

    Returns a summary: ``dir``, ``scanpaths``, ``objects``, ``info`` (paths as str), ``n_scenes``,
    ``n_scanpaths``, ``seed``, ``scene_seeds`` (first, last).
    """
    cfg = config or ToyWorldConfig()
    seed = cfg.seed if seed is None else int(seed)
    if viewers_per_scene < 1:
        raise ValueError(f"viewers_per_scene must be >= 1, got {viewers_per_scene}.")
    out = Path(out_dir)
    seeds = scene_seeds(seed, n_scenes)
    scanpaths: list[Scanpath] = []
    records: list[str] = []
    for s in seeds:
        scene = generate_scene(s, cfg)
        scene_id = f"scene-{s:09d}"
        image = f"{scene_id}.png"
        _save_png(out / "images" / image, scene.image)
        scanpaths += scene_scanpaths(scene, image=image, scene_id=scene_id, viewers=viewers_per_scene, config=cfg)
        records.append(json.dumps(scene.record(id=scene_id, image=image), allow_nan=False) + "\n")
    objects_path = out / "objects.jsonl"
    atomic_write(objects_path, lambda tmp: Path(tmp).write_text("".join(records), encoding="utf-8"))
    info = DatasetInfo(
        name=name or f"toyworld-seed{seed}",
        image_root="images",
        pixels_per_degree=cfg.pixels_per_degree,
        source="metamergen.toyworld",  # recorded in dataset.json; kept stable across the package move
        notes=(
            f"Procedural toy scenes ({cfg.size}x{cfg.size} px). scanpaths.jsonl holds viewer "
            "(condition 'viewer', salience rule) and matched random (condition 'random') "
            "scanpaths; objects.jsonl holds ground-truth boxes (x0, y0, x1, y1; right/bottom "
            f"exclusive). pixels_per_degree is a toy value: the image spans "
            f"{cfg.degrees_per_image:g} deg."
        ),
        extra={
            "seed": seed,
            "n_scenes": n_scenes,
            "viewers_per_scene": viewers_per_scene,
            "scene_seed_rule": f"seed * {_SEED_STRIDE} + index",
            "config": cfg.to_dict(),
        },
    )
    scan_path = write_scanpaths(out / "scanpaths.jsonl", scanpaths, info)
    return {
        "dir": str(out),
        "scanpaths": str(scan_path),
        "objects": str(objects_path),
        "info": str(out / "dataset.json"),
        "n_scenes": n_scenes,
        "n_scanpaths": len(scanpaths),
        "seed": seed,
        "scene_seeds": (seeds[0], seeds[-1]) if seeds else None,
    }


def write_world(
    out_dir: str | Path,
    n_train: int,
    n_test: int,
    seed: int | None = None,
    *,
    config: ToyWorldConfig | None = None,
    viewers_per_scene: int = 1,
) -> dict[str, dict[str, Any]]:
    """Write ``<out>/train`` (split seed ``2 * seed``) and ``<out>/test`` (``2 * seed + 1``).

    The two splits' scene seeds are disjoint by construction (:func:`scene_seeds`).
    """
    cfg = config or ToyWorldConfig()
    seed = cfg.seed if seed is None else int(seed)
    out = Path(out_dir)
    return {
        "train": write_split(
            out / "train",
            n_train,
            seed=2 * seed,
            config=cfg,
            viewers_per_scene=viewers_per_scene,
            name=f"toyworld-train-seed{seed}",
        ),
        "test": write_split(
            out / "test",
            n_test,
            seed=2 * seed + 1,
            config=cfg,
            viewers_per_scene=viewers_per_scene,
            name=f"toyworld-test-seed{seed}",
        ),
    }


def read_objects(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read ``objects.jsonl``: ``{image name: record}`` with ``record["objects"]`` as :class:`ToyObject`."""
    out: dict[str, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                rec["objects"] = [ToyObject.from_dict(o) for o in rec["objects"]]
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}, line {lineno}: not a toy-world object record ({err}).") from None
            out[rec["image"]] = rec
    return out


# ---------------------------------------------------------------------------------- measures


@dataclass(frozen=True)
class ObjectAttributes:
    """What :func:`object_attributes` reads off an image inside a box.

    ``colour``: the palette colour covering most of the box (pixels within ``tolerance`` of it),
    or ``None`` if none covers at least ``min_fraction`` of the box; ``fraction``: its share of
    the box's pixels; ``rgb``: mean RGB of those pixels (of the whole box if ``colour`` is None);
    ``shape``: the vocabulary shape whose rendered mask best matches those pixels (IoU
    ``shape_iou``), or ``None`` when ``colour`` is None.
    """

    colour: str | None
    fraction: float
    rgb: tuple[float, float, float]
    shape: str | None
    shape_iou: float


@dataclass(frozen=True)
class ColourMatch:
    """Whether an object's colour is reproduced in an image (see :func:`object_colour_match`)."""

    true_colour: str
    measured_colour: str | None
    match: bool
    distance: float


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64)
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"image must be a PIL image or an (H, W, 3) array, got shape {a.shape}.")
    a = a.astype(np.float64)
    if a.max(initial=0.0) <= 1.0 and np.issubdtype(np.asarray(image).dtype, np.floating):
        a = a * 255.0
    return a


def _scaled_box(box: Sequence[float], frame: tuple[int, int] | None, shape: tuple[int, int]) -> Box:
    h, w = shape
    x0, y0, x1, y1 = (float(v) for v in box)
    if frame is not None and (frame[0], frame[1]) != (w, h):
        sx, sy = w / frame[0], h / frame[1]
        x0, x1, y0, y1 = x0 * sx, x1 * sx, y0 * sy, y1 * sy
    b = (
        max(0, int(math.floor(x0))),
        max(0, int(math.floor(y0))),
        min(w, int(math.ceil(x1))),
        min(h, int(math.ceil(y1))),
    )
    if b[2] <= b[0] or b[3] <= b[1]:
        raise ValueError(f"box {tuple(box)} is empty or outside the {w}x{h} image.")
    return b


def _best_shape(mask: np.ndarray, shapes: Sequence[str]) -> tuple[str | None, float]:
    h, w = mask.shape
    if not mask.any():
        return None, 0.0
    best, best_iou = None, -1.0
    side = max(h, w)
    for shape in shapes:
        for horizontal in (True, False) if shape == "bar" else (True,):
            tmpl = render_shape_mask(shape, side, horizontal=horizontal)
            tmpl = tmpl.crop(tmpl.getbbox())
            # stretching would make a bar's and a square's templates identical: penalise the
            # stretch by the ratio of the template's and the box's aspect ratios
            ar_t, ar_b = tmpl.width / tmpl.height, w / h
            t = np.asarray(tmpl.resize((w, h), Image.NEAREST)) > 0
            iou = float((t & mask).sum()) / max(1, float((t | mask).sum()))
            iou *= min(ar_t, ar_b) / max(ar_t, ar_b)
            if iou > best_iou:
                best, best_iou = shape, iou
    return best, best_iou


def object_attributes(
    image: Image.Image | np.ndarray,
    box: Sequence[float],
    *,
    palette: Mapping[str, RGB] | None = None,
    tolerance: float = 40.0,
    min_fraction: float = 0.15,
    frame: tuple[int, int] | None = None,
    shapes: Sequence[str] = SHAPES,
) -> ObjectAttributes:
    """Dominant palette colour and best-matching shape inside ``box`` of ``image``.

    Each pixel of the box is assigned to the nearest ``palette`` colour (default
    :data:`OBJECT_COLOURS`) if it lies within ``tolerance`` RGB units of it; the dominant colour is
    the one with most pixels, if they are at least ``min_fraction`` of the box. The shape guess
    compares those pixels with each shape's template stretched to the box (intersection over
    union, times the ratio of template and box aspect ratios so that stretching is penalised). ``box`` is in pixels of ``image``, or of an image of size ``frame=(width, height)``
    (then scaled to ``image``'s size, e.g. for a generation at another resolution). ``image`` is
    a PIL image, a uint8 ``(H, W, 3)`` array or a float one in [0, 1].
    """
    a = _as_array(image)
    x0, y0, x1, y1 = _scaled_box(box, frame, a.shape[:2])
    pix = a[y0:y1, x0:x1]
    pal = dict(palette or OBJECT_COLOURS)
    names = list(pal)
    P = np.array([pal[n] for n in names], dtype=np.float64)
    d = np.sqrt(((pix[:, :, None, :] - P[None, None]) ** 2).sum(-1))  # (h, w, K)
    nearest = d.argmin(-1)
    assigned = d.min(-1) <= tolerance
    counts = np.bincount(nearest[assigned], minlength=len(names))
    n = pix.shape[0] * pix.shape[1]
    k = int(counts.argmax())
    if counts[k] == 0 or counts[k] / n < min_fraction:
        rgb = tuple(float(v) for v in pix.reshape(-1, 3).mean(0))
        return ObjectAttributes(None, float(counts[k] / n), rgb, None, 0.0)
    mask = assigned & (nearest == k)
    rgb = tuple(float(v) for v in pix[mask].mean(0))
    shape, iou = _best_shape(mask, shapes)
    return ObjectAttributes(names[k], float(counts[k] / n), rgb, shape, iou)


def object_colour_match(
    image: Image.Image | np.ndarray,
    obj: ToyObject,
    *,
    palette: Mapping[str, RGB] | None = None,
    tolerance: float = 40.0,
    quantile: float = 0.2,
    frame: tuple[int, int] | None = None,
) -> ColourMatch:
    """Is ``obj``'s colour reproduced inside its box in ``image``?

    ``match``: the dominant palette colour (:func:`object_attributes`) is the object's colour.
    ``distance``: the ``quantile`` (default 0.2) of the per-pixel RGB distances between the box's
    pixels and the object's true colour; 0 when at least that share of the box is exactly the
    true colour (every toy shape covers more than 30% of its box), large when the colour is
    absent. Pass ``frame=(w, h)`` of the scene when ``image`` has another size.
    """
    attrs = object_attributes(image, obj.box, palette=palette, tolerance=tolerance, frame=frame)
    a = _as_array(image)
    x0, y0, x1, y1 = _scaled_box(obj.box, frame, a.shape[:2])
    pix = a[y0:y1, x0:x1].reshape(-1, 3)
    dist = np.sqrt(((pix - np.asarray(obj.rgb, float)) ** 2).sum(-1))
    return ColourMatch(obj.colour, attrs.colour, attrs.colour == obj.colour, float(np.quantile(dist, quantile)))


# ---------------------------------------------------------------------------------- CLI
