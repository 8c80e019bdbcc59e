"""Figures: the scanpath on the scene, what the model was shown, and the hypotheses side by side."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from metamergen.encoders.view import foveated_input  # re-exported: figures show what the model saw

__all__ = [
    "MAX_PANEL_ASPECT",
    "MAX_SHEET_PIXELS",
    "MAX_SHEET_WIDTH",
    "contact_sheet",
    "draw_scanpath",
    "foveated_input",
]


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


_PAD, _TEXT_H = 6, 16  # padding around panels, caption line height (pixels)


def _sheet_layout(
    sizes: Sequence[tuple[int, int]], height: int, max_panel_aspect: float, max_width: int
) -> tuple[list[tuple[int, int]], list[list[int]], int, int]:
    """Panel sizes at ``height``, panels per row, and the sheet's width and height."""
    fitted = []
    for w, h in sizes:
        pw = max(1, round(w * height / h))
        ph = height
        if pw > max_panel_aspect * height:  # a long thin panel: fit it in a max_panel_aspect:1 box
            pw = max(1, round(max_panel_aspect * height))
            ph = max(1, min(height, round(h * pw / w)))
        fitted.append((pw, ph))
    rows: list[list[int]] = [[]]
    row_width = _PAD
    for i, (pw, _) in enumerate(fitted):
        if rows[-1] and row_width + pw + _PAD > max_width:
            rows.append([])
            row_width = _PAD
        rows[-1].append(i)
        row_width += pw + _PAD
    width = max(_PAD + sum(fitted[i][0] + _PAD for i in row) for row in rows)
    total_height = len(rows) * (height + _TEXT_H + _PAD) + _PAD
    return fitted, rows, width, total_height


#: Widest panel of a contact sheet, as a multiple of the sheet's height: longer panels are shrunk
#: to fit (a 10000 x 10 scene at 256 px high would be 256 000 px wide).
MAX_PANEL_ASPECT = 4.0
#: Widest row of a contact sheet, pixels; further panels wrap onto a new row.
MAX_SHEET_WIDTH = 4096
#: Most pixels a contact sheet may hold; a sheet that would be larger is drawn at a smaller height.
#: (Pillow refuses to open images over about 179 million pixels as a decompression bomb.)
MAX_SHEET_PIXELS = 16_000_000


def contact_sheet(
    panels: Sequence[Image.Image],
    captions: Sequence[str] | None = None,
    height: int = 256,
    *,
    max_panel_aspect: float = MAX_PANEL_ASPECT,
    max_width: int = MAX_SHEET_WIDTH,
    max_pixels: int = MAX_SHEET_PIXELS,
) -> Image.Image:
    """Panels side by side at a common height, each with a caption underneath, bounded in size.

    Parameters
    ----------
    panels
        The images, left to right.
    captions
        One caption per panel (default none).
    height
        Panel height in pixels.
    max_panel_aspect
        A panel wider than ``max_panel_aspect * height`` is shrunk to that width (keeping its aspect
        ratio, so it is shorter than ``height``).
    max_width
        Panels wrap onto a new row rather than make a row wider than this (pixels).
    max_pixels
        If the sheet would hold more pixels, it is drawn at a smaller ``height`` (at least 16 px).

    Returns
    -------
    PIL.Image.Image
        RGB; one row of panels when they fit in ``max_width`` (every ordinary sheet), so
        ``(sum of widths + 6 px padding) x (height + 28)``.
    """
    captions = list(captions or [""] * len(panels))
    sizes = [(p.width, p.height) for p in panels]
    fitted, rows, width, total = _sheet_layout(sizes, height, max_panel_aspect, max_width)
    while width * total > max_pixels and height > 16:
        height = max(16, int(height * (max_pixels / (width * total)) ** 0.5))
        fitted, rows, width, total = _sheet_layout(sizes, height, max_panel_aspect, max_width)
    sheet = Image.new("RGB", (width, total), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        top = _PAD + r * (height + _TEXT_H + _PAD)
        x = _PAD
        for i in row:
            pw, ph = fitted[i]
            sheet.paste(panels[i].convert("RGB").resize((pw, ph)), (x, top + (height - ph) // 2))
            draw.text((x, top + height + 2), _fit_caption(draw, captions[i], pw), fill=(0, 0, 0))
            x += pw + _PAD
    return sheet


def _fit_caption(draw: ImageDraw.ImageDraw, text: str, width: int) -> str:
    """``text`` cut with "..." to fit ``width`` pixels (a caption wider than its panel ran into the next one)."""
    if draw.textlength(text) <= width:
        return text
    while text and draw.textlength(text + "...") > width:
        text = text[:-1]
    return text + "..."
