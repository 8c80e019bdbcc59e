"""What a server is allowed to do and what a request gets when it leaves an option out.

Three frozen records, checked on construction (a bad value is a :class:`ValueError` naming the
field), so that :func:`~metamergen.serve.app.create_app` never starts with a limit it cannot keep:

- :class:`Limits`: the most any one request may ask for (bytes, pixels, fixations, steps,
  hypotheses) and how many requests may wait;
- :class:`RenderDefaults`: the sampling settings a render request inherits (the paper's, as
  ``metamergen render`` has them, unless the server was started with others);
- :class:`ServeConfig`: the model's description, the limits, the defaults, batching, the cache,
  the stimulus folder and the API key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from metamergen import defaults

__all__ = ["Limits", "RenderDefaults", "ServeConfig"]


def _positive(record: object, *names: str) -> None:
    for name in names:
        value = getattr(record, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{type(record).__name__}.{name} must be an int >= 1, got {value!r}.")


@dataclass(frozen=True)
class Limits:
    """Per-request limits; a request over one gets a 4xx naming the limit.

    Attributes
    ----------
    max_upload_bytes
        Largest scene upload (the raw image file), bytes. Default 32 MiB.
    max_json_bytes
        Largest JSON request body, bytes (a 1000-fixation list is about 30 kB). Default 1 MiB.
    max_pixels
        Largest scene, ``width * height`` pixels, checked from the file header before decoding.
        Default 4096 x 4096.
    max_fixations
        Most fixations in one render request (before any prefix). Default 1000.
    max_steps
        Most DDIM steps per render. Default 200 (the paper samples 50).
    max_hypotheses
        Most images per render request. Default 8.
    max_queue
        Most requests waiting for the worker; one more is answered 503 with ``Retry-After``.
        Default 32.
    """

    max_upload_bytes: int = 32 * 2**20
    max_json_bytes: int = 2**20
    max_pixels: int = 4096 * 4096
    max_fixations: int = 1000
    max_steps: int = 200
    max_hypotheses: int = 8
    max_queue: int = 32

    def __post_init__(self) -> None:
        _positive(self, *(f.name for f in fields(self)))
        if self.max_steps > 1000:
            raise ValueError(f"Limits.max_steps must be <= 1000 (the scheduler's timesteps), got {self.max_steps}.")


@dataclass(frozen=True)
class RenderDefaults:
    """The settings a render request inherits for every option it leaves out.

    Attributes
    ----------
    steps, guidance, guidance_scale, foveal_scale, peripheral_scale, peripheral_blur, off_image
        As ``metamergen render``'s flags of the same names (:mod:`metamergen.defaults`);
        ``guidance_scale`` ``None`` is the guidance rule's own default.
    hypotheses
        Images per request (the paper's trial shows one).
    deadline_ms
        Time from a request's arrival to its response, milliseconds, after which it is reported
        as late (``deadline_missed`` in the response and ``/metrics``); ``None``: no deadline.
    """

    steps: int = defaults.NUM_INFERENCE_STEPS
    guidance: str = defaults.GUIDANCE
    guidance_scale: float | None = None
    foveal_scale: float = defaults.FOVEAL_SCALE
    peripheral_scale: float = defaults.PERIPHERAL_SCALE
    peripheral_blur: float = defaults.PERIPHERAL_BLUR
    off_image: str = "drop"
    hypotheses: int = 1
    deadline_ms: float | None = None

    def __post_init__(self) -> None:
        from typing import get_args

        from metamergen.fixations.records import OffImagePolicy
        from metamergen.foveation.periphery import DownUpBlur
        from metamergen.pipeline.guidance import guidance_rule

        _positive(self, "steps", "hypotheses")
        guidance_rule(self.guidance, self.guidance_scale)  # raises ValueError for a bad method or scale
        DownUpBlur(self.peripheral_blur)
        for name in ("foveal_scale", "peripheral_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"RenderDefaults.{name} must be a finite number >= 0, got {value!r}.")
        if self.off_image not in get_args(OffImagePolicy):
            raise ValueError(
                f"RenderDefaults.off_image must be one of {get_args(OffImagePolicy)}, got {self.off_image!r}."
            )
        if self.deadline_ms is not None and not (math.isfinite(self.deadline_ms) and self.deadline_ms > 0):
            raise ValueError(f"RenderDefaults.deadline_ms must be > 0 ms or None, got {self.deadline_ms!r}.")


@dataclass(frozen=True)
class ServeConfig:
    """Everything :func:`~metamergen.serve.app.create_app` needs besides the pipeline.

    Attributes
    ----------
    model, model_revision
        How the render record names the model (:class:`metamergen.loading.LoadedModel`'s
        ``description`` and ``revision``), so a served record equals ``render``'s for the same model.
    device, dtype
        Where the pipeline runs, as ``/health`` reports it (default: read from the pipeline).
    defaults, limits
        See :class:`RenderDefaults` and :class:`Limits`.
    max_batch
        Most render requests in one pipeline call. 1 turns batching off.
    batch_wait_ms
        How long the worker waits, after taking a request, for batch-compatible ones to join it.
    cache_bytes
        Memory budget of the scene cache (decoded scenes and their encodings, on the pipeline's
        device), bytes; least recently used scenes are evicted beyond it. Default 1 GiB.
    stimuli
        Folder whose image files may be named as scenes (``POST /scenes/stimulus``); ``None``: none.
    api_key
        When set, every route but ``/health`` needs the header ``X-API-Key: <api_key>``.
    warmup
        Render once (1 step, a grey scene) when the worker starts, so the first trial does not pay
        for lazy initialisation (CUDA context, kernels).
    """

    model: str
    model_revision: str | None = None
    device: str | None = None
    dtype: str | None = None
    defaults: RenderDefaults = field(default_factory=RenderDefaults)
    limits: Limits = field(default_factory=Limits)
    max_batch: int = 8
    batch_wait_ms: float = 10.0
    cache_bytes: int = 2**30
    stimuli: Path | None = None
    api_key: str | None = None
    warmup: bool = True

    def __post_init__(self) -> None:
        _positive(self, "max_batch", "cache_bytes")
        if not (math.isfinite(self.batch_wait_ms) and self.batch_wait_ms >= 0):
            raise ValueError(f"ServeConfig.batch_wait_ms must be a finite number >= 0, got {self.batch_wait_ms!r}.")
        if self.stimuli is not None:
            object.__setattr__(self, "stimuli", Path(self.stimuli))
            if not self.stimuli.is_dir():
                raise NotADirectoryError(f"The stimuli folder {self.stimuli} does not exist or is not a folder.")
        if self.api_key is not None and len(self.api_key) < 16:
            raise ValueError(
                "The API key must be at least 16 characters long; generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`."
            )
