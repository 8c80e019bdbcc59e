"""Planning a study: every image to render, each with an id and a seed derived from its inputs.

A study crosses, for every scene, every fixation list recorded on it with

- **prefixes** N: the viewer's first N fixations (the paper's schedule is 1, 2, 3, 5, 10; ``None``
  means the whole list). A prefix longer than a list is skipped and counted, never padded;
- **conditions**: ``"both"`` streams (the scales as given), or one stream only, the other removed
  in one of two ways (see :data:`CONDITIONS`): ``"dropped"`` (zero tokens through its resampler, as
  training's condition dropout: the default) or ``"off"`` (its scale set to 0, a state training never
  showed the model). ``"foveal"`` and ``"peripheral"`` name the default, ``"foveal:dropped"`` and
  ``"peripheral:dropped"``;
- **hypotheses** 0..k-1: independent samples (different initial noise);
- optionally the **random-fixation control**: for each list, :func:`~metamergen.fixations.matched_random`
  draws as many uniformly placed fixations (seeded from the base seed, the scene and the list), and
  the control's prefixes are prefixes of that random list, exactly like the viewer's.

Three steps, each a function::

    scenes = load_scanpath_scenes("study/scanpaths.jsonl")          # or load_fixation_list_scene(...)
    jobs = plan_study(scenes, StudySettings(prefixes=(1, 2, 3, 5, 10), hypotheses=4), model="...", pipe=pipe)
    run_study(pipe, jobs, "outputs/study")                           # PNGs + manifest.jsonl

Loading checks everything before anything is written: every image exists and is readable, every
scanpath's width/height equals its image's size (fixations are never rescaled), malformed JSON
lines are reported with their line number. **Off-image fixations** follow the policy of
:data:`~metamergen.fixations.OffImagePolicy`: ``"drop"`` (default; one warning with the count),
``"clip"`` (moved to the border, warned) or ``"error"``. An empty fixation list is valid: it gives
peripheral information only.

Identity and reproducibility
----------------------------
Each image's ``image_id`` is derived from everything that determines its pixels (scene id, list id,
fixation source, prefix, the fixations used, condition, hypothesis, base seed, scales, blur,
guidance, steps, output size, model and revision), as a readable part plus a 10-hex-digit hash. The
package version is recorded but not hashed. Each image gets its own generator, seeded by its
``seed``, so an image does not depend on which other images are in the study or in its batch:
re-runs, subsets and extensions (more prefixes, more hypotheses) reproduce the same images.

**Common random numbers** (``noise="paired"``, the default): the ``seed`` is a function of the base
seed, the scene, the list and the hypothesis only, so every condition, fixation source and prefix
of one list and hypothesis starts from the same initial noise. Comparisons between them (both vs
peripheral vs foveal, viewer vs random, N = 10 vs N = 1) are then paired: the noise cancels and
only the conditioning differs. ``noise="independent"`` derives the seed from the ``image_id``
instead (every image its own noise). The manifest records which.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metamergen import defaults
from metamergen.encoders.dinov2 import canvas_size
from metamergen.fixations.records import Scanpath, matched_random
from metamergen.pipeline.pipeline_metamergen import output_size
from metamergen.study.manifest import IMAGES_DIR, MANIFEST_COLUMNS
from metamergen.study.scenes import StudyScene
from metamergen.utils.seeds import derive_seed, digest

__all__ = [
    "ABLATION_MODES",
    "CONDITIONS",
    "DEFAULT_ABLATION",
    "NOISE_MODES",
    "SKIPPED_PREFIX",
    "StudyJob",
    "StudySettings",
    "condition_streams",
    "plan_study",
]

#: How a single-stream condition removes the other stream: ``"dropped"`` feeds that stream's
#: resampler zero tokens (training's condition dropout; the stream stays on at its scale),
#: ``"off"`` sets its scale to 0 (the processor skips it). The paper's ablation most likely used
#: ``"dropped"`` (docs/design.md, "Sampling and guidance"), the default.
ABLATION_MODES: tuple[str, ...] = ("dropped", "off")
DEFAULT_ABLATION = "dropped"
#: Conditions: which adapter streams a generation uses. ``"<stream kept>:<mode>"`` keeps one stream
#: and removes the other by ``mode``; ``"foveal"`` / ``"peripheral"`` take :data:`DEFAULT_ABLATION`.
CONDITIONS: tuple[str, ...] = (
    "both",
    "foveal",
    "peripheral",
    "foveal:dropped",
    "foveal:off",
    "peripheral:dropped",
    "peripheral:off",
)
#: How initial noise is assigned (module docstring, "Common random numbers").
NOISE_MODES: tuple[str, ...] = ("paired", "independent")

#: Key of the plan report counting (list, source, prefix) combinations skipped as too long.
SKIPPED_PREFIX = "prefix longer than the fixation list"


def condition_streams(condition: str) -> tuple[str | None, str | None]:
    """What a study condition keeps and how it removes the other stream.

    Parameters
    ----------
    condition
        One of :data:`CONDITIONS`.

    Returns
    -------
    kept, mode
        ``(None, None)`` for ``"both"``; else the stream kept and one of :data:`ABLATION_MODES`,
        e.g. ``("peripheral", "dropped")`` for ``"peripheral"`` and ``"peripheral:dropped"``.
    """
    if condition not in CONDITIONS:
        raise ValueError(f"Unknown condition {condition!r}; choose from {list(CONDITIONS)}.")
    if condition == "both":
        return None, None
    kept, _, mode = condition.partition(":")
    return kept, mode or DEFAULT_ABLATION


# --------------------------------------------------------------------------- scenes


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class StudySettings:
    """What to render for every fixation list.

    Parameters
    ----------
    prefixes
        Numbers of leading fixations (``None``: the whole list; ``0``: none, peripheral only).
    hypotheses
        Images per (list, prefix, condition), ``>= 1``.
    conditions
        Subset of :data:`CONDITIONS`.
    random_control
        Add the matched random-fixation control (same counts).
    seed
        Base seed of the study.
    noise
        ``"paired"`` (default): one initial noise per (scene, list, hypothesis), shared by every
        condition, source and prefix (common random numbers); ``"independent"``: one per image.
    foveal_scale, peripheral_scale
        λ_f and λ_p (paper 1.2, 0.7), for every condition except that an ``":off"`` condition sets
        the removed stream's scale to 0 (``"foveal:off"``: λ_p = 0; ``"peripheral:off"``: λ_f = 0).
        A ``":dropped"`` condition keeps both scales and zeroes the removed stream's tokens.
    peripheral_blur
        Down/up scale s of the peripheral stream (0, 1].
    guidance, guidance_scale
        ``"cfg++"`` or ``"cfg"``; ``None`` takes the sampler's default (recorded resolved).
    steps
        DDIM steps.
    height, width
        Output size in pixels (both or neither); default: the scene's aspect ratio at the UNet's
        native area, as the pipeline does.
    """

    prefixes: tuple[int | None, ...] = (None,)
    hypotheses: int = 1
    conditions: tuple[str, ...] = ("both",)
    random_control: bool = False
    seed: int = 0
    noise: str = "paired"
    foveal_scale: float = defaults.FOVEAL_SCALE
    peripheral_scale: float = defaults.PERIPHERAL_SCALE
    peripheral_blur: float = defaults.PERIPHERAL_BLUR
    guidance: str = defaults.GUIDANCE
    guidance_scale: float | None = None
    steps: int = defaults.NUM_INFERENCE_STEPS
    height: int | None = None
    width: int | None = None

    def __post_init__(self) -> None:
        prefixes = tuple(self.prefixes)
        if not prefixes:
            raise ValueError("prefixes must name at least one prefix length (or None for the whole list).")
        for p in prefixes:
            if p is not None and (isinstance(p, bool) or not isinstance(p, int) or p < 0):
                raise ValueError(f"prefixes must be non-negative ints or None (whole list), got {p!r}.")
        if len(set(prefixes)) != len(prefixes):
            raise ValueError(f"prefixes lists a value twice: {list(prefixes)}.")
        object.__setattr__(self, "prefixes", prefixes)
        conditions = tuple(self.conditions)
        unknown = [c for c in conditions if c not in CONDITIONS]
        if unknown or not conditions:
            raise ValueError(f"conditions must be a non-empty subset of {list(CONDITIONS)}, got {list(conditions)}.")
        if len(set(conditions)) != len(conditions):
            raise ValueError(f"conditions lists a value twice: {list(conditions)}.")
        object.__setattr__(self, "conditions", conditions)
        if isinstance(self.hypotheses, bool) or not isinstance(self.hypotheses, int) or self.hypotheses < 1:
            raise ValueError(f"hypotheses must be an int >= 1, got {self.hypotheses!r}.")
        if self.guidance not in defaults.GUIDANCE_SCALES:
            raise ValueError(f"guidance must be one of {sorted(defaults.GUIDANCE_SCALES)}, got {self.guidance!r}.")
        if self.guidance == "cfg++" and self.guidance_scale is not None and not 0 <= self.guidance_scale <= 1:
            from metamergen.pipeline.guidance import cfgpp_scale_error

            raise ValueError(cfgpp_scale_error(self.guidance_scale))
        if float(self.foveal_scale) < 0 or float(self.peripheral_scale) < 0:
            raise ValueError("foveal_scale and peripheral_scale must be >= 0.")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {self.steps!r}.")
        if not 0 < float(self.peripheral_blur) <= 1:
            raise ValueError(f"peripheral_blur must be in (0, 1], got {self.peripheral_blur!r}.")
        if (self.height is None) != (self.width is None):
            raise ValueError("Give both height and width (output pixels), or neither.")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an int, got {self.seed!r}.")
        if self.noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {list(NOISE_MODES)}, got {self.noise!r}.")

    def scales(self, condition: str) -> tuple[float, float]:
        """``(foveal_scale, peripheral_scale)`` after ``condition`` is applied."""
        fov, per = float(self.foveal_scale), float(self.peripheral_scale)
        kept, mode = condition_streams(condition)
        if mode == "off":
            fov, per = (fov, 0.0) if kept == "foveal" else (0.0, per)
        return fov, per

    def drop_streams(self, condition: str) -> tuple[str, ...]:
        """The streams ``condition`` drops (zero tokens through their resampler).

        Parameters
        ----------
        condition
            One of :data:`CONDITIONS`.

        Returns
        -------
        tuple of str
            For the pipeline's ``drop_streams``: the removed stream of a ``":dropped"`` condition
            (``"peripheral"`` and ``"foveal"`` included), else empty.
        """
        kept, mode = condition_streams(condition)
        if mode != "dropped":
            return ()
        return ("peripheral",) if kept == "foveal" else ("foveal",)


@dataclass(frozen=True)
class StudyJob:
    """One image to render: a manifest row plus the scene size needed to render it."""

    image_id: str
    scene: str
    scene_id: str
    scanpath_id: str
    subject: str | None
    prefix: int | None
    fixations: tuple[tuple[float, float], ...]
    fixation_source: str
    condition: str
    hypothesis: int
    seed: int
    foveal_scale: float
    peripheral_scale: float
    peripheral_blur: float
    guidance: str
    guidance_scale: float
    steps: int
    height: int
    width: int
    model: str
    model_revision: str | None
    dtype: str
    metamergen_version: str
    encoder_canvas: int | None = None
    encoder_patch: int | None = None
    noise: str = "independent"
    #: Streams dropped by the condition (zero tokens through their resampler); not a manifest
    #: column: the condition names it.
    drop_streams: tuple[str, ...] = ()
    scene_width: int = field(default=0, compare=False)
    scene_height: int = field(default=0, compare=False)

    @property
    def path(self) -> str:
        """The PNG, relative to the output folder."""
        return f"{IMAGES_DIR}/{self.image_id}.png"

    @property
    def n_fixations(self) -> int:
        return len(self.fixations)

    def record(self) -> dict[str, Any]:
        """The manifest row (keys in :data:`MANIFEST_COLUMNS` order)."""
        row = {name: getattr(self, name) for name in MANIFEST_COLUMNS}
        row["fixations"] = [list(p) for p in self.fixations]
        return row


_SLUG = re.compile(r"[^A-Za-z0-9_-]+")


def _slug(text: str, limit: int = 40) -> str:
    return _SLUG.sub("-", text).strip("-")[:limit] or "x"


def plan_study(
    scenes: Sequence[StudyScene],
    settings: StudySettings,
    *,
    model: str,
    model_revision: str | None = None,
    dtype: str = "float32",
    pipe: Any = None,
    native_size: int | None = None,
    size_multiple: int | None = None,
    encoder_canvas: int | None = None,
    encoder_patch: int | None = None,
    report: Counter | None = None,
) -> list[StudyJob]:
    """List every image of a study.

    Parameters
    ----------
    scenes
        From :func:`load_scanpath_scenes` or :func:`load_fixation_list_scene`.
    settings
        What to render per list.
    model, model_revision, dtype
        Recorded in the manifest and part of each image_id (a different model or precision gives
        different ids, so a rerun at another precision renders anew instead of mixing).
    pipe
        The pipeline, used for its default output size (UNet sample size x VAE factor) and its
        encoder canvas and patch size (recorded, so that figures show what this model saw).
        Alternatively give ``native_size`` and ``size_multiple``, or ``settings.height/width``.
    encoder_canvas, encoder_patch
        The encoder's canvas and patch side in canvas pixels, when no ``pipe`` is given (recorded
        only; not part of the image_id).
    report
        Receives ``"prefix longer than the fixation list"``: (list, source, prefix) combinations
        skipped. Without it, a warning says how many.

    Returns
    -------
    list of StudyJob
        Ordered scene, fixation source (viewer, then random), list, prefix, condition, hypothesis.

    Raises
    ------
    ValueError
        The plan would be empty: no scenes, or every prefix longer than every list.
    """
    from metamergen import __version__

    if pipe is not None:
        native_size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
        size_multiple = int(pipe.vae_scale_factor)
        encoder_canvas = canvas_size(pipe.feature_extractor)
        encoder_patch = int(pipe.image_encoder.config.patch_size)
    guidance_scale = defaults.resolve_guidance_scale(settings.guidance, settings.guidance_scale)
    jobs: list[StudyJob] = []
    skipped = 0
    for scene in scenes:
        if settings.height is not None:
            height, width = int(settings.height), int(settings.width)
        elif native_size is None or size_multiple is None:
            raise ValueError(
                "plan_study needs the output size: pass pipe=..., or native_size and size_multiple, or settings.height/width."
            )
        else:
            height, width = output_size(scene.width, scene.height, native_size, size_multiple)
        sources: list[tuple[str, str, Scanpath]] = [("viewer", sid, sp) for sid, sp in scene.lists]
        if settings.random_control:
            for sid, sp in scene.lists:
                rng = np.random.default_rng(derive_seed("random-control", settings.seed, scene.scene_id, sid))
                sources.append(("random", sid, matched_random(sp, generator=rng)))
        for source, sid, scanpath in sources:
            for prefix in settings.prefixes:
                if prefix is not None and prefix > len(scanpath):
                    skipped += 1
                    continue
                used = scanpath if prefix is None else scanpath.prefix(prefix)
                fixations = tuple((float(x), float(y)) for x, y in used.xy)
                for condition in settings.conditions:
                    fov, per = settings.scales(condition)
                    drop = settings.drop_streams(condition)
                    for hypothesis in range(settings.hypotheses):
                        key = {
                            "scene_id": scene.scene_id,
                            "scanpath_id": sid,
                            "fixation_source": source,
                            "prefix": prefix,
                            "fixations": fixations,
                            "condition": condition,
                            "hypothesis": hypothesis,
                            "base_seed": settings.seed,
                            "foveal_scale": fov,
                            "peripheral_scale": per,
                            "peripheral_blur": float(settings.peripheral_blur),
                            "guidance": settings.guidance,
                            "guidance_scale": guidance_scale,
                            "steps": settings.steps,
                            "height": height,
                            "width": width,
                            "model": model,
                            "model_revision": model_revision,
                            "dtype": dtype,
                            "noise": settings.noise,
                        }
                        if drop:  # only then, so that the ids of other images stay as they were
                            key["drop_streams"] = list(drop)
                        image_id = "__".join(
                            (
                                _slug(Path(scene.scene_id).with_suffix("").as_posix()),
                                _slug(sid),
                                f"{source}-{_slug(condition)}-n{'all' if prefix is None else prefix}-h{hypothesis}-{digest(key)[:10]}",
                            )
                        )
                        jobs.append(
                            StudyJob(
                                image_id=image_id,
                                scene=str(scene.path),
                                scene_id=scene.scene_id,
                                scanpath_id=sid,
                                subject=scanpath.subject,
                                prefix=prefix,
                                fixations=fixations,
                                fixation_source=source,
                                condition=condition,
                                hypothesis=hypothesis,
                                seed=(
                                    derive_seed(settings.seed, "noise", scene.scene_id, sid, hypothesis)
                                    if settings.noise == "paired"
                                    else derive_seed(settings.seed, image_id)
                                ),
                                foveal_scale=fov,
                                peripheral_scale=per,
                                peripheral_blur=float(settings.peripheral_blur),
                                guidance=settings.guidance,
                                guidance_scale=guidance_scale,
                                steps=settings.steps,
                                height=height,
                                width=width,
                                model=model,
                                model_revision=model_revision,
                                dtype=dtype,
                                metamergen_version=__version__,
                                encoder_canvas=encoder_canvas,
                                encoder_patch=encoder_patch,
                                noise=settings.noise,
                                drop_streams=drop,
                                scene_width=scene.width,
                                scene_height=scene.height,
                            )
                        )
    if not jobs:  # an empty plan would "succeed" with an empty manifest: say why nothing is planned
        if not scenes:
            raise ValueError("plan_study got no scenes: nothing to render. Check the scanpath file holds records.")
        longest = max((len(sp) for scene in scenes for _, sp in scene.lists), default=0)
        raise ValueError(
            f"nothing to render: all {skipped} (fixation list, prefix) combinations were skipped because every "
            f"prefix {list(settings.prefixes)} is longer than every list (the longest has {longest} fixation(s)). "
            "Pass smaller prefixes, or None (CLI: 'all') for the whole list."
        )
    if skipped:
        if report is not None:
            report[SKIPPED_PREFIX] += skipped
        else:
            warnings.warn(
                f"Skipped {skipped} (fixation list, prefix) combinations whose prefix is longer than the list.",
                UserWarning,
                stacklevel=2,
            )
    ids = Counter(j.image_id for j in jobs)
    dupes = [i for i, n in ids.items() if n > 1]
    if dupes:  # pragma: no cover - only identical inputs listed twice
        raise ValueError(f"The study lists the same image twice (e.g. {dupes[0]}); remove duplicate inputs.")
    return jobs


# --------------------------------------------------------------------------- manifest


# --------------------------------------------------------------------------- run


# --------------------------------------------------------------------------- command line
