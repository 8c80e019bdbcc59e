"""Images in, RGB out: the one loader for image files and the one conversion of in-memory images.

Every image the toolkit reads (scenes, generations, training images, uploads) goes through
:func:`load_image` or :func:`to_pil`, so every command treats an unusual file the same way:

==========================  ===================================================================
file                        what MetamerGen does
==========================  ===================================================================
8-bit RGB / grey / palette  converted to RGB as is
16-bit (``I;16``, ``I``)    scaled to 8 bits (``value / 257``); a plain ``convert("RGB")``
                            clips everything above 255 to white
32-bit float (``F``)        values in [0, 1] scaled by 255, otherwise taken as 0..255 (clipped)
with transparency           composited on :data:`BACKGROUND` (mid-grey, the colour the encoder
(RGBA, LA, palette+tRNS)    canvas pads with), with a warning: the colour hidden under
                            transparent pixels is never used
CMYK, YCbCr, LAB            Pillow's conversion to RGB
EXIF orientation tag        **not applied**: pixels stay in the stored frame, the frame COCO's
                            annotations and the common eye-tracking datasets use for their
                            coordinates; a warning names the file when the tag says "rotated"
truncated, empty, not an    :class:`ImageLoadError` naming the file (the whole image is
image                       decoded up front, so a broken file fails before anything is written)
==========================  ===================================================================
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = [
    "BACKGROUND",
    "MAX_SCENE_ASPECT",
    "MIN_SCENE_SIDE",
    "WIDE_SCENE_ASPECT",
    "ImageInput",
    "ImageLoadError",
    "SceneSizeError",
    "check_scene_size",
    "load_image",
    "rgb",
    "to_pil",
]


ImageInput = Image.Image | np.ndarray | torch.Tensor

#: Background that transparent pixels are composited on: the encoder canvas's padding colour.
BACKGROUND: tuple[int, int, int] = (128, 128, 128)

#: Shortest scene side, pixels, that ``render`` and ``generate`` accept. Below it the encoder's
#: canvas is one blown-up blur, the rendering is an upsampled guess of a few pixels, and SSIM's
#: 11-px window cannot fit (the demo's toy scenes are 64 px, the test scenes 32 px and up).
MIN_SCENE_SIDE = 16
#: Longer / shorter side above which a scene is refused: the encoder squashes every scene onto a
#: square canvas (an 8:1 scene's patches are 8 times wider than tall) and the generation keeps
#: the aspect ratio at the UNet's native area (a 10000 x 10 scene rendered 1012 x 2 pixels).
MAX_SCENE_ASPECT = 8.0
#: Longer / shorter side above which a scene is rendered with a warning (a 3:1 panorama).
WIDE_SCENE_ASPECT = 3.0

#: EXIF tag 0x0112 (Orientation); 1 is "as stored".
_ORIENTATION = 0x0112


class ImageLoadError(ValueError):
    """An image file that cannot be decoded (truncated, empty, not an image, unsupported)."""


class SceneSizeError(ValueError):
    """A scene too small, or too long and thin, to render (the message says what to do)."""


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)


def rgb(image: Image.Image, *, name: str = "image", background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """One PIL image of any mode as 8-bit RGB, by the rules of the module docstring.

    Parameters
    ----------
    image
        A decoded PIL image.
    name
        How warnings refer to it (a file path, usually).
    background
        RGB colour that transparent pixels are composited on.
    """
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(image, dtype=np.float64)
        if mode == "I" and arr.max(initial=0) <= 255:
            scaled = arr  # a 32-bit container holding 8-bit values
        else:
            scaled = arr / 257.0
        grey = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.round(arr * scale), 0, 255).astype(np.uint8)).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        if (alpha < 255).any():
            _warn(
                f"{name} has transparent pixels ({(alpha < 255).mean():.0%}); they are composited on "
                f"RGB {background}, not read as the colour stored under them."
            )
        flat = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(flat, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | os.PathLike, *, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Open and fully decode an image file as 8-bit RGB (module docstring for every case).

    Parameters
    ----------
    path
        The image file.
    background
        RGB colour that transparent pixels are composited on.

    Returns
    -------
    PIL.Image.Image
        RGB, in the file's stored pixel frame (EXIF orientation not applied).

    Raises
    ------
    FileNotFoundError
        No such file.
    ImageLoadError
        The file exists but cannot be decoded completely.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No image file {path}: check the path (and --image-root, if the command has one).")
    if os.path.getsize(path) == 0:
        raise ImageLoadError(f"{path} is empty (0 bytes): re-copy or re-export it, or remove it from the list.")
    try:
        with Image.open(path) as im:
            im.load()  # decode everything now: a truncated file fails here, not halfway through a study
            orientation = im.getexif().get(_ORIENTATION, 1)
            out = rgb(im, name=path, background=background)
    except UnidentifiedImageError as e:
        raise ImageLoadError(f"{path} is not an image Pillow can read: re-export it as PNG or JPEG.") from e
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's errors for truncated/corrupt data
        raise ImageLoadError(f"{path} cannot be decoded ({e}): the file is truncated or corrupt; re-export it.") from e
    if orientation not in (1, None):
        _warn(
            f"{path} has EXIF orientation {orientation}: MetamerGen uses the stored pixels, unrotated "
            "(the frame fixation datasets use); rotate the file itself if your fixations are in the rotated frame."
        )
    return out


def check_scene_size(width: int, height: int, *, name: str = "the scene") -> None:
    """Refuse a scene no render could use; warn about a very wide (or tall) one.

    Parameters
    ----------
    width, height
        The scene's size in pixels.
    name
        How the message names the scene (its path, usually).

    Raises
    ------
    SceneSizeError
        The shorter side is under :data:`MIN_SCENE_SIDE` pixels, or the longer side is more than
        :data:`MAX_SCENE_ASPECT` times the shorter one.

    Warns
    -----
    UserWarning
        The longer side is more than :data:`WIDE_SCENE_ASPECT` times the shorter one.
    """
    short, long = min(width, height), max(width, height)
    if short < MIN_SCENE_SIDE:
        raise SceneSizeError(
            f"{name} is {width}x{height} px; a scene needs at least {MIN_SCENE_SIDE} px on each side "
            "(the model renders at its own size and would only blow up a few pixels): use the full-size image."
        )
    aspect = long / short
    if aspect > MAX_SCENE_ASPECT:
        raise SceneSizeError(
            f"{name} is {width}x{height} px, {aspect:.0f}:1; scenes longer than {MAX_SCENE_ASPECT:.0f}:1 are refused "
            "(the encoder squashes every scene to a square): crop it into pieces of at most "
            f"{MAX_SCENE_ASPECT:.0f}:1 and render each with its own fixations."
        )
    if aspect > WIDE_SCENE_ASPECT:
        _warn(
            f"{name} is {width}x{height} px, {aspect:.1f}:1: the encoder squashes it to a square canvas, so its "
            f"patches are {aspect:.1f} times longer one way; crop it to at most {WIDE_SCENE_ASPECT:.0f}:1 for faithful renders."
        )


def to_pil(image: ImageInput) -> Image.Image:
    """Convert one in-memory image to an RGB PIL image.

    Accepts a PIL image of any mode (converted by :func:`rgb`), a ``(H, W, 3)`` uint8 array, or a
    ``(3, H, W)`` float tensor/array in [0, 1].
    """
    if isinstance(image, Image.Image):
        return rgb(image)
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
