"""Baselines every score is compared with: what a render must beat to count as an effect.

Two images per scene, scored with the same metrics as the renders:

* ``"flat"``: a uniform image of the scene's mean colour (knows only the average colour);
* ``"periphery"``: the degraded peripheral input itself, drawn back at the scene's size with no model
  (:func:`~metamergen.encoders.view.foveated_input` in its ``"peripheral"`` form), at each
  ``peripheral_blur`` and encoder frame the study used: what the periphery alone conveys.

A metric on which the renders do not beat the flat image measures nothing the model adds, and one on
which they do not beat the periphery input says the model adds nothing to its own input.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from metamergen import defaults
from metamergen.encoders.view import foveated_input
from metamergen.utils.images import load_image

__all__ = ["BASELINES", "BASELINES_NAME", "baseline_image", "score_baselines"]

#: Baselines, in table order, with the label the report shows.
BASELINES: dict[str, str] = {
    "flat": "flat image of the scene's mean colour",
    "periphery": "the peripheral input itself (no model)",
}

#: File name of the baseline table ``metamergen score`` writes next to the score table.
BASELINES_NAME = "baselines.csv"


def baseline_image(
    scene: Image.Image,
    kind: str,
    *,
    peripheral_blur: float = defaults.PERIPHERAL_BLUR,
    encoder_canvas: int = defaults.ENCODER_RESOLUTION,
    encoder_patch: int = defaults.ENCODER_PATCH_SIZE,
) -> Image.Image:
    """The ``kind`` baseline (``"flat"`` or ``"periphery"``) of ``scene``, at the scene's size.

    ``peripheral_blur``, ``encoder_canvas`` and ``encoder_patch`` (canvas pixels) describe the
    periphery the model was given; the flat image ignores them.
    """
    rgb = scene.convert("RGB")
    if kind == "flat":
        mean = np.asarray(rgb, dtype=np.float64).reshape(-1, 3).mean(axis=0)
        return Image.new("RGB", rgb.size, tuple(int(round(v)) for v in mean))
    if kind == "periphery":
        return foveated_input(
            rgb, np.zeros((0, 2)), peripheral_blur, "peripheral", size=encoder_canvas, patch_size=encoder_patch
        )
    raise ValueError(f"Unknown baseline {kind!r}; choose one of {list(BASELINES)}.")


def _frame(row: dict[str, Any]) -> tuple[int, int]:
    try:
        return int(row["encoder_canvas"]), int(row["encoder_patch"])
    except (KeyError, TypeError, ValueError):  # manifests from before the frame was recorded
        return defaults.ENCODER_RESOLUTION, defaults.ENCODER_PATCH_SIZE


def score_baselines(
    rows: Sequence[dict[str, Any]],
    metrics: Sequence[Any],
    *,
    root: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Score both baselines of every scene in a study's manifest rows with ``metrics``.

    Parameters
    ----------
    rows
        Manifest rows (``scene``, ``scene_id``, ``peripheral_blur``, ``encoder_canvas``,
        ``encoder_patch``); ``scene`` paths are absolute or relative to ``root``.
    metrics
        Built :class:`~metamergen.evaluation.metrics.Metric` objects (the ones the renders were scored with).

    Returns
    -------
    list of dict
        One row per scene for ``"flat"`` and per (scene, blur, encoder frame) for ``"periphery"``:
        ``baseline, scene, scene_id, peripheral_blur, encoder_canvas, encoder_patch``, one
        column per metric, and ``score_resolution`` (what each metric compared at, as in the score table).
    """
    from metamergen.evaluation.scoring import resolution_label

    root = Path(root) if root is not None else Path(".")
    cases: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        canvas, patch = _frame(r)
        blur = float(r.get("peripheral_blur", defaults.PERIPHERAL_BLUR))
        common = {"scene": r["scene"], "scene_id": r["scene_id"]}
        cases.setdefault(
            ("flat", r["scene"]),
            dict(common, baseline="flat", peripheral_blur=None, encoder_canvas=None, encoder_patch=None),
        )
        cases.setdefault(
            ("periphery", r["scene"], blur, canvas, patch),
            dict(common, baseline="periphery", peripheral_blur=blur, encoder_canvas=canvas, encoder_patch=patch),
        )
    out = []
    scenes: dict[str, Image.Image] = {}
    for case in sorted(cases.values(), key=lambda c: (c["scene_id"], list(BASELINES).index(c["baseline"]))):
        path = Path(case["scene"])
        path = path if path.is_absolute() else root / path
        if case["scene"] not in scenes:
            scenes[case["scene"]] = load_image(path)
        scene = scenes[case["scene"]]
        image = baseline_image(
            scene,
            case["baseline"],
            peripheral_blur=case["peripheral_blur"] or defaults.PERIPHERAL_BLUR,
            encoder_canvas=case["encoder_canvas"] or defaults.ENCODER_RESOLUTION,
            encoder_patch=case["encoder_patch"] or defaults.ENCODER_PATCH_SIZE,
        )
        row = {"baseline": case["baseline"], **{k: v for k, v in case.items() if k != "baseline"}}
        for metric in metrics:
            row[metric.name] = float(metric([scene], [image])[0])
        row["score_resolution"] = resolution_label(metrics, scene.size)
        out.append(row)
    return out
