"""Figures: the scanpath on the scene, what the model was shown, and the hypotheses side by side."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from metamergen.encoders.view import foveated_input  # re-exported: figures show what the model saw

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
