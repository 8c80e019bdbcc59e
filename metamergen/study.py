"""Studies: render scene hypotheses for many fixation lists, resumably (``metamergen generate``).

A study crosses, for every scene, every fixation list recorded on it with

- **prefixes** N: the viewer's first N fixations (the paper's schedule is 1, 2, 3, 5, 10; ``None``
  means the whole list). A prefix longer than a list is skipped and counted, never padded;
- **conditions**: ``"both"`` streams (the scales as given), ``"foveal"`` only (peripheral scale
  set to 0) or ``"peripheral"`` only (foveal scale set to 0);
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
package version is recorded but not hashed. The image's own ``seed`` is a deterministic function of
the base seed and its ``image_id``, and each image gets its own generator, so an image does not
depend on which other images are in the study or in its batch: re-runs, subsets and extensions
(more prefixes, more hypotheses) reproduce the same images. Because the seed follows the image_id,
different conditions or sources of the same list and hypothesis use different noise (the design is
unpaired).

Output folder
-------------
``images/<image_id>.png`` (written atomically) and ``manifest.jsonl``, one JSON object per finished
image with the columns of :data:`MANIFEST_COLUMNS`, appended after each batch. The manifest is the
record of what is done: re-running the same command skips every image_id that is in the manifest and
whose file exists, and regenerates the rest (entries whose file was deleted are removed from the
manifest first). A changed setting changes the image_ids, so several studies may share a folder.
One process at a time per folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from .cli import add_model_arguments, check_model_choice, load_pipeline_from_args
from .data import read_fixation_list, read_info, read_scanpaths, resolve_image
from .fixations import OffImagePolicy, Scanpath, matched_random
from .guidance import DEFAULT_GUIDANCE
from .pipeline import output_size
from .io_utils import atomic_write

__all__ = [
    "CONDITIONS",
    "IMAGES_DIR",
    "MANIFEST_COLUMNS",
    "MANIFEST_NAME",
    "StudyJob",
    "StudyRunSummary",
    "StudyScene",
    "StudySettings",
    "load_fixation_list_scene",
    "load_scanpath_scenes",
    "main",
    "output_size",
    "plan_study",
    "read_manifest",
    "register_generate_command",
    "run_study",
]

#: Conditions: which adapter streams a generation uses.
CONDITIONS: tuple[str, ...] = ("both", "foveal", "peripheral")
#: File name of the manifest inside the output folder.
MANIFEST_NAME = "manifest.jsonl"
#: Folder (inside the output folder) that holds the generated PNGs.
IMAGES_DIR = "images"
#: Columns of a manifest row, in order.
MANIFEST_COLUMNS: tuple[str, ...] = (
    "image_id",
    "path",
    "scene",
    "scene_id",
    "scanpath_id",
    "subject",
    "prefix",
    "n_fixations",
    "fixations",
    "fixation_source",
    "condition",
    "hypothesis",
    "seed",
    "foveal_scale",
    "peripheral_scale",
    "peripheral_blur",
    "guidance",
    "guidance_scale",
    "steps",
    "height",
    "width",
    "model",
    "model_revision",
    "dtype",
    "metamergen_version",
)

_SKIPPED_PREFIX = "prefix longer than the fixation list"


# --------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class StudyScene:
    """One scene image and the fixation lists recorded on it.

    Attributes
    ----------
    scene_id
        Stable name of the scene: the scanpaths' ``image`` reference, or the image file name.
    path
        The image file (absolute).
    width, height
        Size of the image file in pixels (every list's coordinates are in these pixels).
    lists
        ``(scanpath_id, scanpath)`` pairs, off-image policy already applied.
    """

    scene_id: str
    path: Path
    width: int
    height: int
    lists: tuple[tuple[str, Scanpath], ...]


def _image_size(path: Path, what: str) -> tuple[int, int]:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no image at {path}.")
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{what}: {path} is not an image file Pillow can read ({err}).") from None


def _line_numbers(path: Path) -> list[int]:
    """1-based line numbers of the non-blank lines (read_scanpaths returns one scanpath per line)."""
    with open(path, encoding="utf-8") as f:
        return [n for n, line in enumerate(f, start=1) if line.strip()]


def load_scanpath_scenes(
    scanpaths: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    off_image: OffImagePolicy = "drop",
    report: Counter | None = None,
) -> list[StudyScene]:
    """Read a canonical scanpath JSON Lines file and group its lists by scene, checking everything.

    Parameters
    ----------
    scanpaths
        The ``.jsonl`` file (:func:`metamergen.data.read_scanpaths`); malformed lines raise with
        their line number.
    image_root
        Folder the scanpaths' ``image`` fields are relative to. Default: the ``image_root`` of the
        ``dataset.json`` sidecar (relative to the file's folder), else the file's folder.
    off_image
        Policy for fixations outside their image (module docstring).
    report
        Receives ``read_scanpaths``' counts (``"off-image fixation"``).

    Returns
    -------
    list of StudyScene
        In order of first appearance. A list without an ``id`` is named ``line<N>``.

    Raises
    ------
    FileNotFoundError
        The file, or an image a scanpath refers to, does not exist (the message names the line).
    ValueError
        A malformed line, an unreadable image, a scanpath whose width/height differ from its
        image's, a scanpath without ``image``, or two lists with the same id on one scene.
    """
    path = Path(scanpaths)
    if not path.is_file():
        raise FileNotFoundError(f"no scanpath file at {path}.")
    records = read_scanpaths(path, off_image=off_image, strict=True, report=report)
    lines = _line_numbers(path)
    info = read_info(path) if image_root is None else None
    scenes: dict[str, dict[str, Any]] = {}
    for scanpath, lineno in zip(records, lines):
        where = f"{path}, line {lineno}"
        if scanpath.image is None:
            raise ValueError(f"{where}: scanpath {scanpath.id!r} has no 'image' field, so it refers to no scene.")
        entry = scenes.get(scanpath.image)
        if entry is None:
            if image_root is not None and not Path(scanpath.image).is_absolute():
                image_path = Path(image_root) / scanpath.image
            else:
                image_path = resolve_image(info, scanpath.image, path)
            if not image_path.is_file():
                raise FileNotFoundError(
                    f"{where}: scanpath {scanpath.id!r} refers to image {scanpath.image!r}, which is not at "
                    f"{image_path}. Check the image root ({'--image-root' if image_root is not None else 'image_root in dataset.json, or pass --image-root'})."
                )
            width, height = _image_size(image_path, where)
            entry = scenes[scanpath.image] = {
                "path": image_path.resolve(), "width": width, "height": height, "lists": [], "lines": {},
            }
        if (scanpath.width, scanpath.height) != (entry["width"], entry["height"]):
            raise ValueError(
                f"{where}: scanpath {scanpath.id!r} is in the pixels of a {scanpath.width}x{scanpath.height} image, "
                f"but {entry['path']} is {entry['width']}x{entry['height']}. MetamerGen never rescales fixations "
                "silently: convert them to the image's pixels (or point to the image they were recorded on)."
            )
        sid = scanpath.id if scanpath.id is not None else f"line{lineno}"
        if sid in entry["lines"]:
            raise ValueError(
                f"{where}: scanpath id {sid!r} already appears on line {entry['lines'][sid]} for the same image "
                f"{scanpath.image!r}; ids must be unique per scene (the manifest joins on them)."
            )
        entry["lines"][sid] = lineno
        entry["lists"].append((sid, scanpath))
    return [
        StudyScene(scene_id, e["path"], e["width"], e["height"], tuple(e["lists"])) for scene_id, e in scenes.items()
    ]


def load_fixation_list_scene(
    image: str | os.PathLike,
    fixations: str | os.PathLike | Sequence[Sequence[float]] | np.ndarray,
    *,
    scanpath_id: str | None = None,
    off_image: OffImagePolicy = "drop",
) -> list[StudyScene]:
    """One image and one fixation list as a study of one scene.

    Parameters
    ----------
    image
        The scene image file.
    fixations
        A JSON file holding ``[[x, y], ...]`` in pixels of ``image`` (``[]`` is valid: peripheral
        information only), or the points themselves.
    scanpath_id
        Name of the list in the manifest. Default: the JSON file's stem, or ``"fixations"``.
    off_image
        Policy for fixations outside the image (module docstring).
    """
    image_path = Path(image)
    width, height = _image_size(image_path, "--image")
    if isinstance(fixations, (str, os.PathLike)):
        points = read_fixation_list(fixations)
        default_id = Path(fixations).stem
    else:
        points = np.asarray(fixations, dtype=np.float64).reshape(-1, 2) if len(fixations) else np.zeros((0, 2))
        default_id = "fixations"
    sid = scanpath_id or default_id
    scanpath = Scanpath.from_points(points, width=width, height=height, off_image=off_image, image=image_path.name, id=sid)
    return [StudyScene(image_path.name, image_path.resolve(), width, height, ((sid, scanpath),))]


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
    foveal_scale, peripheral_scale
        λ_f and λ_p for ``"both"`` (paper 1.2, 0.7); ``"foveal"`` zeroes λ_p, ``"peripheral"`` λ_f.
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
    foveal_scale: float = 1.2
    peripheral_scale: float = 0.7
    peripheral_blur: float = 0.25
    guidance: str = "cfg++"
    guidance_scale: float | None = None
    steps: int = 50
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
        if self.guidance not in DEFAULT_GUIDANCE:
            raise ValueError(f"guidance must be one of {sorted(DEFAULT_GUIDANCE)}, got {self.guidance!r}.")
        if self.guidance == "cfg++" and self.guidance_scale is not None and not 0 <= self.guidance_scale <= 1:
            raise ValueError(f"CFG++ takes a guidance scale in [0, 1] (default 0.6), got {self.guidance_scale}.")
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

    def scales(self, condition: str) -> tuple[float, float]:
        """``(foveal_scale, peripheral_scale)`` after ``condition`` is applied."""
        fov, per = float(self.foveal_scale), float(self.peripheral_scale)
        if condition == "foveal":
            per = 0.0
        elif condition == "peripheral":
            fov = 0.0
        return fov, per


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


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, allow_nan=False).encode()).hexdigest()


def _derived_seed(*parts: Any) -> int:
    """A 31-bit seed from a SHA-256 of ``parts`` (stable across runs, platforms, Python versions)."""
    return int(_digest([str(p) for p in parts])[:8], 16) & 0x7FFFFFFF


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
        The pipeline, used only for its default output size (UNet sample size x VAE factor).
        Alternatively give ``native_size`` and ``size_multiple``, or ``settings.height/width``.
    report
        Receives ``"prefix longer than the fixation list"``: (list, source, prefix) combinations
        skipped. Without it, a warning says how many.

    Returns
    -------
    list of StudyJob
        Ordered scene, fixation source (viewer, then random), list, prefix, condition, hypothesis.
    """
    from . import __version__

    if pipe is not None:
        native_size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
        size_multiple = int(pipe.vae_scale_factor)
    guidance_scale = float(
        DEFAULT_GUIDANCE[settings.guidance] if settings.guidance_scale is None else settings.guidance_scale
    )
    jobs: list[StudyJob] = []
    skipped = 0
    for scene in scenes:
        if settings.height is not None:
            height, width = int(settings.height), int(settings.width)
        elif native_size is None or size_multiple is None:
            raise ValueError("plan_study needs the output size: pass pipe=..., or native_size and size_multiple, or settings.height/width.")
        else:
            height, width = output_size(scene.width, scene.height, native_size, size_multiple)
        sources: list[tuple[str, str, Scanpath]] = [("viewer", sid, sp) for sid, sp in scene.lists]
        if settings.random_control:
            for sid, sp in scene.lists:
                rng = np.random.default_rng(_derived_seed("random-control", settings.seed, scene.scene_id, sid))
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
                    for hypothesis in range(settings.hypotheses):
                        key = {
                            "scene_id": scene.scene_id, "scanpath_id": sid, "fixation_source": source,
                            "prefix": prefix, "fixations": fixations, "condition": condition,
                            "hypothesis": hypothesis, "base_seed": settings.seed, "foveal_scale": fov,
                            "peripheral_scale": per, "peripheral_blur": float(settings.peripheral_blur),
                            "guidance": settings.guidance, "guidance_scale": guidance_scale,
                            "steps": settings.steps, "height": height, "width": width,
                            "model": model, "model_revision": model_revision, "dtype": dtype,
                        }
                        image_id = "__".join((
                            _slug(Path(scene.scene_id).with_suffix("").as_posix()),
                            _slug(sid),
                            f"{source}-{condition}-n{'all' if prefix is None else prefix}-h{hypothesis}-{_digest(key)[:10]}",
                        ))
                        jobs.append(StudyJob(
                            image_id=image_id, scene=str(scene.path), scene_id=scene.scene_id, scanpath_id=sid,
                            subject=scanpath.subject, prefix=prefix, fixations=fixations, fixation_source=source,
                            condition=condition, hypothesis=hypothesis,
                            seed=_derived_seed(settings.seed, image_id), foveal_scale=fov, peripheral_scale=per,
                            peripheral_blur=float(settings.peripheral_blur), guidance=settings.guidance,
                            guidance_scale=guidance_scale, steps=settings.steps, height=height, width=width,
                            model=model, model_revision=model_revision, dtype=dtype, metamergen_version=__version__,
                            scene_width=scene.width, scene_height=scene.height,
                        ))
    if skipped:
        if report is not None:
            report[_SKIPPED_PREFIX] += skipped
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


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a ``manifest.jsonl``, in file order (an absent file gives ``[]``).

    A last line cut short by an interruption (no final newline, not valid JSON) is skipped with a
    warning. Any other malformed line raises :class:`ValueError` naming its line number.
    """
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    rows = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "image_id" not in row or "path" not in row:
                raise ValueError("expected a JSON object with at least 'image_id' and 'path'")
        except ValueError as err:
            if lineno == len(lines) and not text.endswith("\n"):
                warnings.warn(f"{path}, line {lineno}: ignoring an incomplete last line (an interrupted write).", UserWarning, stacklevel=2)
                continue
            raise ValueError(f"{path}, line {lineno}: not a manifest row ({err}). Fix or remove that line.") from None
        rows.append(row)
    return rows


def _completed(out_dir: Path) -> set[str]:
    """image_ids finished in ``out_dir``: in the manifest and with their file present. Rows whose
    file is gone (and an incomplete last line) are removed from the manifest, atomically."""
    manifest = out_dir / MANIFEST_NAME
    if not manifest.exists():
        return set()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = read_manifest(manifest)
    kept = [r for r in rows if (out_dir / r["path"]).is_file()]
    complete_tail = manifest.read_bytes().endswith(b"\n") or manifest.stat().st_size == 0
    if len(kept) != len(rows) or caught or not complete_tail:
        problems = [str(w.message) for w in caught]
        if len(rows) != len(kept):
            problems.append(f"{len(rows) - len(kept)} entries have no image file any more")
        warnings.warn(
            f"{manifest}: {'; '.join(problems) or 'no final newline'}. Rewriting the manifest without them; "
            "those images will be generated again.",
            UserWarning,
            stacklevel=3,
        )
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
        atomic_write(manifest, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return {r["image_id"] for r in kept}


def _append(manifest: Path, rows: Iterable[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows)
    with open(manifest, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------- run


@dataclass(frozen=True)
class StudyRunSummary:
    """What :func:`run_study` did."""

    planned: int
    already_done: int
    generated: int
    scenes_encoded: int


def _call_key(job: StudyJob) -> tuple:
    return (job.foveal_scale, job.peripheral_scale, job.guidance, job.guidance_scale, job.steps, job.height, job.width)


def run_study(
    pipe: Any,
    jobs: Sequence[StudyJob],
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 4,
    progress: bool = True,
) -> StudyRunSummary:
    """Render the jobs not yet done into ``out_dir`` (``images/*.png`` + ``manifest.jsonl``).

    Each scene with pending jobs is encoded once (one :meth:`~MetamerGenPipeline.encode_scene`
    call, two DINOv2 passes); its jobs are rendered in batches of up to ``batch_size`` images that
    share scales and sampler settings (lists, prefixes and hypotheses mix freely), each image with
    its own generator seeded by its ``seed``. After each batch the PNGs are written atomically and
    their rows appended to the manifest. Jobs already done (module docstring) are skipped.

    Parameters
    ----------
    pipe
        A :class:`~metamergen.pipeline.MetamerGenPipeline` (anything with ``encode_scene`` and the
        same call signature).
    jobs
        From :func:`plan_study`.
    out_dir
        Output folder (created if missing).
    batch_size
        Images per pipeline call.
    progress
        Show a tqdm bar over images.
    """
    import torch
    from tqdm.auto import tqdm

    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    ids = Counter(j.image_id for j in jobs)
    if any(n > 1 for n in ids.values()):
        raise ValueError("jobs contain the same image_id twice; pass the list plan_study returned.")
    out_dir = Path(out_dir)
    done = _completed(out_dir)
    pending = [j for j in jobs if j.image_id not in done]
    by_scene: dict[tuple[str, float], list[StudyJob]] = {}
    for job in pending:
        by_scene.setdefault((job.scene, job.peripheral_blur), []).append(job)
    manifest = out_dir / MANIFEST_NAME
    (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    bar_config = dict(getattr(pipe, "_progress_bar_config", {}) or {})
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)  # one bar over images, not one per denoising loop
    generated = 0
    try:
        with tqdm(total=len(pending), unit="image", disable=not progress, desc="generate") as bar:
            for (scene_path, blur), scene_jobs in by_scene.items():
                with Image.open(scene_path) as im:
                    image = im.convert("RGB")
                encoding = pipe.encode_scene(image, peripheral_blur=blur)
                groups: dict[tuple, list[StudyJob]] = {}
                for job in scene_jobs:
                    groups.setdefault(_call_key(job), []).append(job)
                for group in groups.values():
                    for start in range(0, len(group), int(batch_size)):
                        batch = group[start : start + int(batch_size)]
                        first = batch[0]
                        out = pipe(
                            scene=encoding,
                            fixations=[
                                Scanpath.from_points(
                                    np.asarray(j.fixations, dtype=np.float64).reshape(-1, 2),
                                    width=image.width, height=image.height, off_image="error",
                                )
                                for j in batch
                            ],
                            num_images_per_prompt=1,
                            generator=[torch.Generator().manual_seed(j.seed) for j in batch],
                            num_inference_steps=first.steps,
                            guidance=first.guidance,
                            guidance_scale=first.guidance_scale,
                            foveal_scale=first.foveal_scale,
                            peripheral_scale=first.peripheral_scale,
                            height=first.height,
                            width=first.width,
                            output_type="pil",
                        )
                        for job, generation in zip(batch, out.images):
                            atomic_write(out_dir / job.path, lambda p, g=generation: g.save(p, format="PNG"))
                        _append(manifest, [j.record() for j in batch])
                        generated += len(batch)
                        bar.update(len(batch))
    finally:
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(**bar_config)
    return StudyRunSummary(
        planned=len(jobs), already_done=len(jobs) - len(pending), generated=generated, scenes_encoded=len(by_scene)
    )


# --------------------------------------------------------------------------- command line

def _parse_prefixes(text: str) -> tuple[int | None, ...]:
    out: list[int | None] = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        if part == "all":
            out.append(None)
            continue
        try:
            value = int(part)
        except ValueError:
            raise SystemExit(f"error: --prefixes takes comma-separated counts or 'all' (e.g. 1,2,3,5,10), got {text!r}.") from None
        if value < 0:
            raise SystemExit(f"error: --prefixes must be >= 0, got {value}.")
        out.append(value)
    if not out:
        raise SystemExit("error: --prefixes is empty.")
    return tuple(out)


def _add_generate_arguments(g: argparse.ArgumentParser) -> None:
    inputs = g.add_argument_group("input (one of)")
    inputs.add_argument("--scanpaths", help="canonical scanpath .jsonl; images are found through its dataset.json or --image-root")
    inputs.add_argument("--image", help="one scene image, with --fixations")
    g.add_argument("--fixations", help="with --image: a .json file holding [[x, y], ...] in pixels of the image ([] = periphery only)")
    g.add_argument("--image-root", default=None, help="folder the scanpaths' image fields are relative to (overrides dataset.json)")
    g.add_argument("--out", required=True, help="output folder (images/ and manifest.jsonl); re-running resumes")
    g.add_argument("--prefixes", default="all", help="first-N fixation counts, comma-separated, 'all' = whole list (paper: 1,2,3,5,10; default all); longer than a list: skipped and counted")
    g.add_argument("--hypotheses", type=int, default=1, help="images per list, prefix and condition (default 1)")
    g.add_argument("--seed", type=int, default=0, help="base seed; each image's seed derives from it and the image_id")
    g.add_argument("--conditions", default="both", help="comma-separated subset of both,foveal,peripheral (default both)")
    g.add_argument("--random-control", action="store_true", help="also render matched random fixations (same counts, seeded)")
    g.add_argument("--off-image", choices=["drop", "clip", "error"], default="drop", help="fixations outside the image (default drop, with a warning count)")
    g.add_argument("--foveal-scale", type=float, default=1.2, help="λ_f for 'both' (paper 1.2)")
    g.add_argument("--peripheral-scale", type=float, default=0.7, help="λ_p for 'both' (paper 0.7)")
    g.add_argument("--peripheral-blur", type=float, default=0.25, help="down/up scale s in (0, 1] (default 0.25)")
    g.add_argument("--steps", type=int, default=50, help="DDIM steps (paper 50)")
    g.add_argument("--guidance", choices=["cfg++", "cfg"], default="cfg++", help="sampler guidance (paper cfg++)")
    g.add_argument("--guidance-scale", type=float, default=None, help="default 0.6 for cfg++, 7.5 for cfg")
    g.add_argument("--height", type=int, default=None, help="output height in pixels (with --width; default: scene aspect at the UNet's native area)")
    g.add_argument("--width", type=int, default=None, help="output width in pixels (with --height)")
    g.add_argument("--batch-size", type=int, default=4, help="images per pipeline call (default 4)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_arguments(g)


def _generate_command(args: argparse.Namespace) -> int:
    """Handler of ``metamergen generate``."""
    if bool(args.scanpaths) == bool(args.image):
        raise SystemExit("error: give the input as --scanpaths file.jsonl, or as --image img --fixations list.json (one of them).")
    if args.image and args.fixations is None:
        raise SystemExit("error: --image needs --fixations list.json ([[x, y], ...] in image pixels; [] for periphery only).")
    if args.scanpaths and (args.fixations is not None):
        raise SystemExit("error: --fixations goes with --image; a --scanpaths file holds its own fixations.")
    if args.image and args.image_root is not None:
        raise SystemExit("error: --image-root goes with --scanpaths.")
    if args.batch_size < 1:
        raise SystemExit(f"error: --batch-size must be >= 1, got {args.batch_size}.")
    check_model_choice(args)
    try:
        settings = StudySettings(
            prefixes=_parse_prefixes(args.prefixes),
            hypotheses=args.hypotheses,
            conditions=tuple(c.strip() for c in args.conditions.split(",") if c.strip()),
            random_control=args.random_control,
            seed=args.seed,
            foveal_scale=args.foveal_scale,
            peripheral_scale=args.peripheral_scale,
            peripheral_blur=args.peripheral_blur,
            guidance=args.guidance,
            guidance_scale=args.guidance_scale,
            steps=args.steps,
            height=args.height,
            width=args.width,
        )
        report: Counter = Counter()
        if args.scanpaths:
            scenes = load_scanpath_scenes(args.scanpaths, image_root=args.image_root, off_image=args.off_image, report=report)
        else:
            scenes = load_fixation_list_scene(args.image, args.fixations, off_image=args.off_image)
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    pipe, model, revision = load_pipeline_from_args(args)
    jobs = plan_study(scenes, settings, model=model, model_revision=revision, dtype=args.dtype, pipe=pipe, report=report)
    lists = sum(len(s.lists) for s in scenes)
    print(f"Study: {len(scenes)} scene(s), {lists} fixation list(s) -> {len(jobs)} image(s).", file=sys.stderr)
    if report[_SKIPPED_PREFIX]:
        print(
            f"Skipped {report[_SKIPPED_PREFIX]} (list, prefix) combination(s) whose prefix is longer than the list "
            f"(--prefixes {args.prefixes}).",
            file=sys.stderr,
        )
    summary = run_study(pipe, jobs, args.out, batch_size=args.batch_size, progress=not args.no_progress)
    print(
        f"Generated {summary.generated} image(s), {summary.already_done} already done; "
        f"manifest: {Path(args.out) / MANIFEST_NAME}"
    )
    return 0


_GENERATE_HELP = "render scene hypotheses for a study (fixation lists x prefixes x conditions x hypotheses), resumably"
_GENERATE_DESCRIPTION = (
    "Render scene hypotheses for every fixation list of a scanpath file (or one image + one list), each "
    "scene encoded once. Writes images/<image_id>.png and manifest.jsonl; re-running the same command "
    "skips what is done."
)


def register_generate_command(subparsers: argparse._SubParsersAction) -> None:
    """Add ``generate`` to an argparse subparsers object (handler in ``func``, returns 0)."""
    g = subparsers.add_parser("generate", help=_GENERATE_HELP, description=_GENERATE_DESCRIPTION)
    _add_generate_arguments(g)
    g.set_defaults(func=_generate_command)


def main(argv: Sequence[str] | None = None) -> int:
    """``metamergen generate`` as a standalone command (``inference/generate.py``)."""
    parser = argparse.ArgumentParser(prog="generate", description=_GENERATE_DESCRIPTION)
    _add_generate_arguments(parser)
    return _generate_command(parser.parse_args(argv))
