"""Request inputs made into checked library objects, with errors a client can act on.

Everything here raises :class:`InputError` (an HTTP status and a one-line message) for input the
server refuses, and reuses the library's own rules so that a served request is held to exactly
what ``metamergen render`` holds its flags to:

- :func:`resolve_settings`: a request's sampling options over the server's defaults, checked by
  the guidance rule and the blur as the pipeline checks them, within the server's limits;
- :func:`build_scanpath`: fixations through :meth:`Scanpath.from_points` (the off-image policy of
  every entry point), then the prefix :meth:`Scanpath.prefix`;
- :func:`decode_upload` / :func:`load_stimulus`: image bytes through the project's one loader,
  :func:`metamergen.utils.images.load_image`, after a header-only pixel count;
- :func:`resolve_stimulus`: a stimulus name to a file *inside* the stimulus folder, never outside.

Warnings these functions raise (fixations dropped or clipped, transparency, EXIF orientation) are
returned as strings for the response. :func:`warnings.catch_warnings` swaps process-wide state,
so the server calls these functions from one thread only (its intake thread), never concurrently.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

from metamergen.serve.config import Limits, RenderDefaults

if TYPE_CHECKING:
    from PIL import Image

    from metamergen.fixations.records import Scanpath

__all__ = [
    "IMAGE_SUFFIXES",
    "InputError",
    "RenderSettings",
    "build_scanpath",
    "capture_warnings",
    "decode_upload",
    "list_stimuli",
    "load_stimulus",
    "resolve_settings",
    "resolve_stimulus",
]

#: File name endings ``GET /stimuli`` lists (any file Pillow reads may still be named).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

T = TypeVar("T")


class InputError(Exception):
    """Input the server refuses: ``status`` (a 4xx) and a one-line ``message`` saying what to change."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def capture_warnings(fn: Callable[[], T]) -> tuple[T, list[str]]:
    """Run ``fn()`` and return its result with the warnings it raised, as messages (one thread only)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, [str(w.message) for w in caught]


# ---------------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class RenderSettings:
    """A render request's sampling settings after defaults and checks (see :func:`resolve_settings`).

    ``guidance_scale`` stays ``None`` when neither the request nor the server gave one, as
    ``render`` records it; ``resolved_guidance_scale`` is the strength actually used.
    ``foveal_scale`` and ``peripheral_scale`` are the scales the pipeline gets once ``condition``
    (a study condition, :data:`metamergen.study.CONDITIONS`) is applied, and ``drop_streams`` the
    streams it drops: both by the study's own rule (:class:`metamergen.study.StudySettings`).
    """

    steps: int
    guidance: str
    guidance_scale: float | None
    resolved_guidance_scale: float
    foveal_scale: float
    peripheral_scale: float
    peripheral_blur: float
    hypotheses: int
    off_image: str
    deadline_ms: float | None
    condition: str = "both"
    drop_streams: tuple[str, ...] = ()

    @property
    def streams_shown(self) -> tuple[bool, bool]:
        """``(fovea, periphery)``: whether each stream reaches the model (not dropped, scale above 0)."""
        return (
            "foveal" not in self.drop_streams and self.foveal_scale > 0,
            "peripheral" not in self.drop_streams and self.peripheral_scale > 0,
        )

    def batch_key(self) -> tuple[Any, ...]:
        """Requests with equal keys (and output sizes) can share one pipeline call."""
        return (
            self.steps,
            self.guidance,
            self.resolved_guidance_scale,
            self.foveal_scale,
            self.peripheral_scale,
            self.peripheral_blur,
            self.hypotheses,
            self.drop_streams,
        )


def resolve_settings(options: dict[str, Any], defaults: RenderDefaults, limits: Limits) -> RenderSettings:
    """A request's options (``None`` = inherit) over ``defaults``, checked against ``limits``.

    Parameters
    ----------
    options
        ``steps``, ``guidance``, ``guidance_scale``, ``foveal_scale``, ``peripheral_scale``,
        ``peripheral_blur``, ``hypotheses``, ``off_image``, ``deadline_ms``; missing or ``None``
        takes the server's default. ``condition`` (default ``"both"``) then removes a stream as
        the study does: a ``":off"`` condition sets that stream's scale to 0, a ``":dropped"`` one
        (``"foveal"`` and ``"peripheral"`` included) drops its tokens.

    Raises
    ------
    InputError
        422 naming the option: steps or hypotheses over the limit, a guidance scale outside the
        rule's range (CFG++'s λ in [0, 1]), a blur outside (0, 1], a negative or non-finite scale.
    """
    from metamergen.foveation.periphery import DownUpBlur
    from metamergen.pipeline.guidance import guidance_rule
    from metamergen.study.plan import StudySettings

    def pick(name: str) -> Any:
        value = options.get(name)
        return getattr(defaults, name) if value is None else value

    steps, hypotheses = pick("steps"), pick("hypotheses")
    if not 1 <= steps <= limits.max_steps:
        raise InputError(422, f"steps must be between 1 and {limits.max_steps} (this server's limit), got {steps}.")
    if not 1 <= hypotheses <= limits.max_hypotheses:
        raise InputError(
            422, f"hypotheses must be between 1 and {limits.max_hypotheses} (this server's limit), got {hypotheses}."
        )
    guidance = pick("guidance")
    # the server's default scale belongs to the server's default rule; a request naming another rule gets that rule's default
    if options.get("guidance_scale") is not None:
        guidance_scale = options["guidance_scale"]
    elif options.get("guidance") is None or options["guidance"] == defaults.guidance:
        guidance_scale = defaults.guidance_scale
    else:
        guidance_scale = None
    try:
        rule = guidance_rule(guidance, guidance_scale)
        blur = pick("peripheral_blur")
        DownUpBlur(blur)
    except ValueError as err:
        raise InputError(422, str(err)) from None
    scales = {name: pick(name) for name in ("foveal_scale", "peripheral_scale")}
    for name, value in scales.items():
        if not (math.isfinite(value) and value >= 0):
            raise InputError(422, f"{name} must be a finite number >= 0 (0 switches the stream off), got {value}.")
    condition = options.get("condition") or "both"
    try:  # the study's rule for what a condition keeps (the one owner), on these scales
        study = StudySettings(conditions=(condition,), **scales)
    except ValueError as err:
        raise InputError(422, str(err)) from None
    foveal_scale, peripheral_scale = study.scales(condition)
    return RenderSettings(
        steps=steps,
        guidance=guidance,
        guidance_scale=guidance_scale,
        resolved_guidance_scale=rule.scale,
        foveal_scale=foveal_scale,
        peripheral_scale=peripheral_scale,
        peripheral_blur=blur,
        hypotheses=hypotheses,
        off_image=pick("off_image"),
        deadline_ms=pick("deadline_ms"),
        condition=condition,
        drop_streams=study.drop_streams(condition),
    )


# ---------------------------------------------------------------------------------- fixations


def build_scanpath(
    points: Sequence[Sequence[float]],
    *,
    width: int,
    height: int,
    off_image: str,
    n: int | None,
    image: str,
    limits: Limits,
) -> tuple[Scanpath, list[str]]:
    """The fixation list a render uses: the off-image policy first, then the first ``n`` fixations.

    The order is the study's (``metamergen generate`` applies the policy when it reads scanpaths
    and takes prefixes of the result), so "the first ``n`` fixations" counts fixations on the image.

    Parameters
    ----------
    points
        ``(x, y)`` pairs in pixels of the scene image (origin top-left, x right, y down).
    width, height
        The scene's size, pixels.
    off_image
        ``"drop"``, ``"clip"`` or ``"error"`` (:data:`metamergen.fixations.OffImagePolicy`).
    n
        Prefix length, or ``None`` for the whole list.
    image
        The scene's name, for messages.

    Returns
    -------
    scanpath, warnings
        The :class:`~metamergen.fixations.Scanpath` to render and the policy's warnings.

    Raises
    ------
    InputError
        422: more than ``limits.max_fixations`` fixations, an off-image fixation under
        ``off_image="error"``, or ``n`` larger than the fixations left.
    """
    import numpy as np

    from metamergen.fixations.records import Scanpath

    if len(points) > limits.max_fixations:
        raise InputError(
            422, f"{len(points)} fixations is more than this server's limit of {limits.max_fixations} per request."
        )

    def build() -> Scanpath:
        array = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        scanpath = Scanpath.from_points(array, width=width, height=height, off_image=off_image, image=image)
        return scanpath if n is None else scanpath.prefix(n)

    try:
        return capture_warnings(build)
    except (TypeError, ValueError) as err:
        raise InputError(422, str(err)) from None


# ---------------------------------------------------------------------------------- images


def _header_pixels(path: str) -> float | None:
    """``width * height`` from the file header (nothing decoded), or ``None`` if Pillow cannot tell."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.width) * int(im.height)
    except Image.DecompressionBombError:
        return math.inf  # larger than any limit: Pillow refuses to open it at all
    except Exception:  # noqa: BLE001 - unreadable files get load_image's own message next
        return None


def _check_pixels(pixels: float | None, limits: Limits, name: str) -> None:
    if pixels is not None and pixels > limits.max_pixels:
        raise InputError(
            413,
            f"{name} has {pixels:.0f} pixels, more than this server's limit of {limits.max_pixels} "
            "(width x height); downscale it, or start the server with a larger --max-pixels.",
        )


def _load(path: str, name: str, limits: Limits) -> tuple[Image.Image, list[str]]:
    from metamergen.utils.images import ImageLoadError, load_image

    _check_pixels(_header_pixels(path), limits, name)
    try:
        image, caught = capture_warnings(lambda: load_image(path))
    except ImageLoadError as err:
        raise InputError(422, str(err).replace(path, name)) from None
    _check_pixels(image.width * image.height, limits, name)
    return image, [w.replace(path, name) for w in caught]


def decode_upload(data: bytes, *, name: str, limits: Limits) -> tuple[Image.Image, list[str]]:
    """Decode an uploaded image file's bytes with :func:`~metamergen.utils.images.load_image`.

    The loader reads files, so the bytes go through a private temporary file (removed at once);
    messages name the upload, not that file.

    Raises
    ------
    InputError
        413 over ``limits.max_pixels``; 422 for bytes that are not a complete image.
    """
    suffix = PurePosixPath(name).suffix[:16]
    fd, path = tempfile.mkstemp(prefix="metamergen-upload-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return _load(path, name, limits)
    finally:
        os.unlink(path)


def resolve_stimulus(root: Path, name: str) -> tuple[Path, str]:
    """The file a stimulus name refers to, which must lie inside ``root`` once symlinks are resolved.

    Parameters
    ----------
    root
        The server's stimulus folder.
    name
        A relative path inside it with ``/`` separators, e.g. ``"scenes/kitchen.jpg"``.

    Returns
    -------
    path, label
        The resolved file, and the name records use: ``root`` as the server was given it joined
        with ``name`` (what ``metamergen render --image`` would be given for the same file).

    Raises
    ------
    InputError
        422 for an absolute path, a ``..`` component, a backslash, a NUL byte or an empty name;
        403 when the name resolves outside ``root`` (a symlink out); 404 when nothing is there or
        it is not a file.
    """
    if not name or "\x00" in name or "\\" in name:
        raise InputError(422, "A stimulus name must be a non-empty relative path with '/' separators.")
    rel = PurePosixPath(name)
    if rel.is_absolute() or name.startswith("~") or re.match(r"[A-Za-z]:(/|$)", name):  # POSIX, home, drive
        raise InputError(422, f"Stimulus name {name!r} is absolute; name a file relative to the stimulus folder.")
    if ".." in rel.parts:
        raise InputError(422, f"Stimulus name {name!r} contains '..'; name a file inside the stimulus folder.")
    base = root.resolve()
    try:
        path = (base / rel).resolve(strict=True)
    except FileNotFoundError:
        raise InputError(404, f"No stimulus {name!r} in the stimulus folder; GET /stimuli lists them.") from None
    except (OSError, RuntimeError) as err:  # symlink loops, names too long
        raise InputError(422, f"Stimulus name {name!r} cannot be resolved: {err.__class__.__name__}.") from None
    if not path.is_relative_to(base):
        raise InputError(
            403, f"Stimulus {name!r} resolves outside the stimulus folder; only files inside it are served."
        )
    if not path.is_file():
        raise InputError(404, f"Stimulus {name!r} is not a file; GET /stimuli lists the image files.")
    return path, str(root / rel)


def load_stimulus(path: Path, label: str, limits: Limits) -> tuple[Image.Image, list[str]]:
    """Decode a resolved stimulus file (size and pixel limits as for uploads)."""
    size = path.stat().st_size
    if size > limits.max_upload_bytes:
        raise InputError(
            413, f"{label} is {size} bytes, more than this server's limit of {limits.max_upload_bytes} per image."
        )
    return _load(str(path), label, limits)


def list_stimuli(root: Path, limit: int = 10_000) -> list[str]:
    """Relative names of the image files inside ``root`` (sorted; symlinks out of it skipped)."""
    base = root.resolve()

    def walk() -> Iterator[str]:
        for dirpath, _dirs, files in os.walk(base):
            for file in files:
                path = Path(dirpath) / file
                if path.suffix.lower() in IMAGE_SUFFIXES and path.resolve().is_relative_to(base):
                    yield path.relative_to(base).as_posix()

    names = []
    for found in walk():
        names.append(found)
        if len(names) >= limit:
            break
    return sorted(names)
