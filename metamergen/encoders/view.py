"""The encoder's input as a picture: what the model was given, drawn without any weights.

:func:`foveated_input` shows the sharp fixated patches over the degraded periphery (or either alone),
built through the same canvas (:func:`~metamergen.encoders.encoder_canvas`), patch grid and
degradation the model uses. Figures show it next to the hypotheses, and the evaluation scores its
``"peripheral"`` form as the no-model baseline: what the periphery alone conveys.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from metamergen.defaults import PERIPHERAL_BLUR
from metamergen.encoders.dinov2 import IMAGENET_MEAN, IMAGENET_STD, dinov2_processor, encoder_canvas
from metamergen.foveation.fovea import token_mask
from metamergen.foveation.periphery import peripheral_image

__all__ = ["foveated_input"]


def foveated_input(
    scene: Image.Image,
    fixations: np.ndarray,
    peripheral_blur: float = PERIPHERAL_BLUR,
    condition: str = "both",
    *,
    size: int,
    patch_size: int,
    fill: tuple[int, int, int] = (128, 128, 128),
) -> Image.Image:
    """What the model was given, computed with the encoder's own canvas but without any weights.

    The scene goes through :func:`~metamergen.encoders.encoder_canvas` (squash fit, the DINOv2
    processor's resize) at the model's canvas ``size``, is degraded by
    :func:`~metamergen.foveation.peripheral_image` with ``peripheral_blur``, the ``patch_size``
    patches marked by :func:`~metamergen.foveation.token_mask` are pasted back sharp, and the canvas
    is resized back to the scene's size. ``size`` and ``patch_size`` must be the model's (e.g. 448
    and 14 for the paper's DINOv2, 112 and 14 for the demo model): a 448-px view of a 112-px model
    would show a periphery four times too sharp and a fovea four times too small.

    Parameters
    ----------
    scene
        The scene image (image pixels).
    fixations
        ``(N, 2)`` fixations in image pixels.
    peripheral_blur
        The paper's down/up scale ``s`` in (0, 1].
    condition
        ``"both"`` (sharp patches over the degraded periphery), ``"peripheral"`` (periphery only,
        no sharp patches) or ``"foveal"`` (sharp patches over ``fill``: the peripheral stream was off).
    size, patch_size
        The model's canvas and patch side in canvas pixels
        (``canvas_size(pipe.feature_extractor)``, ``pipe.image_encoder.config.patch_size``).
    fill
        RGB shown where nothing was given (``"foveal"`` condition).
    """
    image = scene.convert("RGB")
    normalised, (frame,) = encoder_canvas(dinov2_processor(size), [image], patch_size=patch_size, fit="squash")
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    sharp = (normalised.float() * std + mean).clamp(0, 1)  # the canvas in [0, 1], as the encoder saw it
    if condition == "foveal":
        periphery = torch.tensor(fill, dtype=torch.float32).view(1, 3, 1, 1).expand_as(sharp) / 255.0
    else:
        periphery = peripheral_image(sharp, float(peripheral_blur))
    if condition == "peripheral":
        keep = torch.zeros(size, size, dtype=torch.bool)
    else:
        mask = torch.from_numpy(token_mask(np.asarray(fixations, dtype=float).reshape(-1, 2), frame))
        keep = mask.repeat_interleave(patch_size, 0).repeat_interleave(patch_size, 1)
    out = torch.where(keep, sharp, periphery)[0]
    rgb = (out.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    left, top, right, bottom = frame.box
    return Image.fromarray(rgb).resize((right - left, bottom - top), Image.Resampling.BICUBIC)
