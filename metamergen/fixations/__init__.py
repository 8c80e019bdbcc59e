"""Fixations: records in image pixels, random controls, the scanpath JSON Lines format, converters.

- :mod:`~metamergen.fixations.records`: :class:`Fixation`, :class:`Scanpath` (validated, in pixels of
  the image they refer to), the off-image policy, :func:`random_fixations`, :func:`matched_random`;
- :mod:`~metamergen.fixations.io`: the canonical JSON Lines form and its ``dataset.json`` sidecar;
- :mod:`~metamergen.fixations.converters`: COCO-FreeView, COCO-Search18 and CSV exports in.
"""

from metamergen.utils.lazy import lazy_exports

_EXPORTS = {
    "Fixation": ".records",
    "OffImagePolicy": ".records",
    "Scanpath": ".records",
    "matched_random": ".records",
    "random_fixations": ".records",
    "SIDECAR_NAME": ".io",
    "DatasetInfo": ".io",
    "load_scanpath_dataset": ".io",
    "read_fixation_list": ".io",
    "read_info": ".io",
    "read_scanpaths": ".io",
    "resolve_image": ".io",
    "scanpath_from_row": ".io",
    "write_scanpaths": ".io",
    "CONVERTERS": ".converters",
    "ConversionReport": ".converters",
    "convert_coco_freeview": ".converters",
    "convert_coco_search18": ".converters",
    "convert_csv": ".converters",
}

__all__ = sorted(name for name, module in _EXPORTS.items() if module.startswith("."))
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
