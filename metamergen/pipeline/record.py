"""The render record: what ``metamergen render`` writes to ``render.json`` and the server returns.

One owner for the record's keys and the hypothesis file names, so a live trial served by
``metamergen serve`` and the same render made offline with ``metamergen render`` describe
themselves identically (and a record from one can be checked against the other key by key).
Imports nothing heavy: the command line and the HTTP client side read it without torch.
"""

from __future__ import annotations

import json
from typing import Any

from metamergen import __version__

__all__ = ["RECORD_NAME", "hypothesis_filename", "record_json", "render_record"]

#: File name of the record in a render folder.
RECORD_NAME = "render.json"


def hypothesis_filename(index: int, seed: int) -> str:
    """File name of hypothesis ``index`` (0-based) rendered with ``seed``: ``hypothesis_000_seed0.png``."""
    return f"hypothesis_{index:03d}_seed{seed}.png"


def render_record(
    *,
    image: str,
    fixations: Any,
    model: str,
    model_revision: str | None,
    seed: int,
    num_images: int,
    steps: int,
    guidance: str,
    guidance_scale: float | None,
    foveal_scale: float,
    peripheral_scale: float,
    peripheral_blur: float,
    image_path: str | None = None,
    model_path: str | None = None,
) -> dict[str, Any]:
    """The record of one render: a scene, one fixation list, ``num_images`` seeds.

    Parameters
    ----------
    image
        How the scene is named: the path given to ``render --image``, or a served scene's name.
    image_path, model_path
        The absolute paths of the scene file and of a local ``--model`` folder (``render`` passes
        them; the server, whose scenes are uploads, does not). Recorded as ``image_path`` after
        ``image`` and ``model_path`` after ``model`` only where they differ from what was given,
        i.e. where ``image`` / ``model`` is a relative path: the record then reproduces the render
        from any working directory, and names the inputs as they were given too. A record made
        with absolute paths (and every served record) has neither key.
    fixations
        ``(N, 2)`` array-like of the fixations actually used, ``(x, y)`` in pixels of the scene
        image (after the off-image policy and any prefix).
    model, model_revision
        The model's description and hub revision, as :func:`metamergen.loading.load_model` gives them.
    seed, num_images
        Hypothesis ``i`` is rendered with seed ``seed + i``, ``i < num_images``.
    steps, guidance, guidance_scale, foveal_scale, peripheral_scale, peripheral_blur
        The sampling settings as given; ``guidance_scale`` ``None`` (the rule's default) is
        recorded as the value that default resolved to, so the record alone reproduces the render.

    Returns
    -------
    dict
        JSON-ready; keys in the order ``render.json`` has always had (``image_path`` and
        ``model_path``, where present, next to what they resolve).
    """
    import numpy as np

    from metamergen.defaults import resolve_guidance_scale

    seeds = [int(seed) + i for i in range(int(num_images))]
    given = {"image": str(image)}
    if image_path is not None and str(image_path) != str(image):
        given["image_path"] = str(image_path)
    given["fixations"] = np.asarray(fixations, dtype=np.float64).reshape(-1, 2).tolist()
    given["model"] = model
    if model_path is not None and str(model_path) != str(model):
        given["model_path"] = str(model_path)
    return {
        **given,
        "model_revision": model_revision,
        "seeds": seeds,
        "steps": steps,
        "guidance": guidance,
        "guidance_scale": resolve_guidance_scale(guidance, guidance_scale),
        "foveal_scale": foveal_scale,
        "peripheral_scale": peripheral_scale,
        "peripheral_blur": peripheral_blur,
        "outputs": [hypothesis_filename(i, s) for i, s in enumerate(seeds)],
        "metamergen_version": __version__,
    }


def record_json(record: dict[str, Any]) -> str:
    """The text of ``render.json`` for ``record`` (2-space indented JSON, as ``render`` writes it)."""
    return json.dumps(record, indent=2)
