"""Study scenes: an image and the fixation lists recorded on it, checked before anything is rendered."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metamergen.fixations.io import read_fixation_list, read_info, read_scanpaths, resolve_image
from metamergen.fixations.records import OffImagePolicy, Scanpath

__all__ = ["StudyScene", "load_fixation_list_scene", "load_scanpath_scenes"]


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
    from metamergen.utils.images import ImageLoadError, SceneSizeError, check_scene_size, load_image

    if not path.is_file():
        raise FileNotFoundError(f"{what}: no image at {path}.")
    try:  # decoded whole: a truncated file must stop the study before anything is written
        size = load_image(path).size
        check_scene_size(*size, name=str(path))  # too small or too thin: stop before anything is written
    except (ImageLoadError, SceneSizeError) as err:
        raise ValueError(f"{what}: {err}") from None
    return size


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
        The ``.jsonl`` file (:func:`metamergen.fixations.io.read_scanpaths`); malformed lines raise with
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
        A file without scanpaths, a malformed line, an unreadable image, a scanpath whose width/height differ from its
        image's, a scanpath without ``image``, or two lists with the same id on one scene.
    """
    path = Path(scanpaths)
    if not path.is_file():
        raise FileNotFoundError(f"no scanpath file at {path}.")
    records = read_scanpaths(path, off_image=off_image, strict=True, report=report)
    if not records:  # an empty study would otherwise finish "successfully" with nothing in it
        raise ValueError(
            f"{path} holds no scanpaths (the file is empty or only blank lines), so there is nothing to render. "
            "If it came from `metamergen convert`, check what the conversion dropped."
        )
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
                "path": image_path.resolve(),
                "width": width,
                "height": height,
                "lists": [],
                "lines": {},
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
    scanpath = Scanpath.from_points(
        points, width=width, height=height, off_image=off_image, image=image_path.name, id=sid
    )
    return [StudyScene(image_path.name, image_path.resolve(), width, height, ((sid, scanpath),))]
