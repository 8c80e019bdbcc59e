"""The study manifest: the record of what a study folder holds, and the format of its rows.

Output folder
-------------
``images/<image_id>.png`` (written atomically) and ``manifest.jsonl``, one JSON object per finished
image with the columns of :data:`MANIFEST_COLUMNS`, appended after each batch. The manifest is the
record of what is done, but it is checked before it is trusted: re-running the same command skips an
image_id only if its row records exactly the inputs the plan gives that image (every column but
``metamergen_version``, see :func:`row_mismatch`) and its PNG decodes completely at the recorded
size (:func:`check_manifest`). Every other planned image is rendered again and its stale row
replaced (rows whose file was deleted, hand-edited rows, truncated PNGs), with one warning counting
the rows by reason. A changed setting changes the image_ids, so several studies may share a folder.

Several processes (``accelerate launch``, one per GPU) share a folder by writing one part each,
``manifest.part-<rank>.jsonl``; :func:`merge_manifest` folds the parts into ``manifest.jsonl`` at
the end, in the plan's order, so the folder is byte for byte the same whatever the process count
(and whatever interruptions happened on the way). Parts left by an interrupted multi-process run
count as done on the next run, with any process count. Outside multi-process runs, one process at
a time per folder.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metamergen.utils.io import atomic_write

__all__ = [
    "IMAGES_DIR",
    "MANIFEST_COLUMNS",
    "MANIFEST_NAME",
    "ManifestCheck",
    "append_rows",
    "check_manifest",
    "manifest_parts",
    "merge_manifest",
    "part_name",
    "read_manifest",
    "row_mismatch",
    "UNCHECKED_COLUMNS",
]


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
    "encoder_canvas",
    "encoder_patch",
    "noise",
)


#: Columns recorded but not compared with the plan on resume: an image made by another package
#: version is kept (the version is not part of the image_id either).
UNCHECKED_COLUMNS: tuple[str, ...] = ("metamergen_version",)

#: Reasons :func:`check_manifest` gives for not trusting a row (the input-mismatch reason names the column).
NO_IMAGE = "no image file"
UNREADABLE_IMAGE = "image file unreadable or truncated"
WRONG_SIZE = "image size differs from the row's"


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
            if (
                not isinstance(row, dict)
                or not isinstance(row.get("image_id"), str)
                or not isinstance(row.get("path"), str)
            ):
                raise ValueError("expected a JSON object with at least 'image_id' and 'path', both strings")
        except ValueError as err:
            if lineno == len(lines) and not text.endswith("\n"):
                warnings.warn(
                    f"{path}, line {lineno}: ignoring an incomplete last line (an interrupted write).",
                    UserWarning,
                    stacklevel=2,
                )
                continue
            raise ValueError(f"{path}, line {lineno}: not a manifest row ({err}). Fix or remove that line.") from None
        rows.append(row)
    return rows


def part_name(process_index: int) -> str:
    """File name of process ``process_index``'s manifest part."""
    return f"manifest.part-{int(process_index):03d}.jsonl"


def manifest_parts(out_dir: Path) -> list[Path]:
    """The manifest parts in ``out_dir``, in rank order."""
    return sorted(Path(out_dir).glob("manifest.part-*.jsonl"))


def _clean(path: Path, out_dir: Path) -> list[dict[str, Any]]:
    """Rows of one manifest file whose image exists; rewrites the file without the others."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = read_manifest(path)
    kept = [r for r in rows if (out_dir / r["path"]).is_file()]
    complete_tail = path.read_bytes().endswith(b"\n") or path.stat().st_size == 0
    if len(kept) != len(rows) or caught or not complete_tail:
        problems = [str(w.message) for w in caught]
        if len(rows) != len(kept):
            problems.append(f"{len(rows) - len(kept)} entries have no image file any more")
        warnings.warn(
            f"{path}: {'; '.join(problems) or 'no final newline'}. Rewriting it without them; "
            "those images will be generated again.",
            UserWarning,
            stacklevel=4,
        )
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return kept


def merge_manifest(
    out_dir: Path, order: Iterable[str] = (), *, expected: Mapping[str, Mapping[str, Any]] | None = None
) -> int:
    """Fold the parts into ``manifest.jsonl`` and sort it; returns the number of rows.

    Rows whose image_id is in ``order`` (a plan's image_ids) come last, in that order; the others
    (earlier studies in the same folder) first, in their existing order. Written atomically, then
    the parts are removed. Call it from one process, after every process has finished.

    Parameters
    ----------
    out_dir
        The study folder.
    order
        The plan's image_ids, in plan order.
    expected
        The plan's rows by image_id (``StudyJob.record()``). A row for one of these image_ids that
        records other inputs (:func:`row_mismatch`) is dropped: it is the stale row of an image that
        was rendered again, possibly by another process, whose new row is in a part.
    """
    out_dir = Path(out_dir)
    manifest = out_dir / MANIFEST_NAME
    plan = {} if expected is None else {k: _normalised(v) for k, v in expected.items()}
    rows: dict[str, dict[str, Any]] = {}
    for f in (manifest, *manifest_parts(out_dir)):
        if f.exists():
            for r in _clean(f, out_dir):
                if r["image_id"] in plan and row_mismatch(r, plan[r["image_id"]]) is not None:
                    continue
                rows.setdefault(r["image_id"], r)
    rank = {image_id: i for i, image_id in enumerate(order)}
    ordered = sorted(rows.values(), key=lambda r: (r["image_id"] in rank, rank.get(r["image_id"], 0)))
    text = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in ordered)
    atomic_write(manifest, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    for f in manifest_parts(out_dir):
        f.unlink()
    return len(ordered)


def _normalised(record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` as it reads back from a manifest line (tuples as lists, ints and floats as JSON gives them)."""
    return json.loads(json.dumps(dict(record), ensure_ascii=False, allow_nan=False))


def row_mismatch(row: Mapping[str, Any], expected: Mapping[str, Any]) -> str | None:
    """The first column in which a manifest row differs from the row the plan would write.

    Parameters
    ----------
    row
        A row read from a manifest.
    expected
        The plan's row for the same image_id (``StudyJob.record()``), as read back from JSON.

    Returns
    -------
    str or None
        The column name (a column the row lacks counts as different); ``None`` if every column
        but :data:`UNCHECKED_COLUMNS` is equal.
    """
    for column, value in expected.items():
        if column not in UNCHECKED_COLUMNS and (column not in row or row[column] != value):
            return column
    return None


def _image_problem(path: Path, width: Any, height: Any) -> str | None:
    """Why the PNG at ``path`` cannot be kept, or ``None``: it decodes completely at ``width`` x ``height``."""
    from metamergen.utils.images import ImageLoadError, load_image

    if not path.is_file():
        return NO_IMAGE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # only decodability matters here; a render has no alpha or EXIF
            size = load_image(path).size
    except (ImageLoadError, OSError):
        return UNREADABLE_IMAGE
    return None if size == (width, height) else WRONG_SIZE


@dataclass
class ManifestCheck:
    """What :func:`check_manifest` found.

    Attributes
    ----------
    done
        The checked image_ids with a trusted row (skip them).
    untrusted
        Reason -> number of checked image_ids whose rows were not trusted (render them again):
        :data:`NO_IMAGE`, :data:`UNREADABLE_IMAGE`, :data:`WRONG_SIZE` or ``"recorded <column>
        differs from the plan"``.
    notes
        Other repairs, one sentence each (an incomplete last line, rows of other studies whose image
        is gone), for the caller's warning.
    """

    done: set[str] = field(default_factory=set)
    untrusted: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)


def check_manifest(
    out_dir: Path, expected: Mapping[str, Mapping[str, Any]], *, rewrite: Collection[Path] | None = None
) -> ManifestCheck:
    """Which planned images ``out_dir`` really holds, and every stale row removed where that is safe.

    A row of an image_id in ``expected`` is trusted if it records the plan's inputs
    (:func:`row_mismatch`) and its PNG decodes completely (the project's loader,
    :func:`~metamergen.utils.images.load_image`) at the recorded size. Of several trusted rows for
    one image_id the first (manifest before parts, file order) counts. Rows of other image_ids
    (other studies, other processes' scenes) are kept if their file exists, unchecked otherwise.

    Parameters
    ----------
    out_dir
        The study folder (``manifest.jsonl`` and any ``manifest.part-*.jsonl`` are read).
    expected
        The rows the plan would write (``StudyJob.record()``) by image_id, for the image_ids to check.
    rewrite
        The manifest files this process may rewrite (atomically) without the untrusted, duplicate and
        orphaned rows and any incomplete last line; default every file. With several processes,
        pass only this process's own part: the others may be appending to theirs, and
        :func:`merge_manifest` (given ``expected``) drops the stale rows left in them.

    Returns
    -------
    ManifestCheck
    """
    out_dir = Path(out_dir)
    plan = {image_id: _normalised(record) for image_id, record in expected.items()}
    files = [f for f in (out_dir / MANIFEST_NAME, *manifest_parts(out_dir)) if f.exists()]
    writable = None if rewrite is None else {Path(f).resolve() for f in rewrite}
    check = ManifestCheck()
    reasons: dict[str, str] = {}
    images: dict[str, str | None] = {}  # path -> problem, so that a duplicated row decodes its PNG once
    repaired = orphans = 0
    for f in files:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows = read_manifest(f)
        data = f.read_bytes()
        cut_short = bool(caught) or (bool(data) and not data.endswith(b"\n"))  # an append would join two rows
        kept, gone = [], 0
        for row in rows:
            image_id = row["image_id"]
            if image_id not in plan:
                if (out_dir / row["path"]).is_file():
                    kept.append(row)
                else:
                    gone += 1
                continue
            if image_id in check.done:
                continue  # a duplicate of the trusted row: never written twice
            column = row_mismatch(row, plan[image_id])
            if column is not None:
                reasons[image_id] = f"recorded {column} differs from the plan"
                continue
            if row["path"] not in images:
                images[row["path"]] = _image_problem(out_dir / row["path"], row["width"], row["height"])
            if images[row["path"]] is not None:
                reasons[image_id] = images[row["path"]]
                continue
            check.done.add(image_id)
            kept.append(row)
        if (len(kept) != len(rows) or cut_short) and (writable is None or f.resolve() in writable):
            text = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in kept)
            atomic_write(f, lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8"))
            repaired += cut_short
            orphans += gone
    check.untrusted.update(reason for image_id, reason in reasons.items() if image_id not in check.done)
    if repaired:
        check.notes.append(f"repaired {repaired} manifest file(s) cut short by an interrupted write")
    if orphans:
        check.notes.append(f"dropped {orphans} row(s) of other studies whose image file is gone")
    return check


def append_rows(manifest: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows to the manifest as JSON lines, flushed and fsynced (a crash loses at most a line).

    One process at a time per folder: the manifest has no lock.
    """
    text = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows)
    with open(manifest, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
