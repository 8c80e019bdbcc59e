"""The paper's numbers and MetamerGen's own defaults: the one place each value is written.

Everything else (the pipeline's signature, the study settings, the training config, the command
line) reads its default from here, so that a default cannot drift between entry points. Values
marked *paper* are from Raina et al. (ICLR 2026); values marked *ours* are choices the paper does
not publish, each explained in ``docs/design.md``. This module imports nothing heavy: the command
line reads it to print ``--help``.
"""

from __future__ import annotations

__all__ = [
    "BASE_MODEL",
    "BLUR_LEVELS",
    "CFG_SCALE",
    "CFGPP_SCALE",
    "ENCODER_PATCH_SIZE",
    "ENCODER_RESOLUTION",
    "FIXATION_COUNTS",
    "FOVEAL_DROPOUT",
    "FOVEAL_SCALE",
    "GUIDANCE",
    "GUIDANCE_SCALES",
    "IMAGE_ENCODER",
    "NUM_INFERENCE_STEPS",
    "NUM_TOKENS",
    "PERIPHERAL_BLUR",
    "PERIPHERAL_DROPOUT",
    "PERIPHERAL_SCALE",
    "PREFIXES",
    "resolve_guidance_scale",
]

# ----------------------------------------------------------------------------- components (paper)

#: Stable Diffusion 1.5, frozen (paper).
BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
#: DINOv2-Base with registers, frozen (paper).
IMAGE_ENCODER = "facebook/dinov2-with-registers-base"
#: Side of the square canvas fed to DINOv2, pixels (paper: 448 -> 32 x 32 patches of 14 px).
ENCODER_RESOLUTION = 448
#: DINOv2's patch side, canvas pixels.
ENCODER_PATCH_SIZE = 14
#: Tokens per stream after each Perceiver resampler (paper).
NUM_TOKENS = 32

# ----------------------------------------------------------------------------- conditioning (paper)

#: λ_f, the foveal stream's cross-attention scale at inference (paper).
FOVEAL_SCALE = 1.2
#: λ_p, the peripheral stream's cross-attention scale at inference (paper).
PERIPHERAL_SCALE = 0.7
#: The periphery's down/up scale s shown in the paper's figures and used by default at inference.
PERIPHERAL_BLUR = 0.25
#: Down/up scales s drawn per training sample (paper: 448 px -> 28, 56, 112, 224, 448 px).
BLUR_LEVELS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)
#: Numbers K of random patches kept per training sample (paper).
FIXATION_COUNTS = (1, 2, 3, 5, 10)
#: Fixation prefixes N of the paper's behavioural study.
PREFIXES = (1, 2, 3, 5, 10)
#: Probability of dropping the foveal condition in training, independently per stream (paper).
FOVEAL_DROPOUT = 0.05
#: Probability of dropping the peripheral condition in training (paper).
PERIPHERAL_DROPOUT = 0.10

# ----------------------------------------------------------------------------- sampling

#: DDIM steps (paper).
NUM_INFERENCE_STEPS = 50
#: The sampler's guidance rule (paper: CFG++).
GUIDANCE = "cfg++"
#: CFG++ strength λ in [0, 1] (ours: the paper does not publish it; 0.6 is the CFG++ authors' SD1.5 value).
CFGPP_SCALE = 0.6
#: Classic classifier-free guidance scale (ours: SD1.5's usual 7.5).
CFG_SCALE = 7.5
#: Default strength per guidance rule.
GUIDANCE_SCALES = {"cfg++": CFGPP_SCALE, "cfg": CFG_SCALE}


def resolve_guidance_scale(method: str, scale: float | None = None) -> float:
    """The strength a render with guidance rule ``method`` uses: ``scale``, or the rule's default."""
    return float(GUIDANCE_SCALES[method] if scale is None else scale)
