"""The peripheral stream's rule: how the encoder canvas is degraded before it is encoded.

The paper's periphery is :class:`DownUpBlur` (downsample by s, upsample back; s = 1/4 by default);
:class:`GaussianBlur` is offered beside it. :func:`peripheral_image` is the one function that
applies either, for rendering, training, the feature cache and the "what the model saw" figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from metamergen.defaults import PERIPHERAL_BLUR

__all__ = ["DownUpBlur", "GaussianBlur", "PeripheralBlur", "gaussian_blur", "peripheral_image", "resolve_blur"]


@dataclass(frozen=True)
class DownUpBlur:
    """The paper's periphery: downsample the canvas by ``scale`` (0 < s <= 1) and upsample back.

    The paper trains with s in {1/16, 1/8, 1/4, 1/2, 1} (448 px -> 28 ... 448 px) and shows
    s = 1/4 in its figures; s = 1 leaves the canvas unchanged.
    """

    scale: float = PERIPHERAL_BLUR

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


PeripheralBlur = DownUpBlur | GaussianBlur


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


def peripheral_image(pixels: torch.Tensor, blur: float | PeripheralBlur = PERIPHERAL_BLUR) -> torch.Tensor:
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
