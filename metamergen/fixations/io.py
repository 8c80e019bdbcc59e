"""Scanpath datasets on disk: the canonical JSON Lines format and its ``dataset.json`` sidecar.

Format
------
One scanpath per line, each line the JSON object :meth:`Scanpath.to_dict` returns (fixation
``x``/``y`` in pixels of the image file the scanpath refers to, origin top-left, times in
milliseconds; see :mod:`metamergen.fixations`). The file is readable by :func:`read_scanpaths` and
by ``datasets.load_dataset("json")`` (see :func:`load_scanpath_dataset`).

An optional sidecar ``dataset.json`` in the same folder (:class:`DatasetInfo`) records what the
lines cannot: where the images live, the coordinate frame and the pixels per degree of visual
angle of the experiment. One sidecar describes every ``*.jsonl`` file in its folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metamergen.fixations.records import OffImagePolicy, Scanpath, _check_policy
from metamergen.utils.io import atomic_write

__all__ = [
    "read_fixation_list",
    "SIDECAR_NAME",
    "DatasetInfo",
    "write_scanpaths",
    "read_scanpaths",
    "load_scanpath_dataset",
    "scanpath_from_row",
    "read_info",
    "resolve_image",
]

SIDECAR_NAME = "dataset.json"
"""File name of the sidecar written next to a scanpath JSON Lines file."""

_FRAME = "image_pixels"
_MAX_LISTED = 5  # line numbers quoted in a strict=False summary warning


@dataclass
class DatasetInfo:
    """Dataset-level facts stored in the ``dataset.json`` sidecar.

    Parameters
    ----------
    name : str or None
        Human-readable dataset name.
    image_root : str or None
        Folder holding the images that scanpaths' ``image`` fields refer to. A relative path is
        resolved against the folder of the sidecar (see :func:`resolve_image`); ``None`` means
        that folder itself.
    coordinate_frame : str
        Must be ``"image_pixels"``: fixations are in pixels of each image file (origin top-left,
        x right, y down). Other frames must be converted before writing.
    pixels_per_degree : float or None
        Pixels of the *image file* per degree of visual angle in the experiment (a property of
        the display set-up and viewing distance, not of the image); ``> 0`` if given.
    source, notes : str or None
        Provenance (original file, converter) and free text (e.g. a conversion report).
    extra : dict
        Further JSON-serialisable fields.

    Raises
    ------
    ValueError
        If ``coordinate_frame`` is not ``"image_pixels"`` or ``pixels_per_degree`` is not a
        positive finite number.
    """

    name: str | None = None
    image_root: str | None = None
    coordinate_frame: str = _FRAME
    pixels_per_degree: float | None = None
    source: str | None = None
    notes: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.coordinate_frame != _FRAME:
            raise ValueError(
                f"DatasetInfo.coordinate_frame is {self.coordinate_frame!r}, but MetamerGen stores "
                f"fixations in pixels of each image file ({_FRAME!r}). Convert the coordinates to "
                "that frame first (e.g. `metamergen convert`), then set "
                f"coordinate_frame={_FRAME!r}."
            )
        ppd = self.pixels_per_degree
        if ppd is not None:
            if isinstance(ppd, bool) or not isinstance(ppd, numbers.Real):
                raise TypeError(f"DatasetInfo.pixels_per_degree must be a number, got {type(ppd).__name__} {ppd!r}.")
            if not (math.isfinite(float(ppd)) and float(ppd) > 0):
                raise ValueError(
                    f"DatasetInfo.pixels_per_degree must be a finite number > 0, got {ppd!r}; "
                    "give the image pixels per degree of visual angle of the experiment, or None "
                    "if unknown."
                )
            self.pixels_per_degree = float(ppd)
        if self.image_root is not None:
            self.image_root = os.fspath(self.image_root)
        self.extra = dict(self.extra or {})

    def to_dict(self) -> dict[str, Any]:
        """Return the sidecar's JSON object (all fields, ``None`` included)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "dataset info") -> DatasetInfo:
        """Build from a sidecar JSON object; ``where`` names the source in error messages."""
        if not isinstance(data, dict):
            raise ValueError(f"{where} must be a JSON object, got {type(data).__name__}.")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(
                f"{where} has unknown keys {unknown}; allowed keys are {known}. Move other fields under 'extra'."
            )
        try:
            return cls(**data)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{where}: {err}") from None

    @classmethod
    def read(cls, path: str | os.PathLike) -> DatasetInfo:
        """Read a sidecar file (usually ``<folder>/dataset.json``).

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist.
        ValueError
            If it is not valid JSON or does not describe a valid :class:`DatasetInfo`.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); fix or delete the sidecar.") from None
        return cls.from_dict(data, where=str(path))

    def write(self, path: str | os.PathLike) -> Path:
        """Write the sidecar atomically to ``path`` (indented JSON); return ``path``."""
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_scanpaths(path: str | os.PathLike, scanpaths: Iterable[Scanpath], info: DatasetInfo | None = None) -> Path:
    """Write scanpaths as JSON Lines (one :meth:`Scanpath.to_dict` per line), atomically.

    Parameters
    ----------
    path : path-like
        Output ``.jsonl`` file; its folder is created if missing.
    scanpaths : iterable of Scanpath
        Written in the given order; coordinates stay in image pixels, times in ms.
    info : DatasetInfo, optional
        If given, also written (atomically) to ``dataset.json`` in the same folder. Without it,
        an existing sidecar there is left untouched.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    lines = []
    for i, scanpath in enumerate(scanpaths):
        if not isinstance(scanpath, Scanpath):
            raise TypeError(
                f"scanpaths[{i}] is a {type(scanpath).__name__}, not a Scanpath; build it with "
                "Scanpath.from_xy / from_points / from_dict first."
            )
        lines.append(json.dumps(scanpath.to_dict(), ensure_ascii=False, allow_nan=False) + "\n")
    path = Path(path)
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(lines), encoding="utf-8"))
    if info is not None:
        info.write(path.parent / SIDECAR_NAME)
    return path


def _count_off_image(record: dict[str, Any], scanpath: Scanpath) -> int:
    """Fixations of ``record`` outside its image (the record already built without error)."""
    w, h = scanpath.width, scanpath.height
    return sum(not (0 <= float(f["x"]) < w and 0 <= float(f["y"]) < h) for f in record["fixations"])


def read_scanpaths(
    path: str | os.PathLike,
    *,
    off_image: OffImagePolicy = "drop",
    strict: bool = True,
    report: Counter | None = None,
) -> list[Scanpath]:
    """Read a scanpath JSON Lines file written by :func:`write_scanpaths`.

    Parameters
    ----------
    path : path-like
        The ``.jsonl`` file. Blank lines are ignored.
    off_image : {"drop", "clip", "error"}
        Policy for fixations outside their image (see :meth:`Scanpath.with_off_image`). With
        ``"drop"``/``"clip"`` a single warning reports the total over the file.
    strict : bool
        ``True``: the first bad line raises. ``False``: bad lines (including, with
        ``off_image="error"``, lines with off-image fixations) are skipped and one warning says
        how many and which.
    report : collections.Counter, optional
        If given, receives the counts of what was left out: ``"malformed record"`` (skipped
        lines) and ``"off-image fixation"`` (dropped or clipped fixations).

    Returns
    -------
    list of Scanpath
        In file order.

    Raises
    ------
    ValueError
        With ``strict=True``, for a line that is not valid JSON or not a valid scanpath record;
        the message names the file, the 1-based line number and the problem.
    """
    _check_policy(off_image)
    path = Path(path)
    scanpaths: list[Scanpath] = []
    bad: list[int] = []
    first_error = ""
    n_off = n_off_paths = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"expected a JSON object, got {type(record).__name__}")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    scanpath = Scanpath.from_dict(record, off_image=off_image)
            except (ValueError, TypeError, KeyError) as err:
                reason = err.args[0] if isinstance(err, KeyError) and err.args else err
                message = f"{path}, line {lineno}: {reason}"
                if strict:
                    raise ValueError(
                        f"{message}. Fix or remove that line, or read with strict=False to skip bad lines."
                    ) from None
                bad.append(lineno)
                first_error = first_error or message
                continue
            off = _count_off_image(record, scanpath) if off_image != "error" else 0
            n_off += off
            n_off_paths += off > 0
            scanpaths.append(scanpath)
    if report is not None:
        for reason, n in (("malformed record", len(bad)), ("off-image fixation", n_off)):
            if n:
                report[reason] += n
    if n_off:
        action = "dropped" if off_image == "drop" else "clipped to the image border"
        warnings.warn(
            f"{path}: {action} {n_off} off-image fixations in {n_off_paths} scanpaths (off_image={off_image!r}).",
            UserWarning,
            stacklevel=2,
        )
    if bad:
        listed = ", ".join(map(str, bad[:_MAX_LISTED])) + (", ..." if len(bad) > _MAX_LISTED else "")
        warnings.warn(
            f"{path}: skipped {len(bad)} malformed lines (lines {listed}); first problem: "
            f"{first_error.rstrip('.')}. Read with strict=True to stop at the first one.",
            UserWarning,
            stacklevel=2,
        )
    return scanpaths


def read_fixation_list(source: str | os.PathLike) -> np.ndarray:
    """One fixation list from a JSON file holding ``[[x, y], ...]`` in image pixels, as ``(N, 2)``
    (``[]`` is valid: no fixations). Errors name the file and, for bad JSON, the line."""
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"no fixation list at {path}.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}, line {err.lineno}: not valid JSON ({err.msg}); expected a list of [x, y] pairs in image pixels."
        ) from None
    if not isinstance(data, list) or not all(
        isinstance(p, (list, tuple))
        and len(p) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
        for p in data
    ):
        raise ValueError(
            f"{path}: expected a JSON list of [x, y] pairs (numbers, image pixels), e.g. [[120, 80], [300, 210]]."
        )
    return np.asarray(data, dtype=np.float64).reshape(-1, 2)


def load_scanpath_dataset(path: str | os.PathLike, *, streaming: bool = False, **load_kwargs: Any) -> Any:
    """Open a scanpath JSON Lines file as a Hugging Face dataset.

    Calls ``datasets.load_dataset("json", data_files=str(path), split="train",
    streaming=streaming, **load_kwargs)`` (e.g. ``cache_dir=``).

    Returns
    -------
    datasets.Dataset or datasets.IterableDataset
        One row per scanpath. Rows are plain dicts, not :class:`Scanpath` objects; turn one into
        a scanpath with :func:`scanpath_from_row`. Keys missing from some lines (``image``,
        ``subject``, ``task``, ``condition``, ``extra``, fixation ``duration_ms``/``onset_ms``)
        come back as ``None``; ``extra`` and ``fixations`` keep their nested dict/list shape.
        Coordinates are unchanged (image pixels).

    Raises
    ------
    ImportError
        If the ``datasets`` package is not installed.
    """
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            "load_scanpath_dataset needs the Hugging Face `datasets` package: pip install datasets "
            "(or use read_scanpaths, which needs nothing extra)."
        ) from err
    return datasets.load_dataset("json", data_files=str(path), split="train", streaming=streaming, **load_kwargs)


def scanpath_from_row(row: dict[str, Any], *, off_image: OffImagePolicy = "drop") -> Scanpath:
    """Build a :class:`Scanpath` from one row of :func:`load_scanpath_dataset`.

    ``None`` values stand for missing optional keys; see :meth:`Scanpath.from_dict`.
    """
    return Scanpath.from_dict(row, off_image=off_image)


def read_info(path_to_jsonl: str | os.PathLike) -> DatasetInfo | None:
    """Read the ``dataset.json`` sidecar next to a scanpath JSONL file, or ``None`` if absent."""
    sidecar = Path(path_to_jsonl).parent / SIDECAR_NAME
    return DatasetInfo.read(sidecar) if sidecar.is_file() else None


def resolve_image(info: DatasetInfo | None, scanpath_image: str | None, jsonl_path: str | os.PathLike) -> Path:
    """Path of the image a scanpath refers to.

    Parameters
    ----------
    info : DatasetInfo or None
        The sidecar (:func:`read_info`). Its ``image_root``, if relative, is taken relative to
        the folder of ``jsonl_path`` (where the sidecar lives); without a root, images are looked
        up in that folder.
    scanpath_image : str or None
        The scanpath's ``image`` field; an absolute path is returned unchanged.
    jsonl_path : path-like
        The JSON Lines file the scanpath came from.

    Returns
    -------
    pathlib.Path
        The image path; whether the file exists is not checked.
    """
    if scanpath_image is None:
        raise ValueError(
            f"a scanpath from {jsonl_path} has no 'image' field, so there is no image to resolve; "
            "set Scanpath.image to a path relative to the dataset's image_root."
        )
    image = Path(scanpath_image)
    if image.is_absolute():
        return image
    base = Path(jsonl_path).parent
    if info is not None and info.image_root:
        root = Path(info.image_root).expanduser()
        base = root if root.is_absolute() else base / root
    return base / image
