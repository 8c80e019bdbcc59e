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

import math
from dataclasses import dataclass
from typing import Literal, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

FitMode = Literal["squash", "letterbox", "center_crop"]

__all__ = [
    "DownUpBlur",
    "EncoderFrame",
    "FitMode",
    "GaussianBlur",
    "PeripheralBlur",
    "foveal_crop",
    "gaussian_blur",
    "peripheral_image",
    "random_patch_mask",
    "resolve_blur",
    "token_mask",
]


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
            raise ValueError(f"Empty box {self.box}: expected (left, top, right, bottom) with right > left, bottom > top.")
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
        size: int = 448,
        patch_size: int = 14,
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


def token_mask(
    xy: np.ndarray,
    frame: EncoderFrame,
    *,
    radius_px: float | None = None,
    radius_deg: float | None = None,
    pixels_per_degree: float | None = None,
) -> np.ndarray:
    """Boolean mask over the encoder's patch grid marking the foveated patches.

    The paper's rule (default): each fixation keeps the single patch that contains it. With a
    radius, a fixation also keeps every patch whose centre lies within the radius of it, the
    distance measured in **image pixels** (so a circular fovea stays circular under the squash fit).

    Parameters
    ----------
    xy
        Fixations, ``(N, 2)`` of ``(x, y)`` in image pixels. ``N = 0`` gives an all-False mask.
        Fixations that fall outside the canvas (possible with crops) mark nothing.
    frame
        The image-to-canvas mapping used by the encoder.
    radius_px
        Foveal radius in image pixels.
    radius_deg, pixels_per_degree
        Foveal radius in degrees of visual angle; needs the experiment's pixels per degree
        (of the image as displayed). Give either ``radius_px`` or ``radius_deg``, not both.

    Returns
    -------
    numpy.ndarray
        ``(grid_size, grid_size)`` bool, indexed ``[row, col]``; ``.ravel()`` gives token order.
    """
    if radius_deg is not None:
        if radius_px is not None:
            raise ValueError("Give the foveal radius either in pixels (radius_px) or in degrees (radius_deg), not both.")
        if pixels_per_degree is None or not pixels_per_degree > 0:
            raise ValueError(
                "radius_deg needs pixels_per_degree (> 0), a property of the experiment's display: "
                "pass it, e.g. from the dataset's dataset.json sidecar."
            )
        radius_px = float(radius_deg) * float(pixels_per_degree)
    if radius_px is not None and not (math.isfinite(radius_px) and radius_px >= 0):
        raise ValueError(f"Foveal radius must be a finite number >= 0 pixels, got {radius_px}.")

    g = frame.grid_size
    mask = np.zeros((g, g), dtype=bool)
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if len(xy) == 0:
        return mask
    canvas = frame.to_canvas(xy)
    # "inside" is decided in image pixels against the box: a point just below the box edge can
    # round onto the canvas edge (e.g. x = nextafter(800, 0) -> 448.0), which is still the last cell
    left, top, right, bottom = frame.box
    inside = (xy[:, 0] >= left) & (xy[:, 0] < right) & (xy[:, 1] >= top) & (xy[:, 1] < bottom)
    cols = np.clip(np.floor(canvas[:, 0] / frame.patch_size), 0, g - 1).astype(np.int64)
    rows = np.clip(np.floor(canvas[:, 1] / frame.patch_size), 0, g - 1).astype(np.int64)
    mask[rows[inside], cols[inside]] = True
    if radius_px:
        centers = frame.patch_centers()  # (g*g, 2) image px
        d2 = ((centers[:, None, :] - xy[None, :, :]) ** 2).sum(-1)  # (g*g, N)
        mask |= (d2 <= radius_px**2).any(axis=1).reshape(g, g)
    return mask


def random_patch_mask(
    k: int, grid_size: int, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The paper's training-time fovea: ``k`` distinct patches drawn uniformly from the grid.

    Returns a ``(grid_size, grid_size)`` bool tensor with exactly ``min(k, grid_size**2)`` True cells.
    """
    if k < 0:
        raise ValueError(f"Number of random patches must be >= 0, got {k}.")
    n = grid_size * grid_size
    idx = torch.randperm(n, generator=generator)[: min(k, n)]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[idx] = True
    return mask.view(grid_size, grid_size)


# ----------------------------------------------------------------------------------- periphery


@dataclass(frozen=True)
class DownUpBlur:
    """The paper's periphery: downsample the canvas by ``scale`` (0 < s <= 1) and upsample back.

    The paper trains with s in {1/16, 1/8, 1/4, 1/2, 1} (448 px -> 28 ... 448 px) and shows
    s = 1/4 in its figures; s = 1 leaves the canvas unchanged.
    """

    scale: float = 0.25

    def __post_init__(self) -> None:
        if not (isinstance(self.scale, (int, float)) and 0 < self.scale <= 1):
            raise ValueError(f"Peripheral down/up scale must be in (0, 1], got {self.scale!r}.")


@dataclass(frozen=True)
class GaussianBlur:
    """Gaussian periphery with standard deviation ``sigma`` in canvas pixels (0 = no blur)."""

    sigma: float

    def __post_init__(self) -> None:
        if not (isinstance(self.sigma, (int, float)) and self.sigma >= 0 and math.isfinite(self.sigma)):
            raise ValueError(f"Gaussian sigma must be a finite number >= 0 canvas pixels, got {self.sigma!r}.")


PeripheralBlur = Union[DownUpBlur, GaussianBlur]


def resolve_blur(blur: float | PeripheralBlur) -> PeripheralBlur:
    """A float means the paper's down/up scale ``s``; blur objects pass through."""
    if isinstance(blur, (DownUpBlur, GaussianBlur)):
        return blur
    if isinstance(blur, bool) or not isinstance(blur, (int, float)):
        raise TypeError(f"peripheral_blur must be a float scale in (0, 1] or a blur object, got {blur!r}.")
    return DownUpBlur(float(blur))


def gaussian_blur(pixels: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)`` with ``sigma`` in pixels, reflect padding.

    Written here (a few lines) because torchvision is not a dependency of the core package.
    """
    if sigma <= 0:
        return pixels.clone()
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, min(pixels.shape[-2:]) - 1)
    t = torch.arange(-radius, radius + 1, device=pixels.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(pixels.dtype)
    c = pixels.shape[1]
    x = F.pad(pixels, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def peripheral_image(pixels: torch.Tensor, blur: float | PeripheralBlur = 0.25) -> torch.Tensor:
    """Degrade the encoder canvas the way the periphery sees it.

    Parameters
    ----------
    pixels
        ``(B, C, S, S)`` canvas (normalised or not: both operations are linear and preserve
        constants, so they commute with per-channel normalisation).
    blur
        A float ``s`` in (0, 1] is the paper's down/up resampling: area-weighted (antialiased)
        bilinear downsampling to ``round(S * s)`` pixels, bilinear upsampling back to ``S``.
        A :class:`GaussianBlur` blurs instead.

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``pixels``.
    """
    blur = resolve_blur(blur)
    if isinstance(blur, GaussianBlur):
        return gaussian_blur(pixels, blur.sigma)
    if blur.scale == 1:
        return pixels.clone()
    h, w = pixels.shape[-2:]
    small = (max(1, round(h * blur.scale)), max(1, round(w * blur.scale)))
    down = F.interpolate(pixels.float(), size=small, mode="bilinear", antialias=True, align_corners=False)
    up = F.interpolate(down, size=(h, w), mode="bilinear", align_corners=False)
    return up.to(pixels.dtype)


def foveal_crop(
    pixels: torch.Tensor,
    xy: np.ndarray,
    frame: EncoderFrame,
    radius_px: float,
    fill: float = 0.0,
) -> torch.Tensor:
    """The "foveal crop" view: sharp pixels only inside circular windows around the fixations.

    Encoding this view costs one encoder pass **per fixation list** (the token-mask rule reuses one
    sharp pass for all lists), so use it for figures and ablations, not for large studies.

    Parameters
    ----------
    pixels
        ``(C, S, S)`` sharp canvas of one scene.
    xy
        Fixations ``(N, 2)`` in image pixels.
    frame
        The scene's image-to-canvas mapping.
    radius_px
        Window radius in image pixels (distance measured in image pixels).
    fill
        Value outside the windows (0 in a mean/std-normalised canvas is the dataset mean colour).

    Returns
    -------
    torch.Tensor
        ``(C, S, S)``.
    """
    s = pixels.shape[-1]
    c = np.arange(s) + 0.5
    cx, cy = np.meshgrid(c, c)
    centers = frame.to_image(np.stack([cx.ravel(), cy.ravel()], axis=1))
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    keep = np.zeros(s * s, dtype=bool)
    for x, y in xy:  # one vectorised pass per fixation: N is small, S*S is not
        keep |= (centers[:, 0] - x) ** 2 + (centers[:, 1] - y) ** 2 <= radius_px**2
    keep_t = torch.from_numpy(keep.reshape(s, s)).to(pixels.device)
    return torch.where(keep_t, pixels, torch.full_like(pixels, fill))
