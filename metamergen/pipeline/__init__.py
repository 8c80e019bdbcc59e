"""Rendering: :class:`MetamerGenPipeline` (a diffusers pipeline) and its guidance rules.

- :mod:`~metamergen.pipeline.pipeline_metamergen`: the pipeline, its loading and saving, and the
  call in named steps;
- :mod:`~metamergen.pipeline.guidance`: CFG and CFG++ behind one :class:`GuidanceRule` interface;
- :mod:`~metamergen.pipeline.record`: the record of one render (``render.json``), which
  ``metamergen render`` writes and ``metamergen serve`` returns.

Saved pipeline folders (and their ``pipeline.py`` shim) import the class from this package path,
``metamergen.pipeline``; it stays the public home whatever the files below it are called.
"""

from metamergen.utils.lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_BASE_MODEL": ".pipeline_metamergen",
    "DEFAULT_IMAGE_ENCODER": ".pipeline_metamergen",
    "FixationInput": ".pipeline_metamergen",
    "MetamerGenPipeline": ".pipeline_metamergen",
    "MetamerGenPipelineOutput": ".pipeline_metamergen",
    "StepEndCallback": ".pipeline_metamergen",
    "output_size": ".pipeline_metamergen",
    "CFG": ".guidance",
    "GUIDANCE_RULES": ".guidance",
    "CFGPlusPlus": ".guidance",
    "GuidanceMethod": ".guidance",
    "GuidanceRule": ".guidance",
    "cfgpp_ddim_step": ".guidance",
    "cfgpp_scale_error": ".guidance",
    "guidance_rule": ".guidance",
    "needs_unconditional": ".guidance",
    # diffusers' loader looks base classes up by name in the module a saved folder records
    "DiffusionPipeline": "diffusers",
}

__all__ = sorted(name for name, module in _EXPORTS.items() if module.startswith("."))
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
