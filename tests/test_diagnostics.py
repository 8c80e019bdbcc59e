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
