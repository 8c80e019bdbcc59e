"""MetamerGen: fixation-conditioned scene metamers with Stable Diffusion and DINOv2 adapters.

Implements *Generating metamers of human scene understanding* (Raina, Leite, Graikos, Ahn,
Samaras, Zelinsky; ICLR 2026, arXiv 2601.11675). Packages, in data-flow order:

- :mod:`metamergen.fixations`: fixation and scanpath records (image pixels), formats, converters;
- :mod:`metamergen.foveation`: the encoder frame, the foveal token mask, the peripheral blur;
- :mod:`metamergen.encoders`: the frozen DINOv2 encoder and the reusable scene encoding;
- :mod:`metamergen.adapters`: Perceiver resamplers and decoupled cross-attention K/V (trainable);
- :mod:`metamergen.pipeline`: :class:`MetamerGenPipeline` (a diffusers pipeline) and guidance rules;
- :mod:`metamergen.training`: adapter training with accelerate;
- :mod:`metamergen.study`: studies: plan, manifest, resumable rendering;
- :mod:`metamergen.evaluation`: metrics, scoring, statistics, behavioural analysis;
- :mod:`metamergen.viz`: figures and the HTML report;
- :mod:`metamergen.demo`: the toy world and the bundled demo model;
- :mod:`metamergen.commands`: the command line.

:mod:`metamergen.defaults` holds the paper's numbers; :mod:`metamergen.testing` tiny random
components. Names are imported on first use, so ``import metamergen`` is instant.
"""

from metamergen.utils.lazy import lazy_exports

__version__ = "0.1.0.dev0"

_EXPORTS = {
    "MetamerGenAdapters": ".adapters",
    "SceneEncoding": ".encoders",
    "dinov2_processor": ".encoders",
    "Fixation": ".fixations",
    "Scanpath": ".fixations",
    "matched_random": ".fixations",
    "random_fixations": ".fixations",
    "DownUpBlur": ".foveation",
    "EncoderFrame": ".foveation",
    "GaussianBlur": ".foveation",
    "peripheral_image": ".foveation",
    "token_mask": ".foveation",
    "MetamerGenPipeline": ".pipeline",
    "MetamerGenPipelineOutput": ".pipeline",
}

__all__ = ["__version__", *sorted(_EXPORTS)]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
