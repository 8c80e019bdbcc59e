"""Baselines: a flat mean-colour image and the periphery input, scored like renders, shown in the report."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from metamergen.encoders.view import foveated_input
from metamergen.evaluation.baselines import baseline_image, score_baselines
from metamergen.evaluation.metrics import build_metrics


def _scene(seed: int, size=(64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.kron(rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    return Image.fromarray(arr)


def test_the_flat_baseline_is_the_mean_colour_and_the_periphery_baseline_is_the_models_degraded_input():
    scene = _scene(0)
    flat = np.asarray(baseline_image(scene, "flat")).reshape(-1, 3)
    assert (flat == flat[0]).all()
    np.testing.assert_allclose(flat[0], np.asarray(scene, dtype=float).reshape(-1, 3).mean(0), atol=0.5)
    per = baseline_image(scene, "periphery", peripheral_blur=0.25, encoder_canvas=112, encoder_patch=14)
    expected = foveated_input(scene, np.zeros((0, 2)), 0.25, "peripheral", size=112, patch_size=14)
    assert per.size == scene.size and np.array_equal(np.asarray(per), np.asarray(expected))


def test_every_scene_gets_one_flat_row_and_one_periphery_row_per_blur(tmp_path):
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"s{i}.png")
        _scene(i).save(paths[-1])
    rows = [
        {"scene": str(p), "scene_id": p.name, "peripheral_blur": s, "encoder_canvas": 112, "encoder_patch": 14}
        for p in paths
        for s in (0.25, 0.25, 0.5)  # repeated settings give one row
    ]
    mse = build_metrics(["mse"])
    out = pd.DataFrame(score_baselines(rows, mse))
    assert sorted(zip(out["scene_id"], out["baseline"], out["peripheral_blur"].fillna(-1))) == sorted(
        [(p.name, "flat", -1) for p in paths] + [(p.name, "periphery", s) for p in paths for s in (0.25, 0.5)]
    )
    for p in paths:  # the flat image's MSE is the scene's pixel variance around its mean colour
        arr = np.asarray(Image.open(p), dtype=np.float64) / 255
        flat = out[(out["scene_id"] == p.name) & (out["baseline"] == "flat")]["mse"].item()
        assert abs(flat - ((arr - arr.reshape(-1, 3).mean(0)) ** 2).mean()) < 1e-4
    sharper = out[out["peripheral_blur"] == 0.5].set_index("scene_id")["mse"]
    blurrier = out[out["peripheral_blur"] == 0.25].set_index("scene_id")["mse"]
    assert (sharper < blurrier).all()  # less degradation, closer to the scene
