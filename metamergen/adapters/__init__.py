"""The trainable part of MetamerGen: two Perceiver resamplers and decoupled cross-attention K/V.

- :mod:`~metamergen.adapters.resampler`: :func:`build_resampler`, one stream's Perceiver;
- :mod:`~metamergen.adapters.model`: :class:`MetamerGenAdapters`, both streams' resamplers and K/V,
  installed into a stock diffusers UNet;
- :mod:`~metamergen.adapters.ip_adapter_format`: export to diffusers' IP-Adapter weight files.

Saved pipeline folders name this package (``"metamergen.adapters"``) as the adapters' module.
"""

from metamergen.utils.lazy import lazy_exports

_EXPORTS = {
    "STREAMS": ".model",
    "AttentionBackend": ".model",
    "FovealGateAttnProcessor": ".model",
    "MetamerGenAdapters": ".model",
    "cross_attention_layers": ".model",
    "build_resampler": ".resampler",
    "FOVEAL_WEIGHT_NAME": ".ip_adapter_format",
    "PERIPHERAL_WEIGHT_NAME": ".ip_adapter_format",
    "load_ip_adapter_state_dicts": ".ip_adapter_format",
    "save_ip_adapter": ".ip_adapter_format",
    "to_ip_adapter_state_dicts": ".ip_adapter_format",
    # diffusers' loader looks base classes up by name in the module a saved folder records
    "ModelMixin": "diffusers",
}

__all__ = sorted(name for name, module in _EXPORTS.items() if module.startswith("."))
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
