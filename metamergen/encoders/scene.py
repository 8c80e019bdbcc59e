"""The reusable scene encoding: a scene encoded once for every render made from it.

A scene is encoded into two token sets:

* ``sharp``: DINOv2 patch tokens of the sharp canvas (the foveal stream masks them later);
* ``peripheral``: DINOv2 patch tokens of the degraded canvas (down/up resampled).

Neither depends on fixations, so one :class:`SceneEncoding` serves every fixation list, prefix,
seed and adapter scale rendered from that scene: exactly two encoder forward passes per batch of
scenes (see ``docs/design.md``, "Encode once"). CLS and register tokens are dropped; tokens are in
grid order (row-major).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from transformers import PreTrainedModel

from metamergen.defaults import PERIPHERAL_BLUR
from metamergen.encoders.dinov2 import BitImageProcessor, encoder_canvas, patch_tokens
from metamergen.foveation.fovea import foveal_crop
from metamergen.foveation.frame import EncoderFrame, FitMode
from metamergen.foveation.periphery import PeripheralBlur, peripheral_image, resolve_blur
from metamergen.utils.images import ImageInput

__all__ = ["SceneEncoding", "encode_foveal_crops", "encode_scenes"]


@dataclass
class SceneEncoding:
    """Reusable encoding of a batch of scenes (everything the adapters need that is not fixations).

    Attributes
    ----------
    sharp
        ``(B, T, D)`` patch tokens of the sharp canvas, T = grid_size**2 (1024 in the paper).
    peripheral
        ``(B, T, D)`` patch tokens of the degraded canvas.
    pixel_values
        ``(B, 3, S, S)`` sharp, normalised canvas (kept for foveal crops and figures).
    frames
        One :class:`~metamergen.foveation.EncoderFrame` per scene: the image-to-canvas mapping.
    blur
        The peripheral degradation that produced ``peripheral``.
    """

    sharp: torch.Tensor
    peripheral: torch.Tensor
    pixel_values: torch.Tensor
    frames: tuple[EncoderFrame, ...]
    blur: PeripheralBlur

    def __len__(self) -> int:
        return self.sharp.shape[0]

    @property
    def grid_size(self) -> int:
        return self.frames[0].grid_size

    def select(self, indices: Sequence[int]) -> SceneEncoding:
        """The encoding of scenes ``indices`` (repeats allowed), without re-encoding."""
        idx = [int(i) for i in indices]
        for i in idx:
            if not -len(self) <= i < len(self):
                raise IndexError(f"Scene index {i} out of range for an encoding of {len(self)} scene(s).")
        t = torch.tensor(idx, device=self.sharp.device)
        return replace(
            self,
            sharp=self.sharp.index_select(0, t),
            peripheral=self.peripheral.index_select(0, t),
            pixel_values=self.pixel_values.index_select(0, t.to(self.pixel_values.device)),
            frames=tuple(self.frames[i] for i in idx),
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SceneEncoding:
        """Move the token tensors (not the pixel canvas's dtype) to ``device`` / ``dtype``."""
        return replace(
            self,
            sharp=self.sharp.to(device=device, dtype=dtype),
            peripheral=self.peripheral.to(device=device, dtype=dtype),
            pixel_values=self.pixel_values.to(device=device),
        )


@torch.no_grad()
def encode_scenes(
    image_encoder: PreTrainedModel,
    processor: BitImageProcessor,
    images: Sequence[ImageInput],
    *,
    peripheral_blur: float | PeripheralBlur = PERIPHERAL_BLUR,
    fit: FitMode = "squash",
    boxes: Sequence[tuple[int, int, int, int] | None] | None = None,
) -> SceneEncoding:
    """Encode scenes into reusable sharp and peripheral tokens: two encoder passes in all.

    Parameters
    ----------
    image_encoder
        Frozen DINOv2 (transformers model); its device and dtype are used.
    processor
        Image processor that squashes to the square canvas (see :func:`dinov2_processor`).
    images
        Scenes: PIL images, ``(H, W, 3)`` uint8 arrays or ``(3, H, W)`` tensors in [0, 1].
    peripheral_blur
        The paper's down/up scale ``s`` in (0, 1] (default 1/4) or a blur object.
    fit
        How each image is framed onto the canvas (see :class:`~metamergen.foveation.EncoderFrame`).
    boxes
        Optional explicit crop box per image (image pixels); overrides ``fit`` where not None.
    """
    blur = resolve_blur(peripheral_blur)
    pixel_values, frames = encoder_canvas(
        processor, images, patch_size=int(image_encoder.config.patch_size), fit=fit, boxes=boxes
    )
    pixel_values = pixel_values.to(device=image_encoder.device, dtype=image_encoder.dtype)
    sharp = patch_tokens(image_encoder, pixel_values)
    peripheral = patch_tokens(image_encoder, peripheral_image(pixel_values, blur))
    return SceneEncoding(sharp=sharp, peripheral=peripheral, pixel_values=pixel_values, frames=frames, blur=blur)


@torch.no_grad()
def encode_foveal_crops(
    image_encoder: PreTrainedModel,
    scene: SceneEncoding,
    scene_index: Sequence[int],
    fixations_xy: Sequence[np.ndarray],
    radius_px: float,
) -> torch.Tensor:
    """Encode the "foveal crop" view of each fixation list (one extra encoder pass for all lists).

    Parameters
    ----------
    scene_index
        For each list, the index of its scene in ``scene``.
    fixations_xy
        Per list, fixations ``(N, 2)`` in image pixels of that scene.
    radius_px
        Window radius in image pixels.

    Returns
    -------
    torch.Tensor
        ``(len(fixations_xy), T, D)`` patch tokens of the cropped views.
    """
    crops = torch.stack(
        [foveal_crop(scene.pixel_values[i], xy, scene.frames[i], radius_px) for i, xy in zip(scene_index, fixations_xy)]
    )
    return patch_tokens(image_encoder, crops.to(device=image_encoder.device, dtype=image_encoder.dtype))
