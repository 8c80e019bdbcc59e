"""The one-step diagnostics of metamergen.evaluation.diagnostics on the tiny random pipeline."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def tiny():
    from metamergen.testing import tiny_pipeline

    return tiny_pipeline(seed=0)


def _scenes(n: int = 2, size: int = 64) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def test_stream_contributions_scores_the_fixated_cells_and_the_whole_latent(tiny):
    """Fixations on every patch make the fixated region the whole latent; a single fixation
    scores a part of it with the same noise; the fixations reach the estimate only through the fovea."""
    from metamergen.evaluation.diagnostics import stream_contributions

    images = _scenes()
    everywhere = [[(x + 0.5, y + 0.5) for x in range(0, 64, 2) for y in range(0, 64, 2)]] * 2
    r = stream_contributions(tiny, images, everywhere, timesteps=(500,))
    for cond in ("both", "foveal", "peripheral", "none"):
        assert r[cond]["fixated"] == pytest.approx(r[cond]["whole"], rel=1e-5)
    one = stream_contributions(tiny, images, [[(10.0, 10.0)], [(50.0, 40.0)]], timesteps=(500,))
    for cond in ("peripheral", "none"):  # no foveal tokens: the fixations change only the region scored
        assert one[cond]["whole"] == pytest.approx(r[cond]["whole"], rel=1e-6)
        assert one[cond]["fixated"] != pytest.approx(one[cond]["whole"], rel=1e-3)
    assert one["both"]["whole"] != pytest.approx(r["both"]["whole"], rel=1e-6)  # other foveal tokens
    gain = np.subtract(one["peripheral"]["fixated_per_scene"], one["both"]["fixated_per_scene"])
    assert one["foveal_gain_per_scene"] == pytest.approx(gain.tolist())
    assert one["foveal_gain_share"] == float((gain > 0).mean())


def test_stream_contributions_refuses_scenes_without_a_fixation_on_the_image(tiny):
    from metamergen.evaluation.diagnostics import stream_contributions

    with pytest.raises(ValueError, match="at least one fixation on the image"):
        stream_contributions(tiny, _scenes(), [[(10.0, 10.0)], []], timesteps=(500,))
    with pytest.raises(ValueError, match="one fixation list per image"):
        stream_contributions(tiny, _scenes(), [[(10.0, 10.0)]], timesteps=(500,))


def test_foveal_localisation_compares_the_change_inside_and_outside_the_fixated_cells(tiny):
    """The fovea's change of the one-step estimate, per latent cell, split by the fixated cells."""
    import torch

    from metamergen.evaluation.diagnostics import foveal_localisation
    from metamergen.foveation.fovea import token_cells

    images = _scenes()
    fixations = [[(10.0, 10.0)], [(50.0, 40.0), (20.0, 44.0)]]
    r = foveal_localisation(tiny, images, fixations, timesteps=(500,))
    change = torch.from_numpy(r["change_map"])
    assert change.ndim == 3 and change.shape[0] == 2 and (change >= 0).all() and change.sum() > 0
    scene = tiny.encode_scene(images, peripheral_blur=0.25)
    masks, _, _ = tiny.foveal_masks(scene, [np.asarray(f) for f in fixations])
    cells = token_cells(masks, tuple(change.shape[-2:]))[:, 0]
    for i in range(2):
        assert r["inside_per_scene"][i] == pytest.approx(float(change[i][cells[i]].mean()), rel=1e-5)
        assert r["outside_per_scene"][i] == pytest.approx(float(change[i][~cells[i]].mean()), rel=1e-5)
        assert r["ratio_per_scene"][i] == pytest.approx(r["inside_per_scene"][i] / r["outside_per_scene"][i])
        assert r["area_share_per_scene"][i] == pytest.approx(float(cells[i].float().mean()))
    assert r["ratio"] == pytest.approx(float(np.exp(np.log(r["ratio_per_scene"]).mean())))
    everywhere = [[(x + 0.5, y + 0.5) for x in range(0, 64, 2) for y in range(0, 64, 2)]] * 2
    with pytest.raises(ValueError, match="fixated and unfixated cells"):
        foveal_localisation(tiny, images, everywhere, timesteps=(500,))
