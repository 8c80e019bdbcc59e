"""The frozen DINOv2 encoder: its image processor, the encoder canvas, and its patch tokens.

:func:`encoder_canvas` is the one path from scene images to the encoder's input (frame each image
with :class:`~metamergen.foveation.EncoderFrame`, crop, then resize and normalise with the
processor); the pipeline, training, the feature cache, the DINOv2 metric and the "what the model
saw" figure all call it, so pixels and fixations always meet on the same grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from transformers import PreTrainedModel

try:  # transformers >= 5: the PIL backend, so resizing is the same with or without torchvision
    from transformers import BitImageProcessorPil as BitImageProcessor
except ImportError:  # transformers 4.x: the slow processor is PIL-based already
    from transformers import BitImageProcessor

from metamergen.defaults import ENCODER_RESOLUTION
from metamergen.foveation.frame import EncoderFrame, FitMode
from metamergen.utils.images import ImageInput, to_pil

#: DINOv2's normalisation (ImageNet mean/std).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BitImageProcessor",
    "canvas_size",
    "dinov2_processor",
    "encoder_canvas",
    "patch_tokens",
]


def dinov2_processor(size: int = ENCODER_RESOLUTION) -> BitImageProcessor:
    """DINOv2's image processor set to squash the input to ``size`` x ``size`` with no centre crop.

    Hub DINOv2 processors resize the short side to 256 and centre-crop 224; MetamerGen feeds the
    whole (framed) scene at 448 px, so it builds the processor explicitly (hub DINOv2 configs also name an ``image_size``
    that is not the resolution fed here).
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
    if (
        getattr(processor, "do_center_crop", False)
        or size.get("height") is None
        or size.get("height") != size.get("width")
    ):
        raise ValueError(
            f"The image processor must resize straight to a square with no centre crop (got size={size}, "
            f"do_center_crop={getattr(processor, 'do_center_crop', None)}); otherwise fixations would not map "
            "onto the tokens. Build it with metamergen.encoders.dinov2_processor(448)."
        )
    return int(size["height"])


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


def encoder_canvas(
    processor: BitImageProcessor,
    images: Sequence[ImageInput],
    *,
    patch_size: int,
    fit: FitMode = "squash",
    boxes: Sequence[tuple[int, int, int, int] | None] | None = None,
) -> tuple[torch.Tensor, tuple[EncoderFrame, ...]]:
    """Scene images as the encoder sees them, and the frame that maps each onto the canvas.

    Parameters
    ----------
    processor
        Image processor that resizes straight to the square canvas (:func:`dinov2_processor`).
    images
        Scenes: PIL images, ``(H, W, 3)`` uint8 arrays or ``(3, H, W)`` tensors in [0, 1].
    patch_size
        The encoder's patch side, canvas pixels (``image_encoder.config.patch_size``).
    fit
        How each image is framed (see :class:`~metamergen.foveation.EncoderFrame`).
    boxes
        Optional explicit crop box per image (image pixels); overrides ``fit`` where not None.

    Returns
    -------
    pixel_values
        ``(B, 3, S, S)`` float32 canvas, normalised with the processor's mean/std.
    frames
        One :class:`~metamergen.foveation.EncoderFrame` per image.
    """
    if len(images) == 0:
        raise ValueError("No images to encode.")
    size = canvas_size(processor)
    pils = [to_pil(im) for im in images]
    boxes = list(boxes) if boxes is not None else [None] * len(pils)
    if len(boxes) != len(pils):
        raise ValueError(f"Got {len(boxes)} crop boxes for {len(pils)} images.")
    frames = tuple(
        EncoderFrame.fit(im.width, im.height, size=size, patch_size=int(patch_size), mode=fit, box=box)
        for im, box in zip(pils, boxes)
    )
    pixel_values = processor(images=[f.crop(im) for f, im in zip(frames, pils)], return_tensors="pt").pixel_values
    return pixel_values, frames
