"""Toy-world measures: what the toy world's ground truth lets the demo measure beyond image metrics.

The two object measures are registered with the metric registry here, so the report labels them
with a direction while the core never names them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from metamergen.evaluation.registry import MetricInfo, register_metric_info
from metamergen.utils.images import load_image

__all__ = [
    "SHAPE_JUDGE",
    "TOY_METRICS",
    "fixation_averaged",
    "object_scores",
    "own_vs_other",
    "region_errors",
    "shape_judge",
    "shape_scores",
    "toy_scores",
]

#: The toy-world measures (the columns :func:`toy_scores` adds to a score table).
TOY_METRICS: dict[str, MetricInfo] = {
    "objects_recovered": MetricInfo("share of the scene's objects recovered (colour)", "Obj", True),
    "fixated_objects_recovered": MetricInfo("share of fixated objects recovered (colour)", "FixObj", True),
    "fixated_object_mse": MetricInfo("MSE inside the fixated objects' boxes", "FixMSE", False),
    "layout_mse": MetricInfo("MSE outside every object's box (the layout)", "LayMSE", False),
    "shapes_recognised": MetricInfo("share of the scene's objects whose shape the toy classifier names", "Shape", True),
    "fixated_shapes_recognised": MetricInfo(
        "share of fixated objects whose shape the toy classifier names", "FixShape", True
    ),
}

#: The miniature model that judges an object's shape (:mod:`metamergen.demo.metamer_models`): the
#: tiny ViT, the most accurate of them on held-out toy crops (0.99; the CNNs 0.93).
SHAPE_JUDGE = "vit"
for _name, _info in TOY_METRICS.items():
    register_metric_info(_name, _info)


def object_scores(
    generation: Image.Image,
    objects: Sequence[Any],
    fixations: Sequence[Sequence[float]],
    *,
    scene_size: tuple[int, int],
    margin: float = 2.0,
) -> dict[str, float]:
    """Object-level recovery of a generation (:func:`metamergen.demo.toyworld.object_colour_match`).

    Parameters
    ----------
    generation
        The rendered image (any size; boxes are scaled from the scene's frame).
    objects
        The scene's :class:`~metamergen.demo.toyworld.ToyObject` list.
    fixations
        The fixations used for this generation, ``(x, y)`` in pixels of the scene image.
    scene_size
        ``(width, height)`` of the scene image, pixels.
    margin
        A fixation within ``margin`` scene pixels of a box counts as landing on the object.

    Returns
    -------
    dict
        ``objects_recovered``: share of *all* the scene's objects whose colour is the dominant
        palette colour in their box of the generation; ``fixated_objects_recovered``: the same over
        the objects hit by at least one fixation (NaN when none was hit).
    """
    from metamergen.demo.toyworld import object_colour_match

    matches = [object_colour_match(generation, o, frame=scene_size).match for o in objects]
    hit = [m for m, fixated in zip(matches, _fixated(objects, fixations, margin)) if fixated]
    return {
        "objects_recovered": float(np.mean(matches)) if matches else math.nan,
        "fixated_objects_recovered": float(np.mean(hit)) if hit else math.nan,
    }


def region_errors(
    generation: Image.Image,
    scene: Image.Image,
    objects: Sequence[Any],
    fixations: Sequence[Sequence[float]],
    *,
    margin: float = 2.0,
) -> dict[str, float]:
    """Pixel errors of a generation where the toy world's ground truth says the fovea and the periphery act.

    Parameters
    ----------
    generation
        The rendered image (resized to the scene's size, bicubic, as the metrics do).
    scene
        The original scene image.
    objects
        The scene's :class:`~metamergen.demo.toyworld.ToyObject` list (boxes in scene pixels).
    fixations
        ``(x, y)`` in scene pixels; an object is fixated when a fixation lands within ``margin``
        pixels of its box.

    Returns
    -------
    dict
        ``fixated_object_mse``: mean squared RGB error in [0, 1] units over the pixels of the
        fixated objects' boxes (NaN when no object was fixated); ``layout_mse``: the same over the
        pixels outside every object's box (the layout, which the periphery conveys).
    """

    o = np.asarray(scene.convert("RGB"), dtype=np.float64) / 255
    g = _at_size(generation, scene.size)
    err = ((np.asarray(g, dtype=np.float64) / 255 - o) ** 2).mean(axis=-1)
    h, w = err.shape
    fixated = np.zeros((h, w), bool)
    any_object = np.zeros((h, w), bool)
    for obj, was_fixated in zip(objects, _fixated(objects, fixations, margin)):
        x0, y0, x1, y1 = (int(round(v)) for v in obj.box)
        region = (slice(max(0, y0), min(h, y1)), slice(max(0, x0), min(w, x1)))
        any_object[region] = True
        if was_fixated:
            fixated[region] = True
    return {
        "fixated_object_mse": float(err[fixated].mean()) if fixated.any() else math.nan,
        "layout_mse": float(err[~any_object].mean()) if (~any_object).any() else math.nan,
    }


def own_vs_other(rows: Sequence[Mapping[str, Any]], root: str | Path) -> dict[str, float]:
    """Is each generation closer (pixel MSE) to its own scene than to the other scenes?

    Parameters
    ----------
    rows
        Manifest rows (:mod:`metamergen.study`): ``path`` of the generation relative to ``root``
        and ``scene``, the scene image path; generations of at least two scenes.
    root
        The study folder.

    Returns
    -------
    dict
        ``own_closest``: share of generations whose own scene has the lowest MSE among all the
        scenes of ``rows`` (``chance`` = ``1 / n_scenes``); ``mse_own`` / ``mse_other``: mean MSE
        to the own scene / to each other scene (:class:`metamergen.evaluation.metrics.MSE`, the generation
        resized to the scene, as in ``metamergen score``); ``ratio`` = their quotient (``< 1``:
        generations carry their scene); ``n_generations``, ``n_scenes``.
    """
    from metamergen.evaluation.metrics import MSE

    root = Path(root)
    scenes = sorted({str(r["scene"]) for r in rows})
    if len(scenes) < 2:
        raise ValueError("own_vs_other needs generations of at least two scenes.")
    originals = [load_image(s if Path(s).is_absolute() else root / s) for s in scenes]
    mse = MSE()
    own, other, closest = [], [], []
    for r in rows:
        generation = load_image(root / r["path"])
        d = dict(zip(scenes, mse(originals, [generation] * len(scenes)).tolist()))
        own.append(d[str(r["scene"])])
        other.append(float(np.mean([v for s, v in d.items() if s != str(r["scene"])])))
        closest.append(min(d, key=d.get) == str(r["scene"]))
    return {
        "n_generations": len(rows),
        "n_scenes": len(scenes),
        "own_closest": float(np.mean(closest)),
        "chance": 1.0 / len(scenes),
        "mse_own": float(np.mean(own)),
        "mse_other": float(np.mean(other)),
        "ratio": float(np.mean(own) / np.mean(other)),
    }


def shape_judge() -> Any:
    """The frozen toy shape classifier (:data:`SHAPE_JUDGE`): ``(B, 3, 32, 32)`` in [0, 1] -> ``(B, 7)`` logits."""
    from metamergen.demo.metamer_models import load_miniature_models

    return load_miniature_models(names=(SHAPE_JUDGE,))[SHAPE_JUDGE]


def shape_scores(
    generation: Image.Image,
    objects: Sequence[Any],
    fixations: Sequence[Sequence[float]],
    *,
    scene_size: tuple[int, int],
    judge: Any,
    margin: float = 2.0,
) -> dict[str, float]:
    """Does an object's *shape* appear where it was? The toy classifier names each object's crop.

    The judge names many shapes of the demo's periphery input itself (s = 1/8, no model), more
    often than :func:`object_scores` finds their colours there, so a render must draw a shape well
    to beat it.

    Parameters
    ----------
    generation
        The rendered image (resized to ``scene_size``, bicubic, as the metrics do).
    objects
        The scene's :class:`~metamergen.demo.toyworld.ToyObject` list (boxes in scene pixels).
    fixations
        ``(x, y)`` in scene pixels; an object is fixated when a fixation lands within ``margin``
        pixels of its box.
    scene_size
        ``(width, height)`` of the scene image, pixels.
    judge
        :func:`shape_judge`'s model (loaded once by the caller).

    Returns
    -------
    dict
        ``shapes_recognised``: share of all objects whose 32 px crop, centred on the object's box
        (:func:`~metamergen.demo.metamer_models.object_crop`, the classifier's training frame), is
        classified as the object's shape; ``fixated_shapes_recognised``: the same over the fixated
        objects (NaN when none was hit). Chance is 1/7.
    """
    import torch

    from metamergen.demo.metamer_models import object_crop
    from metamergen.demo.toyworld import SHAPES

    if not objects:
        return {"shapes_recognised": math.nan, "fixated_shapes_recognised": math.nan}
    g = _at_size(generation, scene_size)
    pixels = np.asarray(g, dtype=np.uint8)
    crops = np.stack([object_crop(pixels, o.centre)[0] for o in objects])
    with torch.no_grad():
        x = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(255.0)
        named = judge(x).argmax(dim=-1).tolist()
    right = [SHAPES[k] == o.shape for k, o in zip(named, objects)]
    hit = [r for r, fixated in zip(right, _fixated(objects, fixations, margin)) if fixated]
    return {
        "shapes_recognised": float(np.mean(right)),
        "fixated_shapes_recognised": float(np.mean(hit)) if hit else math.nan,
    }


def toy_scores(
    image: Image.Image,
    scene: Image.Image,
    objects: Sequence[Any],
    fixations: Sequence[Sequence[float]],
    *,
    judge: Any,
    margin: float = 2.0,
) -> dict[str, float]:
    """Every :data:`TOY_METRICS` column of one image: :func:`object_scores`, :func:`region_errors`
    and :func:`shape_scores` together.

    Parameters
    ----------
    image
        A render or a baseline image (any size; resized to the scene's, bicubic).
    scene
        The original scene image; its size is the frame of ``objects`` and ``fixations``.
    objects
        The scene's :class:`~metamergen.demo.toyworld.ToyObject` list (boxes in scene pixels).
    fixations
        ``(x, y)`` in scene pixels (empty: the fixated columns are NaN).
    judge
        :func:`shape_judge`'s model.
    """
    size = scene.size
    return {
        **object_scores(image, objects, fixations, scene_size=size, margin=margin),
        **region_errors(image, scene, objects, fixations, margin=margin),
        **shape_scores(image, objects, fixations, scene_size=size, judge=judge, margin=margin),
    }


def fixation_averaged(
    image: Image.Image,
    scene: Image.Image,
    objects: Sequence[Any],
    fixation_lists: Sequence[Sequence[Sequence[float]]],
    *,
    judge: Any,
    margin: float = 2.0,
) -> dict[str, float]:
    """:func:`toy_scores` of an image that has no fixations of its own (a baseline), for renders that do.

    The scene-wide columns do not depend on fixations. Each ``fixated_*`` column is averaged over
    ``fixation_lists`` (NaN lists, which hit no object, left out), so that a baseline of a scene is
    scored over the same fixated objects as the renders it is compared with.

    Parameters
    ----------
    fixation_lists
        The renders' fixation lists, ``(x, y)`` in scene pixels, each once per render that used it.
    """
    scored: dict[tuple, dict[str, float]] = {}  # a list recurs once per hypothesis: score it once
    per_list = []
    for f in fixation_lists:
        key = tuple(tuple(float(v) for v in xy) for xy in f)
        if key not in scored:
            scored[key] = toy_scores(image, scene, objects, f, judge=judge, margin=margin)
        per_list.append(scored[key])
    out = toy_scores(image, scene, objects, [], judge=judge, margin=margin)
    for column in out:
        if column.startswith("fixated_"):
            values = [s[column] for s in per_list if math.isfinite(s[column])]
            out[column] = float(np.mean(values)) if values else math.nan
    return out


def _fixated(objects: Sequence[Any], fixations: Sequence[Sequence[float]], margin: float) -> list[bool]:
    """Per object: did a fixation ``(x, y)`` (scene pixels) land within ``margin`` pixels of its box?"""
    from metamergen.demo.toyworld import in_box

    return [any(in_box(x, y, o.box, margin) for x, y in fixations) for o in objects]


def _at_size(generation: Image.Image, size: Sequence[int]) -> Image.Image:
    """The render in RGB at the scene's ``(width, height)``, bicubic, as the metrics resize it."""
    g = generation.convert("RGB")
    return g if g.size == tuple(size) else g.resize(tuple(size), Image.Resampling.BICUBIC)
