"""Converters from published fixation datasets to :class:`~metamergen.fixations.Scanpath` lists.

Every converter keeps coordinates in the frame they were recorded in and **never rescales**:
the caller states the image size that frame belongs to. Whatever is dropped (non-finite values,
off-image fixations, the forced initial centre fixation, inconsistent records) is counted by
reason in a :class:`ConversionReport`.

``metamergen convert`` (see :func:`register_convert_command`) writes the result in the
canonical JSON Lines format of :mod:`metamergen.fixations.io`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from metamergen.fixations.records import OffImagePolicy, Scanpath, _check_policy, _size

__all__ = [
    "ConversionReport",
    "convert_coco_freeview",
    "convert_coco_search18",
    "convert_csv",
    "CONVERTERS",
]

COCO_WIDTH, COCO_HEIGHT = 1680, 1050
"""Display frame (pixels) of the COCO-FreeView / COCO-Search18 images as distributed."""
_RESCALED = (512, 320)
#: The forced centre fixation counts as such only within this share of the frame's width and
#: height of its centre: a file whose centre fixation was already removed keeps its first one.
CENTRE_TOLERANCE = 0.1
#: Aspect (width / height) of the photos the COCO frames pad: the bars are the frame's columns
#: left and right of such a photo fitted to the frame's height (140 px a side at 1680 x 1050).
PHOTO_ASPECT = 4 / 3
_MAX_EXAMPLES = 5
_CSV_COLUMNS = ("image", "subject", "x", "y", "duration_ms", "onset_ms")
_UNITS = {"length mismatch": "records", "empty after filtering": "scanpaths", "unserialisable field": "fields"}


@dataclass
class ConversionReport:
    """What a converter read, produced and dropped.

    Attributes
    ----------
    source : str
        The input (file path, or ``"records"`` for in-memory input).
    records_read : int
        Input records (JSON records, or CSV data rows).
    scanpaths_written : int
        Scanpaths returned.
    fixations_kept : int
        Fixations in the returned scanpaths.
    fixations_clipped : int
        Off-image fixations moved to the image border (``off_image="clip"``), kept.
    dropped : collections.Counter
        Dropped items by reason. ``"length mismatch"`` counts records, ``"empty after
        filtering"`` scanpaths, ``"unserialisable field"`` record fields left out of ``extra``;
        every other reason counts fixations (CSV rows).
    examples : dict of str to list of str
        The first few locations (record index, CSV line number) per reason.
    notes : list of str
        Warnings raised during conversion (e.g. a suspected rescaled file).
    """

    source: str = "records"
    records_read: int = 0
    scanpaths_written: int = 0
    fixations_kept: int = 0
    fixations_clipped: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def drop(self, reason: str, n: int = 1, where: str | None = None) -> None:
        """Count ``n`` dropped items for ``reason``; remember ``where`` among the first few."""
        self.dropped[reason] += n
        if where is not None and len(self.examples.setdefault(reason, [])) < _MAX_EXAMPLES:
            self.examples[reason].append(where)

    def summary(self) -> str:
        """Multi-line human-readable account of the conversion."""
        lines = [
            f"Converted {self.source}: read {self.records_read} records, wrote "
            f"{self.scanpaths_written} scanpaths with {self.fixations_kept} fixations."
        ]
        if self.fixations_clipped:
            lines.append(f"  clipped to the image border: {self.fixations_clipped} fixations")
        if not self.dropped:
            lines.append("  dropped: nothing")
        else:
            lines.append("  dropped:")
            for reason, n in sorted(self.dropped.items()):
                unit = _UNITS.get(reason, "fixations")
                examples = self.examples.get(reason)
                more = ", ..." if examples and n > len(examples) else ""
                listed = f" (e.g. {', '.join(examples)}{more})" if examples else ""
                lines.append(f"    {reason}: {n} {unit}{listed}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)

    def nothing_kept(self) -> str:
        """Why no scanpath was kept, as one sentence without a final full stop (for an error message).

        Returns
        -------
        str
            That the input holds no records, or that every record was filtered out, with the count
            of each filter that dropped something.
        """
        if not self.records_read:
            return f"no scanpath kept: {self.source} holds no records (an empty list, or a CSV with only a header)"
        dropped = "; ".join(
            f"{reason}: {n} {_UNITS.get(reason, 'fixations')}" for reason, n in self.dropped.most_common()
        )
        return (
            f"no scanpath kept: every one of the {self.records_read} records in {self.source} was filtered out "
            f"({dropped or 'nothing counted as dropped'})"
        )


def _warn(report: ConversionReport, message: str) -> None:
    report.notes.append(message)
    warnings.warn(message, UserWarning, stacklevel=4)  # the caller of convert_*


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` (missing, non-numeric, NaN, infinite)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _subject(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _unique(base: str, seen: set[str]) -> str:
    out, k = base, 2
    while out in seen:
        out, k = f"{base}-{k}", k + 1
    seen.add(out)
    return out


def _build(
    points: Sequence[tuple[Any, Any, Any, Any, str]],
    *,
    width: int,
    height: int,
    off_image: OffImagePolicy,
    report: ConversionReport,
    where: str,
    **metadata: Any,
) -> Scanpath | None:
    """Filter ``(x, y, duration_ms, onset_ms, label)`` points into a scanpath, counting drops.

    Returns ``None`` (counted as "empty after filtering") if no fixation survives.
    """
    kept: list[tuple[float, float, float | None, float | None]] = []
    for x, y, duration, onset, label in points:
        fx, fy = _number(x), _number(y)
        if fx is None or fy is None:
            report.drop("non-finite coordinate", where=label)
            continue
        times = [None if raw is None else _number(raw) for raw in (duration, onset)]
        if any(raw is not None and (t is None or t < 0) for raw, t in zip((duration, onset), times)):
            report.drop("invalid time", where=label)
            continue
        if not (0 <= fx < width and 0 <= fy < height):
            if off_image == "error":
                raise ValueError(
                    f"{report.source}, {label}: fixation ({fx}, {fy}) is outside the {width}x{height} image. Check "
                    "that width/height are the frame the coordinates were recorded in, or use "
                    "off_image='drop' or 'clip'."
                )
            if off_image == "drop":
                report.drop("off-image fixation", where=label)
                continue
            report.fixations_clipped += 1
        kept.append((fx, fy, *times))
    if not kept:
        report.drop("empty after filtering", where=where)
        return None
    columns = list(zip(*kept))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # clipping is counted in the report
        scanpath = Scanpath.from_xy(
            columns[0],
            columns[1],
            duration_ms=columns[2],
            onset_ms=columns[3],
            width=width,
            height=height,
            off_image="clip",
            **metadata,
        )
    report.scanpaths_written += 1
    report.fixations_kept += len(scanpath)
    return scanpath


def _near_centre(x: Any, y: Any, width: int, height: int) -> bool:
    """Is ``(x, y)`` (frame pixels) where the forced centre fixation lands (:data:`CENTRE_TOLERANCE`)?"""
    fx, fy = _number(x), _number(y)
    return (
        fx is not None
        and fy is not None
        and abs(fx - width / 2) <= CENTRE_TOLERANCE * width
        and abs(fy - height / 2) <= CENTRE_TOLERANCE * height
    )


def bar_width(width: int, height: int) -> float:
    """Width in frame pixels of each black side bar of a :data:`PHOTO_ASPECT` photo padded to the frame.

    Parameters
    ----------
    width, height
        The frame's size in pixels (1680 x 1050 for COCO-FreeView / COCO-Search18).

    Returns
    -------
    float
        ``(width - height * PHOTO_ASPECT) / 2``, or 0 if such a photo fills the frame's width.
    """
    return max(0.0, (width - height * PHOTO_ASPECT) / 2)


def _load_records(records_or_path: Any, kind: str) -> tuple[list[Any], str]:
    if isinstance(records_or_path, (str, os.PathLike)):
        path = Path(records_or_path)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path} is not valid JSON ({err}); {kind} fixation files are one JSON list of records."
            ) from None
        source = str(path)
    else:
        data, source = records_or_path, "records"
    if isinstance(data, Mapping) or not isinstance(data, Iterable):
        raise ValueError(
            f"{source}: expected a list of {kind} records (dicts with name, subject, X, Y, T), got "
            f"{type(data).__name__}."
        )
    return list(data), source


def _convert_coco(
    records_or_path: Any,
    *,
    kind: str,
    width: int,
    height: int,
    drop_initial_fixation: bool,
    off_image: OffImagePolicy,
    image_prefix: str | None,
    drop_bar_fixations: bool,
) -> tuple[list[Scanpath], ConversionReport]:
    _check_policy(off_image)
    width, height = _size(width, "width"), _size(height, "height")
    search = kind == "COCO-Search18"
    records, source = _load_records(records_or_path, kind)
    report = ConversionReport(source=source, records_read=len(records))
    required = ("name", "subject", "X", "Y") + (("task",) if search else ())
    consumed = {"name", "subject", "X", "Y", "T", "length"} | ({"task", "condition"} if search else set())
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise ValueError(f"{source}: record {i} is a {type(rec).__name__}, not a dict.")
        missing = [key for key in required if key not in rec]
        if missing:
            raise ValueError(
                f"{source}: record {i} has no {missing}; {kind} records need {list(required)}. "
                "Is this the right converter for the file?"
            )
        for key in ("X", "Y", "T"):
            if key in rec and (isinstance(rec[key], (str, bytes, Mapping)) or not isinstance(rec[key], Sequence)):
                raise ValueError(
                    f"{source}: record {i} field {key!r} must be a list of numbers, got {type(rec[key]).__name__}."
                )

    # Guard against the 512x320 rescaled copies being converted as 1680x1050.
    coords = [
        (x, y)
        for rec in records
        for x, y in zip(map(_number, rec["X"]), map(_number, rec["Y"]))
        if x is not None and y is not None
    ]
    if (
        (width, height) == (COCO_WIDTH, COCO_HEIGHT)
        and coords
        and all(0 <= x <= _RESCALED[0] and 0 <= y <= _RESCALED[1] for x, y in coords)
    ):
        _warn(
            report,
            f"every coordinate in {source} lies within {_RESCALED[0]}x{_RESCALED[1]}, so this may "
            "be the rescaled copy of the data; if so, pass width=512, height=320 (CLI: --width 512 "
            "--height 320). Coordinates are not rescaled either way.",
        )

    scanpaths: list[Scanpath] = []
    seen: set[str] = set()
    off_centre: list[str] = []  # records whose first fixation is not the centre one (kept)
    bar = bar_width(width, height)
    on_bars = 0
    for i, rec in enumerate(records):
        name, subject = str(rec["name"]), _subject(rec["subject"])
        task = None if not search or rec.get("task") is None else str(rec["task"])
        condition = None if not search or rec.get("condition") is None else str(rec["condition"])
        where = f"record {i}"
        xs, ys, ts = rec["X"], rec["Y"], rec.get("T")
        lengths = {len(xs), len(ys)} | ({len(ts)} if ts is not None else set())
        if rec.get("length") is not None:
            lengths.add(rec["length"])
        if len(lengths) > 1:
            report.drop("length mismatch", where=where)
            continue
        points = [
            (x, y, None if ts is None else ts[j], None, f"{where} fixation {j}") for j, (x, y) in enumerate(zip(xs, ys))
        ]
        if drop_initial_fixation and points:
            if _near_centre(points[0][0], points[0][1], width, height):
                report.drop("initial centre fixation")
                points = points[1:]
            else:
                off_centre.append(where)
        if bar:
            kept_points = []
            for point in points:
                fx = _number(point[0])
                if fx is not None and 0 <= fx < width and not bar <= fx < width - bar:
                    if drop_bar_fixations:
                        report.drop("on the padding bars", where=point[4])
                        continue
                    on_bars += 1
                kept_points.append(point)
            points = kept_points
        extra: dict[str, Any] = {}
        for key, value in rec.items():
            if key in consumed:
                continue
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                report.drop("unserialisable field", where=f"{where} {key!r}")
                continue
            extra[key] = value
        image = name
        if image_prefix:
            prefix = image_prefix.format(task=task, condition=condition) if search else image_prefix
            image = str(PurePosixPath(prefix) / name)
        base = "-".join(str(part) for part in (PurePosixPath(name).stem, subject, task) if part is not None)
        scanpath = _build(
            points,
            width=width,
            height=height,
            off_image=off_image,
            report=report,
            where=where,
            image=image,
            id=_unique(base, seen),
            subject=subject,
            task=task,
            condition=condition,
            extra=extra,
        )
        if scanpath is not None:
            scanpaths.append(scanpath)
    if off_centre:
        _warn(
            report,
            f"{len(off_centre)} record(s) start away from the frame centre (e.g. {', '.join(off_centre[:_MAX_EXAMPLES])}): "
            "their first fixation was kept, as the centre fixation seems already removed.",
        )
    if on_bars:
        _warn(
            report,
            f"{on_bars} fixation(s) lie on the black side bars of the {width}x{height} frame (x < {bar:g} or "
            f"x >= {width - bar:g}, outside a {PHOTO_ASPECT:.3g}:1 photo padded to it): kept, as they are on the "
            "image file; pass drop_bar_fixations=True (CLI: --drop-bar-fixations) to drop them.",
        )
    return scanpaths, report


def convert_coco_freeview(
    records_or_path: str | os.PathLike | Iterable[Mapping[str, Any]],
    *,
    width: int = COCO_WIDTH,
    height: int = COCO_HEIGHT,
    drop_initial_fixation: bool = True,
    off_image: OffImagePolicy = "drop",
    image_prefix: str | None = None,
    drop_bar_fixations: bool = False,
) -> tuple[list[Scanpath], ConversionReport]:
    """Convert COCO-FreeView fixation records to scanpaths.

    Parameters
    ----------
    records_or_path : path-like or iterable of dict
        The dataset's JSON file (one list of records) or its records already loaded. Each record
        has ``name`` (image file), ``subject``, ``X``, ``Y`` (fixation positions in pixels of the
        1680x1050 frame the images ship in), ``T`` (durations, ms), ``length`` and ``split``.
    width, height : int
        Size in pixels of the frame the coordinates are in (= of the image files). Some copies
        of the data were rescaled to 512x320: pass ``width=512, height=320`` for those. Nothing is
        rescaled; if the defaults are kept but every coordinate in the input lies within 512x320,
        a warning says the file may be the rescaled copy.
    drop_initial_fixation : bool
        Drop each scanpath's first fixation, the forced centre fixation before free viewing
        (counted as "initial centre fixation"), if it lies within :data:`CENTRE_TOLERANCE` of
        the frame's width and height of its centre; a record starting elsewhere keeps it (its
        centre fixation was already removed) and a warning says how many did.
    off_image : {"drop", "clip", "error"}
        Fixations outside ``[0, width) x [0, height)``: dropped ("off-image fixation"), clipped to
        the border (counted in ``fixations_clipped``), or a ``ValueError``.
    image_prefix : str, optional
        Folder prepended to ``name`` to form ``Scanpath.image``.
    drop_bar_fixations : bool
        Drop fixations on the black side bars of the padded frame (:func:`bar_width`), counted as
        "on the padding bars". False (default): they are kept, being on the image file, and a
        warning says how many there are.

    Returns
    -------
    scanpaths : list of Scanpath
        ``id`` ``"<name stem>-<subject>"`` (made unique with ``-2``, ``-3``...), ``subject`` a
        string, ``duration_ms`` from ``T``, ``onset_ms`` left ``None``. Other record fields
        (``split``, ...) go to ``extra``.
    report : ConversionReport
        Records whose ``length``, ``X``, ``Y``, ``T`` disagree are dropped ("length mismatch"),
        as are fixations with a non-finite coordinate ("non-finite coordinate") or a non-finite
        or negative duration ("invalid time"), and scanpaths left empty ("empty after
        filtering").

    Raises
    ------
    ValueError
        If the input is not a list of records with the keys above.
    """
    return _convert_coco(
        records_or_path,
        kind="COCO-FreeView",
        width=width,
        height=height,
        drop_initial_fixation=drop_initial_fixation,
        off_image=off_image,
        image_prefix=image_prefix,
        drop_bar_fixations=drop_bar_fixations,
    )


def convert_coco_search18(
    records_or_path: str | os.PathLike | Iterable[Mapping[str, Any]],
    *,
    width: int = COCO_WIDTH,
    height: int = COCO_HEIGHT,
    drop_initial_fixation: bool = True,
    off_image: OffImagePolicy = "drop",
    image_prefix: str | None = None,
    drop_bar_fixations: bool = False,
) -> tuple[list[Scanpath], ConversionReport]:
    """Convert COCO-Search18 fixation records to scanpaths.

    As :func:`convert_coco_freeview` (same frame, parameters and report), with these
    differences: records also carry ``task`` (target category, required), ``condition``
    (``"present"``/``"absent"``) and ``bbox`` (target box ``[x, y, w, h]`` in the same pixel frame,
    not rescaled). ``task`` and ``condition`` become the scanpath's fields, ``bbox``, ``split``
    and other fields go to ``extra``; ``id`` is ``"<name stem>-<subject>-<task>"``. In
    ``image_prefix``, ``{task}`` and ``{condition}`` are replaced per record (the images are
    distributed in one folder per task).
    """
    return _convert_coco(
        records_or_path,
        kind="COCO-Search18",
        width=width,
        height=height,
        drop_initial_fixation=drop_initial_fixation,
        off_image=off_image,
        image_prefix=image_prefix,
        drop_bar_fixations=drop_bar_fixations,
    )


def convert_csv(
    path: str | os.PathLike,
    *,
    image_sizes: Mapping[str, tuple[int, int]] | None = None,
    image_root: str | os.PathLike | None = None,
    off_image: OffImagePolicy = "drop",
) -> tuple[list[Scanpath], ConversionReport]:
    """Convert a generic fixation CSV to scanpaths.

    Parameters
    ----------
    path : path-like
        CSV with header ``image,subject,x,y`` and optional ``duration_ms``, ``onset_ms``; one
        fixation per row, ``x``/``y`` in pixels of the image file (origin top-left), times in ms.
        Rows are grouped into one scanpath per ``(image, subject)``, in file order.
    image_sizes : Mapping of str to (width, height), optional
        Image size in pixels per ``image`` value, looked up as ``image_sizes[image]`` (so a
        ``defaultdict`` gives every image one size).
    image_root : path-like, optional
        Folder holding the images; used for sizes missing from ``image_sizes`` (only the image
        header is read).
    off_image : {"drop", "clip", "error"}
        As in :func:`convert_coco_freeview`.

    Returns
    -------
    scanpaths : list of Scanpath
        ``image`` as written in the CSV, ``id`` ``"<image stem>-<subject>"`` (made unique).
    report : ConversionReport
        Rows with a non-numeric or empty x/y or non-numeric time ("non-numeric value"), a
        non-finite coordinate ("non-finite coordinate"), a non-finite or negative time ("invalid
        time"), an empty ``image`` ("missing image") or off the image are dropped and counted,
        the first few with their line numbers.

    Raises
    ------
    ValueError
        If required columns are missing, or an image's size is neither in ``image_sizes`` nor
        readable under ``image_root`` (the message names the image).
    """
    _check_policy(off_image)
    path = Path(path)
    report = ConversionReport(source=str(path))
    groups: dict[tuple[str, str | None], list[tuple[Any, Any, Any, Any, str]]] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise ValueError(f"{path} is empty; expected a header row image,subject,x,y[,duration_ms].")
        reader.fieldnames = [name.strip() for name in reader.fieldnames]
        missing = [c for c in ("image", "subject", "x", "y") if c not in reader.fieldnames]
        if missing:
            raise ValueError(
                f"{path} has no column(s) {missing} (header: {reader.fieldnames}); the header must "
                "be image,subject,x,y with optional duration_ms, onset_ms."
            )
        ignored = [c for c in reader.fieldnames if c not in _CSV_COLUMNS]
        if ignored:
            report.notes.append(f"ignored columns: {ignored}")
        for row in reader:
            report.records_read += 1
            label = f"line {reader.line_num}"
            cells = {key: (row.get(key) or "").strip() for key in _CSV_COLUMNS}
            if not cells["image"]:
                report.drop("missing image", where=label)
                continue
            try:  # x and y are required; empty time cells mean "not recorded"
                values = [float(cells[k]) if k in ("x", "y") or cells[k] else None for k in _CSV_COLUMNS[2:]]
            except ValueError:
                report.drop("non-numeric value", where=label)
                continue
            key = (cells["image"], cells["subject"] or None)
            groups.setdefault(key, []).append((*values, label))

    sizes: dict[str, tuple[int, int]] = {}

    def size_of(image: str) -> tuple[int, int]:
        if image in sizes:
            return sizes[image]
        if image_sizes is not None:
            try:
                sizes[image] = tuple(image_sizes[image])
                return sizes[image]
            except KeyError:
                pass
        if image_root is not None:
            from PIL import Image, UnidentifiedImageError

            file = Path(image_root) / image
            try:
                with Image.open(file) as im:
                    sizes[image] = im.size
                return sizes[image]
            except FileNotFoundError:
                pass
            except UnidentifiedImageError:
                raise ValueError(f"{file} (image {image!r} in {path}) is not an image Pillow can read.") from None
        looked = [] if image_sizes is None else ["not in image_sizes"]
        looked += [] if image_root is None else [f"no file {Path(image_root) / image}"]
        raise ValueError(
            f"no size for image {image!r} in {path} ({'; '.join(looked) or 'no image_sizes or image_root given'}); "
            f"pass image_sizes={{{image!r}: (width, height)}} or image_root=<folder holding the images>."
        )

    scanpaths: list[Scanpath] = []
    seen: set[str] = set()
    for (image, subject), points in groups.items():
        width, height = size_of(image)
        base = "-".join(p for p in (PurePosixPath(image).stem, subject) if p is not None)
        scanpath = _build(
            points,
            width=width,
            height=height,
            off_image=off_image,
            report=report,
            where=f"image {image!r} subject {subject!r}",
            image=image,
            id=_unique(base, seen),
            subject=subject,
        )
        if scanpath is not None:
            scanpaths.append(scanpath)
    return scanpaths, report


#: Converters by the name ``metamergen convert`` takes.
CONVERTERS = {"coco-freeview": convert_coco_freeview, "coco-search18": convert_coco_search18}
