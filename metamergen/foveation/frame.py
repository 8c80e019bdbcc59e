"""Foveation: where the fixations fall on the encoder's patch grid, and what the periphery sees.

Three coordinate frames appear here, and every function says which one it takes:

* **image pixels**: pixels of the scene's image file, origin top-left, x right, y down,
  continuous (pixel ``i`` covers ``[i, i + 1)``). Fixations live here (:mod:`metamergen.fixations`).
* **canvas pixels**: pixels of the encoder's square input (``size`` x ``size``, 448 for DINOv2 in
  the paper), same conventions.
* **grid cells**: the encoder's patch grid (``grid_size`` x ``grid_size``, 32 x 32 in the paper);
  cell ``(row, col)`` covers canvas pixels ``[col * patch, (col + 1) * patch)`` horizontally and
  ``[row * patch, (row + 1) * patch)`` vertically. Flattened token index is ``row * grid_size + col``
  (the order of a ViT's patch tokens).

An :class:`EncoderFrame` is the single description of how an image becomes the encoder's canvas:
an integer box in image pixels (it may reach past the image, which is then padded) that is resized
to the canvas. The pixels and the fixation mapping both go through it, so they cannot disagree.

The default fit is ``"squash"``: the whole image is resized to the square canvas, so no part of
the periphery is cropped away and every token sees scene content (COCO-FreeView's 1680x1050 frame
fills all 32 x 32 tokens). ``"letterbox"`` keeps the aspect ratio and pads; ``"center_crop"`` is the
usual ViT preprocessing and loses the sides of wide scenes; any other crop is a ``box``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from metamergen.defaults import ENCODER_PATCH_SIZE, ENCODER_RESOLUTION

FitMode = Literal["squash", "letterbox", "center_crop"]

__all__ = ["EncoderFrame", "FitMode"]


@dataclass(frozen=True)
class EncoderFrame:
    """How one scene image maps onto the encoder's square canvas.

    Parameters
    ----------
    image_width, image_height
        Size of the scene image, in image pixels.
    box
        ``(left, top, right, bottom)`` in image pixels, integers: the region that is resized to the
        canvas. Parts outside the image are padded with black.
    size
        Canvas side in canvas pixels (448 in the paper).
    patch_size
        Encoder patch side in canvas pixels (14 for DINOv2).
    """

    image_width: int
    image_height: int
    box: tuple[int, int, int, int]
    size: int
    patch_size: int

    def __post_init__(self) -> None:
        if self.image_width <= 0 or self.image_height <= 0:
            raise ValueError(f"Image size must be positive, got {self.image_width}x{self.image_height}.")
        left, top, right, bottom = self.box
        if right <= left or bottom <= top:
            raise ValueError(
                f"Empty box {self.box}: expected (left, top, right, bottom) with right > left, bottom > top."
            )
        if self.size % self.patch_size:
            raise ValueError(
                f"Canvas size {self.size} is not a multiple of the patch size {self.patch_size}; "
                f"use e.g. {self.size // self.patch_size * self.patch_size}."
            )

    @classmethod
    def fit(
        cls,
        width: int,
        height: int,
        *,
        size: int = ENCODER_RESOLUTION,
        patch_size: int = ENCODER_PATCH_SIZE,
        mode: FitMode = "squash",
        box: tuple[int, int, int, int] | None = None,
    ) -> EncoderFrame:
        """Build the frame for an image of ``width`` x ``height`` image pixels.

        Parameters
        ----------
        width, height
            Image size in image pixels.
        size, patch_size
            Canvas side and patch side, in canvas pixels.
        mode
            ``"squash"`` (default: whole image resized to the square, aspect ratio not kept),
            ``"letterbox"`` (whole image, aspect kept, centred, padded with black) or
            ``"center_crop"`` (largest centred square, sides lost). Ignored when ``box`` is given.
        box
            An explicit ``(left, top, right, bottom)`` crop in image pixels (integers), e.g. an
            off-centre crop. It must lie inside the image.
        """
        width, height = int(width), int(height)
        if box is not None:
            left, top, right, bottom = (int(v) for v in box)
            if left < 0 or top < 0 or right > width or bottom > height:
                raise ValueError(
                    f"Crop box {box} reaches outside the {width}x{height} image; "
                    "use mode='letterbox' to pad, or clip the box to the image."
                )
            box_t = (left, top, right, bottom)
        elif mode == "squash":
            box_t = (0, 0, width, height)
        elif mode == "letterbox":
            side = max(width, height)
            left, top = -((side - width) // 2), -((side - height) // 2)
            box_t = (left, top, left + side, top + side)
        elif mode == "center_crop":
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            box_t = (left, top, left + side, top + side)
        else:
            raise ValueError(f"Unknown fit mode {mode!r}; choose 'squash', 'letterbox' or 'center_crop'.")
        return cls(width, height, box_t, int(size), int(patch_size))

    @property
    def grid_size(self) -> int:
        """Number of patches along each side of the canvas."""
        return self.size // self.patch_size

    @property
    def scale(self) -> tuple[float, float]:
        """Canvas pixels per image pixel, ``(sx, sy)``."""
        left, top, right, bottom = self.box
        return self.size / (right - left), self.size / (bottom - top)

    def to_canvas(self, xy: np.ndarray) -> np.ndarray:
        """Map points from image pixels to canvas pixels. ``xy``: ``(N, 2)``, returns ``(N, 2)``."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        sx, sy = self.scale
        return np.stack([(xy[:, 0] - self.box[0]) * sx, (xy[:, 1] - self.box[1]) * sy], axis=1)

    def to_image(self, xy: np.ndarray) -> np.ndarray:
        """Map points from canvas pixels to image pixels. ``xy``: ``(N, 2)``, returns ``(N, 2)``."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        sx, sy = self.scale
        return np.stack([xy[:, 0] / sx + self.box[0], xy[:, 1] / sy + self.box[1]], axis=1)

    def patch_centers(self) -> np.ndarray:
        """Centres of all grid cells in image pixels, ``(grid_size**2, 2)`` in token order."""
        g, p = self.grid_size, self.patch_size
        c = (np.arange(g) + 0.5) * p
        cx, cy = np.meshgrid(c, c)  # row-major: rows follow y
        return self.to_image(np.stack([cx.ravel(), cy.ravel()], axis=1))

    def crop(self, image: Image.Image) -> Image.Image:
        """Cut the frame's box out of ``image`` (an RGB PIL image of the frame's size), padding
        with black where the box leaves the image. The result still needs resizing to the canvas."""
        if image.size != (self.image_width, self.image_height):
            raise ValueError(
                f"This frame was built for a {self.image_width}x{self.image_height} image, "
                f"got {image.size[0]}x{image.size[1]}."
            )
        left, top, right, bottom = self.box
        if (left, top, right, bottom) == (0, 0, self.image_width, self.image_height):
            return image
        if left >= 0 and top >= 0 and right <= self.image_width and bottom <= self.image_height:
            return image.crop(self.box)
        out = Image.new(image.mode, (right - left, bottom - top))
        out.paste(image, (-left, -top))
        return out


# ----------------------------------------------------------------------------------- periphery
