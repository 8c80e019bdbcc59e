"""MetamerGen: fixation-conditioned scene metamers with Stable Diffusion and DINOv2 adapters.

Implements *Generating metamers of human scene understanding* (Raina, Leite, Graikos, Ahn,
Samaras, Zelinsky; ICLR 2026, arXiv 2601.11675). Modules, in data-flow order:

- :mod:`metamergen.fixations`: fixation and scanpath records (image pixels);
- :mod:`metamergen.foveation`: image-to-token-grid frames, foveal masks, peripheral blur;
- :mod:`metamergen.encoders`: the frozen DINOv2 encoder and the reusable scene encoding;
- :mod:`metamergen.adapters`: Perceiver resamplers and decoupled cross-attention K/V (trainable);
- :mod:`metamergen.guidance`: CFG and CFG++ sampling steps;
- :mod:`metamergen.pipeline`: :class:`MetamerGenPipeline`, a diffusers pipeline;
- :mod:`metamergen.ip_adapter_format`: export to diffusers' IP-Adapter weight files;
- :mod:`metamergen.testing`: tiny random components for tests.
"""

from .adapters import MetamerGenAdapters
from .encoders import SceneEncoding, dinov2_processor
from .fixations import Fixation, Scanpath, matched_random, random_fixations
from .foveation import DownUpBlur, EncoderFrame, GaussianBlur, peripheral_image, token_mask
from .pipeline import MetamerGenPipeline, MetamerGenPipelineOutput

__version__ = "0.1.0.dev0"

__all__ = [
    "DownUpBlur",
    "EncoderFrame",
    "Fixation",
    "GaussianBlur",
    "MetamerGenAdapters",
    "MetamerGenPipeline",
    "MetamerGenPipelineOutput",
    "Scanpath",
    "SceneEncoding",
    "__version__",
    "dinov2_processor",
    "matched_random",
    "peripheral_image",
    "random_fixations",
    "token_mask",
]
