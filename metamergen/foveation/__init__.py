"""Foveation: where fixations fall on the encoder's patch grid, and what the periphery sees.

- :mod:`~metamergen.foveation.frame`: :class:`EncoderFrame`, the one mapping from image pixels to
  the encoder's canvas and patch grid (for pixels and fixations alike);
- :mod:`~metamergen.foveation.fovea`: the foveal token mask (:func:`token_mask`, :func:`mask_tokens`),
  training's random patches, the foveal-crop view;
- :mod:`~metamergen.foveation.periphery`: the peripheral degradation (:func:`peripheral_image`).
"""

from metamergen.utils.lazy import lazy_exports

_EXPORTS = {
    "EncoderFrame": ".frame",
    "FitMode": ".frame",
    "foveal_crop": ".fovea",
    "mask_tokens": ".fovea",
    "random_patch_mask": ".fovea",
    "token_mask": ".fovea",
    "DownUpBlur": ".periphery",
    "GaussianBlur": ".periphery",
    "PeripheralBlur": ".periphery",
    "gaussian_blur": ".periphery",
    "peripheral_image": ".periphery",
    "resolve_blur": ".periphery",
}

__all__ = sorted(name for name, module in _EXPORTS.items() if module.startswith("."))
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
