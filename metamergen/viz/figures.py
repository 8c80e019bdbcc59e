"""Figures: the scanpath on the scene, what the model was shown, and the hypotheses side by side."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from metamergen.defaults import PERIPHERAL_BLUR
from metamergen.encoders.dinov2 import IMAGENET_MEAN, IMAGENET_STD, dinov2_processor, encoder_canvas
from metamergen.foveation.fovea import token_mask
from metamergen.foveation.periphery import peripheral_image

__all__ = ["contact_sheet", "draw_scanpath", "foveated_input"]


def draw_scanpath(image: Image.Image, xy: np.ndarray, radius: float | None = None) -> Image.Image:
    """The scene with its fixations drawn: numbered discs joined in order.

    Parameters
    ----------
    image
        The scene (image pixels).
    xy
        ``(N, 2)`` fixations in pixels of ``image``.
    radius
        Disc radius in image pixels (default: 2.5 % of the shorter side).
    """
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    r = radius or max(3.0, 0.025 * min(out.size))
    pts = [tuple(map(float, p)) for p in np.asarray(xy, dtype=float).reshape(-1, 2)]
    if len(pts) > 1:
        draw.line(pts, fill=(255, 255, 0), width=max(1, int(r / 3)))
    for i, (x, y) in enumerate(pts, start=1):
        draw.ellipse([x - r, y - r, x + r, y + r], outline=(255, 255, 0), width=max(1, int(r / 3)), fill=(0, 0, 0))
        draw.text((x - r / 2, y - r / 1.4), str(i), fill=(255, 255, 0))
    return out


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


def contact_sheet(
    panels: Sequence[Image.Image], captions: Sequence[str] | None = None, height: int = 256
) -> Image.Image:
    """Panels side by side at a common height, each with a caption underneath."""
    captions = list(captions or [""] * len(panels))
    resized = [p.convert("RGB").resize((max(1, round(p.width * height / p.height)), height)) for p in panels]
    pad, text_h = 6, 16
    width = sum(p.width for p in resized) + pad * (len(resized) + 1)
    sheet = Image.new("RGB", (width, height + text_h + 2 * pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    x = pad
    for panel, caption in zip(resized, captions):
        sheet.paste(panel, (x, pad))
        draw.text((x, pad + height + 2), caption, fill=(0, 0, 0))
        x += panel.width + pad
    return sheet
