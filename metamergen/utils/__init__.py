"""Small helpers every stage shares: atomic file writes, image conversion, derived seeds, lazy exports."""

from metamergen.utils.lazy import lazy_exports

_EXPORTS = {
    "atomic_write": ".io",
    "ImageInput": ".images",
    "to_pil": ".images",
    "derive_seed": ".seeds",
    "digest": ".seeds",
}

__all__ = sorted(name for name, module in _EXPORTS.items() if module.startswith("."))
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
