"""The frozen image encoder (DINOv2) and the reusable scene encoding it produces.

- :mod:`~metamergen.encoders.dinov2`: the processor, :func:`encoder_canvas` (the one image ->
  canvas path) and :func:`patch_tokens`;
- :mod:`~metamergen.encoders.scene`: :class:`SceneEncoding`, encoded once per scene;
- :mod:`~metamergen.encoders.view`: :func:`foveated_input`, the encoder's input drawn as an image.
"""

from metamergen.utils.lazy import lazy_exports

_EXPORTS = {
    "IMAGENET_MEAN": ".dinov2",
    "IMAGENET_STD": ".dinov2",
    "BitImageProcessor": ".dinov2",
    "canvas_size": ".dinov2",
    "dinov2_processor": ".dinov2",
    "encoder_canvas": ".dinov2",
    "patch_tokens": ".dinov2",
    "SceneEncoding": ".scene",
    "encode_foveal_crops": ".scene",
    "encode_scenes": ".scene",
    "foveated_input": ".view",
}

__all__ = sorted(name for name, module in _EXPORTS.items() if module.startswith("."))
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
