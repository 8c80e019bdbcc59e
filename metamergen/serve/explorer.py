"""What the explorer page asks of the server besides renders: the demo's scenes, the model's view, scores.

Each function calls the library's owner of its rule and adds only what a browser needs:

- :func:`demo_scenes`: the bundled demo model's held-out toy scenes and their toy-viewer
  scanpaths, written by :func:`metamergen.demo.run.write_demo_scenes` (the files ``metamergen demo``
  renders, under the same names) and read back once;
- :func:`model_view`: "what the model saw", :func:`metamergen.encoders.view.foveated_input` (the
  figure ``render`` puts in its contact sheet), enlarged with the model's patch grid drawn over it
  and the patches the foveal stream was given (:func:`metamergen.foveation.token_mask` on the
  scene's own :class:`~metamergen.foveation.EncoderFrame`) outlined;
- :func:`score_images`: hypotheses against their scene with the metrics ``metamergen score`` uses
  (:func:`metamergen.evaluation.metrics.build_metrics`), labelled by the metric registry.

The page itself is the static folder next to this module (``static/``: HTML, JS and CSS, no build
step, nothing fetched from elsewhere).
"""

from __future__ import annotations

import functools
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from metamergen.evaluation.registry import WEIGHT_FREE_METRICS

if TYPE_CHECKING:
    from PIL import Image

    from metamergen.evaluation.metrics import Metric
    from metamergen.foveation.frame import EncoderFrame

__all__ = [
    "DEMO_SCENE_COUNT",
    "MODEL_VIEW_MIN_SIDE",
    "SCORE_METRICS",
    "STATIC_DIR",
    "DemoSceneImage",
    "demo_scenes",
    "model_view",
    "score_images",
    "view_condition",
]

#: The page's files.
STATIC_DIR = Path(__file__).resolve().parent / "static"

#: Toy scenes offered: the first of the demo model's held-out split (``metamergen demo --scenes 8``
#: writes the same files).
DEMO_SCENE_COUNT = 8

#: The model's view is enlarged by a whole factor until its longer side reaches this (pixels), so
#: that a 64-px toy scene's 8 x 8 patch grid can be drawn with lines thinner than a patch.
MODEL_VIEW_MIN_SIDE = 512

#: What ``scores: true`` computes: the metrics that need no downloaded weights.
SCORE_METRICS: tuple[str, ...] = WEIGHT_FREE_METRICS


@dataclass(frozen=True)
class DemoSceneImage:
    """One demo scene: its file name, pixels and toy-viewer fixations (image pixels)."""

    name: str
    image: Image.Image
    viewer_fixations: tuple[tuple[float, float], ...]


@functools.cache
def demo_scenes(n_scenes: int = DEMO_SCENE_COUNT) -> tuple[DemoSceneImage, ...]:
    """The first ``n_scenes`` held-out scenes of the bundled demo model, with their viewer scanpaths.

    Written by :func:`~metamergen.demo.run.write_demo_scenes` into a temporary folder and read back
    with the project's image loader and scanpath reader, so they are byte for byte the scenes
    ``metamergen demo --scenes n_scenes`` writes (``<out>/scenes/images/<name>``). Made once per
    process (a few milliseconds).
    """
    from metamergen.demo.run import DEMO_MODEL, demo_model_info, write_demo_scenes
    from metamergen.fixations.io import read_scanpaths
    from metamergen.utils.images import load_image

    with tempfile.TemporaryDirectory(prefix="metamergen-demo-scenes-") as tmp:
        scanpaths = read_scanpaths(write_demo_scenes(tmp, n_scenes, demo_model_info(DEMO_MODEL)))
        images = Path(tmp) / "images"
        viewer = {s.image: tuple(map(tuple, s.xy.tolist())) for s in scanpaths}
        return tuple(
            DemoSceneImage(name=p.name, image=load_image(p), viewer_fixations=viewer.get(p.name, ()))
            for p in sorted(images.iterdir())
        )


def view_condition(fovea: bool, periphery: bool) -> str:
    """:func:`~metamergen.encoders.view.foveated_input`'s ``condition`` for the streams a render uses."""
    if fovea and periphery:
        return "both"
    return "peripheral" if periphery else "foveal"  # neither: the grey canvas of a fovea with no patches


def model_view(
    scene: Image.Image,
    fixations: np.ndarray,
    frame: EncoderFrame,
    *,
    peripheral_blur: float,
    fovea: bool,
    periphery: bool,
    min_side: int = MODEL_VIEW_MIN_SIDE,
) -> tuple[Image.Image, dict[str, Any]]:
    """What the model was given for ``fixations``, with its patch grid and foveal patches drawn.

    Parameters
    ----------
    scene
        The scene (image pixels).
    fixations
        ``(N, 2)`` fixations used, image pixels (after the off-image policy and the prefix).
    frame
        The scene's encoder frame, as the pipeline made it (``SceneEncoding.frames[0]``).
    peripheral_blur
        The periphery's down/up scale ``s``.
    fovea, periphery
        Whether each stream reaches the model (a stream dropped or at scale 0 is not shown).
    min_side
        Enlarge by a whole factor (nearest neighbour: the model's pixels stay visible) until the
        longer side is at least this.

    Returns
    -------
    image, info
        The view (RGB, the frame's box enlarged), and ``canvas_size``, ``patch_size``,
        ``grid_size``, ``patches_shown`` (foveal patches given), ``view`` (the
        :func:`view_condition`) and ``scale`` (view pixels per image pixel).
    """
    from PIL import Image, ImageDraw

    from metamergen.encoders.view import foveated_input
    from metamergen.foveation.fovea import token_mask

    xy = np.asarray(fixations, dtype=np.float64).reshape(-1, 2)
    condition = view_condition(fovea, periphery)
    view = foveated_input(scene, xy, peripheral_blur, condition, size=frame.size, patch_size=frame.patch_size).convert(
        "RGB"
    )
    factor = max(1, math.ceil(min_side / max(view.size)))
    view = view.resize((view.width * factor, view.height * factor), Image.Resampling.NEAREST)
    left, top = frame.box[:2]
    # grid lines: canvas multiples of the patch, mapped to image pixels by the frame, then to the view
    ticks = frame.to_image(np.repeat((np.arange(frame.grid_size + 1) * frame.patch_size)[:, None], 2, axis=1))
    xs = [(x - left) * factor for x in ticks[:, 0]]
    ys = [(y - top) * factor for y in ticks[:, 1]]
    overlay = Image.new("RGBA", view.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    line = max(1, factor // 4)  # still a line when the page shows the view smaller
    for x in xs:
        draw.line([(x, 0), (x, view.height)], fill=(255, 255, 255, 110), width=line)
    for y in ys:
        draw.line([(0, y), (view.width, y)], fill=(255, 255, 255, 110), width=line)
    mask = token_mask(xy, frame) if fovea else np.zeros((frame.grid_size, frame.grid_size), dtype=bool)
    width = max(2, round(min(xs[1] - xs[0], ys[1] - ys[0]) / 12))
    for row, col in zip(*np.nonzero(mask)):
        draw.rectangle([xs[col], ys[row], xs[col + 1], ys[row + 1]], outline=(255, 214, 0, 255), width=width)
    out = Image.alpha_composite(view.convert("RGBA"), overlay).convert("RGB")
    info = {
        "canvas_size": frame.size,
        "patch_size": frame.patch_size,
        "grid_size": frame.grid_size,
        "patches_shown": int(mask.sum()),
        "view": condition,
        "scale": factor,
    }
    return out, info


@functools.cache
def _metrics(names: tuple[str, ...]) -> tuple[Metric, ...]:
    from metamergen.evaluation.metrics import build_metrics

    return tuple(build_metrics(list(names)))


def score_images(
    scene: Image.Image, images: Sequence[Image.Image], names: Sequence[str] = SCORE_METRICS
) -> list[dict[str, Any]]:
    """Every image scored against ``scene`` by each metric (built once per process).

    Returns
    -------
    list of dict
        One per metric: ``name``, ``label`` and ``higher_is_similar`` (the metric registry's) and
        ``values``, one float per image (``None`` where not finite, e.g. PSNR of an identical image).
    """
    from metamergen.evaluation.registry import metric_info

    out = []
    for metric in _metrics(tuple(names)):
        values = metric([scene] * len(images), list(images))
        info = metric_info(metric.name)
        out.append(
            {
                "name": metric.name,
                "label": info.label,
                "higher_is_similar": bool(metric.higher_is_similar),
                "values": [float(v) if math.isfinite(v) else None for v in values],
            }
        )
    return out
