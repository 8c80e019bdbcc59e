"""Training configuration: YAML files in ``configs/`` plus ``key=value`` overrides.

Every field has the paper's value where the paper gives one (from :mod:`metamergen.defaults`; see
``docs/design.md``); the rest are marked "not published" with the choice made. A config is plain data: ``TrainConfig.from_yaml`` reads
it, ``apply_overrides`` changes dotted keys (``optim.learning_rate=1e-5``), ``to_dict`` writes it
back next to the run so the run can be reproduced.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metamergen import defaults

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "flat_config",
]


class ConfigError(ValueError):
    """A training configuration that cannot be used: unknown key, bad value, unreadable file, or a
    run folder it does not fit (the message names what and says what to do)."""


def _did_you_mean(name: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass
class ModelConfig:
    """Which frozen models to start from and the shape of the new adapters."""

    #: A saved MetamerGenPipeline folder to continue from (fine-tuning); overrides the two ids below.
    pipeline: str | None = None
    #: Stable Diffusion id or folder (paper: SD1.5).
    base_model: str = defaults.BASE_MODEL
    #: DINOv2 id or folder (paper: DINOv2-Base with registers).
    image_encoder: str = defaults.IMAGE_ENCODER
    #: Existing adapters to start from (folder or repo id); None = fresh, K/V copied from text K/V.
    adapters: str | None = None
    #: Build the tiny random pipeline of metamergen.testing instead (tests, CPU smoke runs).
    tiny: bool = False
    #: Encoder canvas side, pixels (paper: 448 -> 32 x 32 tokens).
    encoder_resolution: int = defaults.ENCODER_RESOLUTION
    #: Adapter shape for fresh adapters (paper: 32 tokens; resampler not published -> IP-Adapter-Plus).
    num_tokens: int = defaults.NUM_TOKENS
    resampler_hidden_dim: int = 768
    resampler_depth: int = 4
    resampler_heads: int = 12
    #: Leave all-zero tokens (outside the fovea, a dropped stream) out of the resamplers' keys
    #: (MetamerGenAdapters.mask_empty_tokens); not in the paper, False = IP-Adapter-Plus as published.
    mask_empty_tokens: bool = False
    #: Confine the foveal stream's attention output to the latent cells under the patches it shows
    #: (MetamerGenAdapters.foveal_gate), widened by foveal_gate_dilation patches; not in the paper,
    #: False = every query attends to the foveal tokens, as published. True also turns it on for
    #: adapters loaded from model.pipeline / model.adapters (it has no weights).
    foveal_gate: bool = False
    foveal_gate_dilation: int = 0
    #: Resample each shown patch's token alone and let every latent cell attend only to the tokens
    #: of the shown patches under it (MetamerGenAdapters.foveal_local): each fixated patch's content
    #: stays at that patch. Not in the paper; no weights, so True also turns it on for loaded adapters.
    foveal_local: bool = False
    #: The same for the peripheral stream (MetamerGenAdapters.peripheral_local): each patch of the
    #: blurred scene resampled alone, each cell attending to its own patches. Not in the paper; no weights.
    peripheral_local: bool = False
    #: LoRA rank on the UNet's attention projections (peft); 0 = off, as the paper (adapters only).
    #: The LoRA is merged into the exported UNet and also saved alone (diffusers' LoRA format).
    lora_rank: int = 0
    lora_alpha: float | None = None
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])


@dataclass
class DataConfig:
    """What the model sees. Paper: COCO train2017 images with random fixations."""

    #: Folder of images (searched recursively): source (a), random fixations.
    images: str | None = None
    #: A Hugging Face dataset id or folder with an image column: also source (a).
    hf_dataset: str | None = None
    hf_split: str = "train"
    image_column: str = "image"
    #: Canonical scanpath JSONL (+ dataset.json sidecar with image_root): source (b), real fixations.
    scanpaths: str | None = None
    #: Image root for scanpaths when the sidecar has none.
    image_root: str | None = None
    #: Random fixation counts K (paper: {1, 2, 3, 5, 10}); for scanpaths, the prefix lengths N.
    fixation_counts: list[int] = field(default_factory=lambda: list(defaults.FIXATION_COUNTS))
    #: Peripheral down/up scales s (paper: {1/16, 1/8, 1/4, 1/2, 1}).
    blur_levels: list[float] = field(default_factory=lambda: list(defaults.BLUR_LEVELS))
    #: VAE/UNet training resolution, pixels (not published; 512 is SD1.5's).
    resolution: int = 512
    #: Skip unreadable images and bad records (counted, reported at the end); False = stop at the first.
    skip_bad_samples: bool = True
    num_workers: int = 4
    #: Feature cache folder: VAE latents and DINOv2 tokens computed once per image (a pre-pass at
    #: the start of training, distributed over the processes, resumable), then training runs
    #: only the UNet. None = encode online every step.
    feature_cache: str | None = None
    #: Use only the first N samples (debugging, tests).
    max_samples: int | None = None


@dataclass
class OptimConfig:
    """Optimisation. None of these are published by the paper; IP-Adapter's values are used."""

    learning_rate: float = 1e-4
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    #: Gradient clipping (not published; a common IP-Adapter training choice).
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 500
    #: Per-device batch size.
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_steps: int = 100_000
    #: Paper: foveal condition dropped with p = 0.05, peripheral with p = 0.10, independently.
    foveal_dropout: float = defaults.FOVEAL_DROPOUT
    peripheral_dropout: float = defaults.PERIPHERAL_DROPOUT
    #: Extra probability of dropping both streams together (not in the paper; 0 = the paper's
    #: recipe, where both are dropped only by chance, 0.05 x 0.10 = 0.5 % of samples). Both dropped
    #: is the unconditional state CFG++ renoises with; p > 0 trains it on p + (1 - p) x 0.5 %.
    joint_dropout: float = 0.0
    #: Weight of the latent cells under the foveal stream's patches in the epsilon MSE, relative
    #: to 1 elsewhere (1 = the paper's unweighted loss). A few fixated patches are a small share of
    #: the image, so the plain loss barely rewards using them; > 1 makes it pay to read the fovea.
    foveal_loss_weight: float = 1.0
    #: Min-SNR loss weighting gamma (None = plain MSE, the paper's implied loss).
    snr_gamma: float | None = None
    noise_offset: float = 0.0
    #: Train on timesteps in [min_timestep, max_timestep) only (diffusers' examples call this
    #: timestep_bias_strategy="range"). Default: the full range, as the paper.
    min_timestep: int = 0
    max_timestep: int | None = None
    #: EMA of the adapter weights (None = off); the exported weights are the EMA ones when on.
    ema_decay: float | None = None

    def __post_init__(self) -> None:
        for name in ("foveal_dropout", "peripheral_dropout", "joint_dropout"):
            p = getattr(self, name)
            if not 0 <= p <= 1:
                raise ConfigError(f"optim.{name} is a probability and must be in [0, 1], got {p}.")
        if not self.foveal_loss_weight > 0:
            raise ConfigError(
                f"optim.foveal_loss_weight must be positive (1 = the paper's unweighted loss), got {self.foveal_loss_weight}."
            )


@dataclass
class RunConfig:
    """Where and how the run executes."""

    output_dir: str = "outputs/train"
    seed: int = 0
    #: "no", "fp16" or "bf16" (frozen models in that dtype; adapters stay fp32).
    mixed_precision: str = "bf16"
    #: Train on the CPU even if GPUs are present (also what makes multi-process CPU runs synchronise).
    cpu: bool = False
    gradient_checkpointing: bool = False
    #: "sdpa", "xformers", or "auto" (xformers when installed and on CUDA).
    attention: str = "auto"
    checkpointing_steps: int = 5000
    checkpoints_total_limit: int | None = 3
    #: Tracker: "tensorboard", "wandb", ... or None.
    report_to: str | None = "tensorboard"
    log_every: int = 10
    #: Render validation images every N steps (0 = never) from these images and fixations.
    validation_steps: int = 0
    validation_images: list[str] = field(default_factory=list)
    validation_fixations: list[list[list[float]]] = field(default_factory=list)
    validation_num_inference_steps: int = defaults.NUM_INFERENCE_STEPS
    #: Write each process's sample indices and adapter checksum to ranks/ (multi-process checks).
    record_sample_ids: bool = False
    #: Stop after the feature-cache pre-pass (build the cache with all GPUs, train later).
    cache_only: bool = False
    #: Stop (as if killed) right after this step's checkpoint: for resume tests. None = off.
    stop_after_step: int | None = None


@dataclass
class TrainConfig:
    """The whole training configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from nested dicts; unknown keys are errors (a typo must not be ignored).

        Raises
        ------
        ConfigError
            Not a mapping of sections, an unknown section or key (the message lists the valid
            ones), or a bad value.
        """
        sections = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(data, dict):
            raise ConfigError(f"A config is a mapping of sections ({', '.join(sections)}), got {type(data).__name__}.")
        unknown = [k for k in data if k not in sections]
        if unknown:
            hint = _did_you_mean(str(unknown[0]), sections)
            raise ConfigError(
                f"Unknown config section(s) {sorted(map(str, unknown))}{hint}; valid sections: {', '.join(sections)}."
            )
        kwargs = {}
        for f in dataclasses.fields(cls):
            section_cls = type(getattr(cls(), f.name))
            section = data.get(f.name) or {}
            if not isinstance(section, dict):
                raise ConfigError(f"Config section '{f.name}' must be a mapping of key: value, got {section!r}.")
            valid = [g.name for g in dataclasses.fields(section_cls)]
            bad = [k for k in section if k not in valid]
            if bad:
                hint = _did_you_mean(str(bad[0]), valid)
                raise ConfigError(
                    f"Unknown key(s) {sorted(map(str, bad))} in section '{f.name}'{hint}. "
                    f"Valid keys: {', '.join(valid)}."
                )
            hints = typing.get_type_hints(section_cls)
            kwargs[f.name] = section_cls(**{k: _coerce(f"{f.name}.{k}", v, hints[k]) for k, v in section.items()})
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
        """Read a YAML config and apply ``section.key=value`` overrides (values parsed as YAML).

        Raises
        ------
        ConfigError
            No such file, invalid YAML, or any error of :meth:`from_dict` / :func:`apply_overrides`.
        """
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"No config file {path}: give a YAML file such as configs/tiny_cpu.yaml.")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of sections (model, data, optim, run), not a list or value.")
        return cls.from_dict(apply_overrides(data, overrides))

    def to_dict(self) -> dict[str, Any]:
        """The config as nested plain data (what ``config.yaml`` holds)."""
        return dataclasses.asdict(self)


def flat_config(data: dict[str, Any]) -> dict[str, Any]:
    """``{"optim": {"learning_rate": 1e-4}}`` -> ``{"optim.learning_rate": 1e-4}`` (one level of sections)."""
    return {f"{section}.{key}": value for section, keys in data.items() for key, value in (keys or {}).items()}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Numbers YAML reads as strings (``5e-5`` is a string in YAML 1.1) become the field's type."""
    if isinstance(value, str) and not isinstance(value, bool):
        args = typing.get_args(hint) or (hint,)
        for t in (int, float):
            if t in args:
                try:
                    return t(value)
                except ValueError:
                    if str not in args:
                        raise ConfigError(f"Config key {key!r} needs a number, got {value!r}.") from None
    return value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b=value`` applied (value parsed as YAML)."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override {item!r} is not of the form section.key=value.")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2:
            raise ConfigError(f"Override key {key!r} must be section.key, e.g. optim.learning_rate.")
        out.setdefault(parts[0], {})
        if out[parts[0]] is None:
            out[parts[0]] = {}
        if not isinstance(out[parts[0]], dict):
            raise ConfigError(f"Config section '{parts[0]}' must be a mapping of key: value, got {out[parts[0]]!r}.")
        try:
            out[parts[0]][parts[1]] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(
                f"Override {item!r}: the value is not valid YAML ({' '.join(str(err).split())})."
            ) from err
    return out
