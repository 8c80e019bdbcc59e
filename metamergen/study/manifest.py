"""The study manifest: the record of what a study folder holds, and the format of its rows.

Output folder
-------------
``images/<image_id>.png`` (written atomically) and ``manifest.jsonl``, one JSON object per finished
image with the columns of :data:`MANIFEST_COLUMNS`, appended after each batch. The manifest is the
record of what is done: re-running the same command skips every image_id that is in the manifest and
whose file exists, and regenerates the rest (entries whose file was deleted are removed from the
manifest first). A changed setting changes the image_ids, so several studies may share a folder.

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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from metamergen.utils.io import atomic_write

__all__ = [
    "IMAGES_DIR",
    "MANIFEST_COLUMNS",
    "MANIFEST_NAME",
    "append_rows",
    "completed_image_ids",
    "manifest_parts",
    "merge_manifest",
    "part_name",
    "read_manifest",
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


def completed_image_ids(out_dir: Path) -> set[str]:
    """image_ids finished in ``out_dir``: in the manifest (or a part) and with their file present.
    Rows whose file is gone (and an incomplete last line) are removed from their file, atomically."""
    out_dir = Path(out_dir)
    files = [f for f in (out_dir / MANIFEST_NAME, *manifest_parts(out_dir)) if f.exists()]
    return {r["image_id"] for f in files for r in _clean(f, out_dir)}


def merge_manifest(out_dir: Path, order: Iterable[str] = ()) -> int:
    """Fold the parts into ``manifest.jsonl`` and sort it; returns the number of rows.

    Rows whose image_id is in ``order`` (a plan's image_ids) come last, in that order; the others
    (earlier studies in the same folder) first, in their existing order. Written atomically, then
    the parts are removed. Call it from one process, after every process has finished.
    """
    out_dir = Path(out_dir)
    manifest = out_dir / MANIFEST_NAME
    rows: dict[str, dict[str, Any]] = {}
    for f in (manifest, *manifest_parts(out_dir)):
        if f.exists():
            for r in _clean(f, out_dir):
                rows.setdefault(r["image_id"], r)
    rank = {image_id: i for i, image_id in enumerate(order)}
    ordered = sorted(rows.values(), key=lambda r: (r["image_id"] in rank, rank.get(r["image_id"], 0)))
    text = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in ordered)
    atomic_write(manifest, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    for f in manifest_parts(out_dir):
        f.unlink()
    return len(ordered)


def append_rows(manifest: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows to the manifest as JSON lines, flushed and fsynced (a crash loses at most a line).

    One process at a time per folder: the manifest has no lock.
    """
    text = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows)
    with open(manifest, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
