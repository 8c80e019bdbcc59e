"""The foveal stream's rule: which patches of the encoder's grid the fixations keep.

:func:`token_mask` turns fixations (image pixels) into a boolean mask over the patch grid (the
paper's rule: each fixation keeps the one patch it falls in; optionally a radius in pixels or
degrees), and :func:`mask_tokens` applies a mask to the sharp tokens. Rendering, training and the
diagnostics all call these two, so the foveal stream is computed the same way everywhere.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from metamergen.foveation.frame import EncoderFrame

__all__ = ["foveal_crop", "mask_tokens", "random_patch_mask", "token_cells", "token_mask", "token_weight_map"]


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
            raise ValueError(
                "Give the foveal radius either in pixels (radius_px) or in degrees (radius_deg), not both."
            )
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


def random_patch_mask(k: int, grid_size: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
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


def mask_tokens(sharp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The foveal stream's input: sharp patch tokens kept where ``mask`` is True, zero elsewhere.

    Parameters
    ----------
    sharp
        ``(B, T, D)`` patch tokens of the sharp canvas, grid order.
    mask
        ``(B, T)`` or ``(B, grid, grid)`` bool (from :func:`token_mask` or :func:`random_patch_mask`).

    Returns
    -------
    torch.Tensor
        ``(B, T, D)``, the dtype and device of ``sharp``.
    """
    flat = mask.reshape(mask.shape[0], -1)
    if flat.shape != sharp.shape[:2]:
        raise ValueError(
            f"A token mask of {tuple(mask.shape)} does not fit tokens of {tuple(sharp.shape)}: expected "
            f"({sharp.shape[0]}, {sharp.shape[1]}) cells, one per patch token."
        )
    return sharp * flat.to(device=sharp.device, dtype=sharp.dtype).unsqueeze(-1)


def token_cells(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The token mask carried onto another grid over the same image region (e.g. the VAE latents).

    The token grid and the target grid must frame the same image region (the training data and
    the diagnostics squash both the VAE pixels and the encoder canvas from the whole image). Each
    target cell takes the patch its centre falls in (exact when the target side is a multiple of
    the grid side, as the paper's 64 x 64 latents under 32 x 32 patches).

    Parameters
    ----------
    mask
        ``(B, T)`` or ``(B, G, G)`` bool token mask, grid order (``T = G * G``).
    size
        ``(h, w)`` of the target grid, in its cells.

    Returns
    -------
    torch.Tensor
        ``(B, 1, h, w)`` bool on ``mask``'s device.
    """
    b = mask.shape[0]
    g = math.isqrt(mask[0].numel())
    if g * g != mask[0].numel():
        raise ValueError(f"A token mask of {tuple(mask.shape)} is not a square grid of patches.")
    grid = mask.reshape(b, 1, g, g).float()
    # "nearest-exact": a cell takes the patch under its centre ("nearest" floors its top-left corner)
    return torch.nn.functional.interpolate(grid, size=tuple(size), mode="nearest-exact") > 0.5


def token_weight_map(mask: torch.Tensor, size: tuple[int, int], weight: float) -> torch.Tensor:
    """A per-cell weight over another grid: ``weight`` under the masked patches, 1 elsewhere.

    Parameters
    ----------
    mask, size
        As :func:`token_cells`.
    weight
        Value under masked patches (> 0).

    Returns
    -------
    torch.Tensor
        ``(B, 1, h, w)`` float32 on ``mask``'s device.
    """
    if weight <= 0:
        raise ValueError(f"The weight under fixated patches must be positive, got {weight}.")
    return 1.0 + (float(weight) - 1.0) * token_cells(mask, size).float()
