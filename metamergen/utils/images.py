"""Images in, RGB out: the one conversion from the image types the API accepts to RGB PIL."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

__all__ = ["ImageInput", "to_pil"]


ImageInput = Image.Image | np.ndarray | torch.Tensor


def to_pil(image: ImageInput) -> Image.Image:
    """Convert one image to an RGB PIL image.

    Accepts a PIL image, a ``(H, W, 3)`` uint8 array, or a ``(3, H, W)`` float tensor/array in [0, 1].
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().float().numpy()
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
            arr = arr.transpose(1, 2, 0)
        if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
            raise ValueError(f"Expected an (H, W, 3) or (3, H, W) image array, got shape {image.shape}.")
        if arr.dtype != np.uint8:
            if arr.min() < 0 or arr.max() > 1:
                raise ValueError("Float image arrays must hold values in [0, 1]; pass uint8 for 0..255.")
            arr = np.round(arr * 255).astype(np.uint8)
        return Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr).convert("RGB")
    raise TypeError(f"Unsupported image type {type(image).__name__}; pass a PIL image, numpy array or tensor.")
