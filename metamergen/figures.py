"""Figures: the scanpath on the scene, what the model was shown, and the hypotheses side by side."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from .encoders import IMAGENET_MEAN, IMAGENET_STD, SceneEncoding
from .foveation import peripheral_image

__all__ = ["contact_sheet", "draw_scanpath", "foveated_view"]


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


def foveated_view(scene: SceneEncoding, index: int, mask: torch.Tensor) -> Image.Image:
    """What the two streams were given, in one picture: the foveated patches sharp, the rest as the
    peripheral stream saw it. Returned at the size of the encoded region (image pixels of the box).

    Parameters
    ----------
    scene
        The scene encoding (its sharp canvas and peripheral blur are used).
    index
        Which scene of the encoding.
    mask
        ``(grid, grid)`` bool token mask.
    """
    sharp = scene.pixel_values[index : index + 1].float().cpu()
    blurred = peripheral_image(sharp, scene.blur)
    frame = scene.frames[index]
    keep = mask.to(torch.bool).cpu().repeat_interleave(frame.patch_size, 0).repeat_interleave(frame.patch_size, 1)
    canvas = torch.where(keep, sharp, blurred)[0]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = ((canvas * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
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
