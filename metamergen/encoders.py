"""The frozen DINOv2 encoder and the reusable scene encoding it produces.

A scene is encoded once into two token sets (DESIGN.md section 3):

* ``sharp``: DINOv2 patch tokens of the sharp canvas (the foveal stream masks them later);
* ``peripheral``: DINOv2 patch tokens of the degraded canvas (down/up resampled).

Neither depends on fixations, so one :class:`SceneEncoding` serves every fixation list, prefix,
seed and adapter scale rendered from that scene: exactly two encoder forward passes per batch of
scenes. CLS and register tokens are dropped; tokens are in grid order (row-major).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedModel

try:  # transformers >= 5: the PIL backend, so resizing is the same with or without torchvision
    from transformers import BitImageProcessorPil as BitImageProcessor
except ImportError:  # transformers 4.x: the slow processor is PIL-based already
    from transformers import BitImageProcessor

from .foveation import EncoderFrame, FitMode, PeripheralBlur, foveal_crop, peripheral_image, resolve_blur

ImageInput = Union[Image.Image, np.ndarray, torch.Tensor]

#: DINOv2's normalisation (ImageNet mean/std).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SceneEncoding",
    "canvas_size",
    "dinov2_processor",
    "encode_foveal_crops",
    "encode_scenes",
    "patch_tokens",
    "to_pil",
]


def dinov2_processor(size: int = 448) -> BitImageProcessor:
    """DINOv2's image processor set to squash the input to ``size`` x ``size`` with no centre crop.

    Hub DINOv2 processors resize the short side to 256 and centre-crop 224; MetamerGen feeds the
    whole (framed) scene at 448 px, so it builds the processor explicitly (DESIGN.md section 8).
    """
    return BitImageProcessor(
        do_resize=True,
        size={"height": size, "width": size},
        resample=Image.Resampling.BICUBIC,
        do_center_crop=False,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        do_convert_rgb=True,
    )


def canvas_size(processor: BitImageProcessor) -> int:
    """The square canvas side (pixels) that ``processor`` produces; errors if it crops or is not square."""
    size = dict(processor.size or {})
    if getattr(processor, "do_center_crop", False) or size.get("height") is None or size.get("height") != size.get("width"):
        raise ValueError(
            f"The image processor must resize straight to a square with no centre crop (got size={size}, "
            f"do_center_crop={getattr(processor, 'do_center_crop', None)}); otherwise fixations would not map "
            "onto the tokens. Build it with metamergen.encoders.dinov2_processor(448)."
        )
    return int(size["height"])


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


def patch_tokens(image_encoder: PreTrainedModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """Run the encoder once and keep only the patch tokens.

    Parameters
    ----------
    image_encoder
        A transformers DINOv2 model (with or without registers).
    pixel_values
        ``(B, 3, S, S)`` normalised canvas.

    Returns
    -------
    torch.Tensor
        ``(B, (S // patch) ** 2, hidden)`` final-layer (layer-normed) patch tokens in grid order;
        the CLS token and any register tokens are dropped.
    """
    hidden = image_encoder(pixel_values=pixel_values).last_hidden_state
    n_prefix = 1 + int(getattr(image_encoder.config, "num_register_tokens", 0) or 0)
    patch = int(image_encoder.config.patch_size)
    expected = (pixel_values.shape[-2] // patch) * (pixel_values.shape[-1] // patch)
    tokens = hidden[:, n_prefix:]
    if tokens.shape[1] != expected:
        raise RuntimeError(
            f"Encoder returned {tokens.shape[1]} patch tokens, expected {expected}: is num_register_tokens "
            "set correctly in the encoder's config?"
        )
    return tokens


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
    peripheral_blur: float | PeripheralBlur = 0.25,
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
    if len(images) == 0:
        raise ValueError("No images to encode.")
    blur = resolve_blur(peripheral_blur)
    size = canvas_size(processor)
    patch = int(image_encoder.config.patch_size)
    pils = [to_pil(im) for im in images]
    boxes = list(boxes) if boxes is not None else [None] * len(pils)
    if len(boxes) != len(pils):
        raise ValueError(f"Got {len(boxes)} crop boxes for {len(pils)} images.")
    frames = tuple(
        EncoderFrame.fit(im.width, im.height, size=size, patch_size=patch, mode=fit, box=box)
        for im, box in zip(pils, boxes)
    )
    pixel_values = processor(images=[f.crop(im) for f, im in zip(frames, pils)], return_tensors="pt").pixel_values
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
        [
            foveal_crop(scene.pixel_values[i], xy, scene.frames[i], radius_px)
            for i, xy in zip(scene_index, fixations_xy)
        ]
    )
    return patch_tokens(image_encoder, crops.to(device=image_encoder.device, dtype=image_encoder.dtype))
