"""Score a study: compare every generation with its original scene (``metamergen score``).

Reads the ``manifest.jsonl`` that :func:`metamergen.study.run_study` writes, scores each
generation against its scene with the metrics of :mod:`metamergen.evaluation.metrics`, and returns one row per
image: the manifest's columns followed by one column per metric, named by the metric's ``name``::

    rows = score_manifest("outputs/study/manifest.jsonl", ["psnr", "ssim", "clip", "dreamsim"])
    write_score_table(rows, "outputs/study/scores.csv")        # or .parquet

Each model is loaded once (when the metrics are built); each scene is read once and kept only while
its generations are scored (rows are processed scene by scene, in batches of ``batch_size`` pairs);
within a batch an original is embedded once. If a manifest lists an image_id twice, its last row
counts.

Columns: ``psnr`` (dB; ``inf`` for identical images), ``mse``, ``ssim``, ``color_hist``, ``gabor``,
``sobel``, ``clip`` (cosine), ``dreamsim`` (distance), ``dino`` (cosine); see each metric's class
for its range and direction (``Metric.higher_is_similar``). Then ``score_resolution``: the size each
metric compared the pair at, e.g. ``psnr/ssim 512x320; clip 224x224`` (the weight-free metrics at
the score resolution, :func:`~metamergen.evaluation.metrics.score_resolution`, ``score_size=512``
by default; the model metrics at their own square input).

A pair too small for a metric (SSIM's 11-px window) scores NaN there, and one
:class:`ScoreWarning` per metric counts them: one tiny image does not stop the study.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from metamergen.evaluation.metrics import METRICS, SCORE_SIZE, Metric, build_metrics
from metamergen.evaluation.registry import DEFAULT_METRICS, WEIGHT_FREE_METRICS
from metamergen.study.manifest import MANIFEST_COLUMNS, read_manifest
from metamergen.utils.io import atomic_write

__all__ = [
    "SCORE_RESOLUTION_COLUMN",
    "ScoreWarning",
    "build_score_metrics",
    "load_manifest_rows",
    "manifest_order",
    "resolution_label",
    "score_manifest",
    "write_score_table",
]

#: Column of the score table saying what size each metric compared the pair at.
SCORE_RESOLUTION_COLUMN = "score_resolution"


class ScoreWarning(UserWarning):
    """Some pairs could not be scored by a metric (scored NaN); the message counts them and says why."""


def resolution_label(metrics: Sequence[Metric], original_size: tuple[int, int]) -> str:
    """What ``metrics`` compare a pair at, for an original of ``original_size``: ``"psnr/ssim 512x320; clip 224x224"``.

    Parameters
    ----------
    metrics
        Built metrics, in column order (metrics that do not say, :meth:`Metric.input_size` ``None``, are left out).
    original_size
        ``(width, height)`` of the original, pixels.
    """
    groups: dict[tuple[int, int], list[str]] = {}
    for metric in metrics:
        size = metric.input_size(tuple(original_size))
        if size is not None:
            groups.setdefault(tuple(size), []).append(metric.name)
    return "; ".join(f"{'/'.join(names)} {w}x{h}" for (w, h), names in groups.items())


def _warn_too_small(metrics: Sequence[Metric], scores: Mapping[str, np.ndarray]) -> None:
    """One :class:`ScoreWarning` per windowed metric (SSIM) that scored some pairs NaN: too small for its window."""
    for metric in metrics:
        side = getattr(metric, "window_size", None)
        count = int(np.isnan(scores[metric.name]).sum()) if side is not None else 0
        if count:
            warnings.warn(
                f"{metric.name}: {count} of {len(scores[metric.name])} image(s) are smaller than {side}x{side} px "
                "at the score resolution and were scored NaN (the report leaves them out of its means and counts "
                "them); pass a larger --score-size, or leave the tiny images out of the study.",
                ScoreWarning,
                stacklevel=3,
            )


#: Metrics scored when none are named: the weight-free ones, CLIP and DreamSim (plus ``dino``
#: on the command line when a pipeline is given).

_MAX_LISTED = 5


def load_manifest_rows(manifest_path: str | os.PathLike) -> list[dict[str, Any]]:
    """The manifest's rows, one per image_id (the last row wins), checked for scoring.

    Raises
    ------
    FileNotFoundError
        No manifest, or generations/scenes it names are missing (the first few are listed).
    ValueError
        A malformed line (with its line number) or a row without ``scene``.
    """
    manifest = Path(manifest_path)
    if not manifest.is_file():
        raise FileNotFoundError(f"no manifest at {manifest}; run `metamergen generate` first.")
    rows: dict[str, dict[str, Any]] = {}
    for row in read_manifest(manifest):
        if not row.get("scene"):
            raise ValueError(f"{manifest}: row {row.get('image_id')!r} has no 'scene' (the original to compare with).")
        rows.pop(row["image_id"], None)
        rows[row["image_id"]] = row
    out = list(rows.values())
    base = manifest.parent
    missing = [str(base / r["path"]) for r in out if not (base / r["path"]).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} generation(s) listed in {manifest} are missing, e.g. {missing[:_MAX_LISTED]}; re-run the "
            "same `metamergen generate` command to regenerate them."
        )
    scenes = sorted({r["scene"] for r in out if not Path(r["scene"]).is_file()})
    if scenes:
        raise FileNotFoundError(
            f"{len(scenes)} scene image(s) named in {manifest} are missing, e.g. {scenes[:_MAX_LISTED]}; the manifest "
            "records each scene's path as it was resolved when generating."
        )
    return out


def build_score_metrics(
    names: Sequence[str] | None = None,
    *,
    device: str | None = None,
    batch_size: int = 16,
    clip_model: Any = "openai/clip-vit-large-patch14",
    dreamsim_cache: str | os.PathLike | None = None,
    dreamsim_type: str = "ensemble",
    pipe: Any = None,
    score_size: int | None = SCORE_SIZE,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Metric]:
    """Build the metrics for :func:`score_manifest`, each model loaded once.

    Parameters
    ----------
    names
        Keys of :data:`metamergen.evaluation.metrics.METRICS`; default :data:`DEFAULT_METRICS`.
    device
        Where model metrics run (default: CUDA if available, else CPU).
    batch_size
        Images per forward pass of the model metrics.
    clip_model
        Hub id, local folder or ``CLIPModel`` for ``clip``.
    dreamsim_cache, dreamsim_type
        DreamSim's weight folder and variant.
    pipe
        A MetamerGen pipeline whose DINOv2 ``dino`` uses.
    score_size
        Longer side (pixels) of the weight-free metrics' score resolution
        (:func:`~metamergen.evaluation.metrics.score_resolution`); ``None``: the original's full size.
    options
        Extra constructor arguments per metric name (override the above), e.g.
        ``{"dreamsim": {"model": stand_in, "preprocess": fn}}``.

    Raises
    ------
    ValueError
        An unknown or repeated name (valid names listed), checked before any model loads.
    RuntimeError, ImportError
        A metric that cannot load: ``"Could not load metric '<name>': "`` followed by the metric
        module's message (what to install, where to put weights).
    """
    import torch

    names = list(DEFAULT_METRICS if names is None else names)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"Unknown metric name(s) {unknown}; valid names: {', '.join(METRICS)}.")
    if len(set(names)) != len(names):
        raise ValueError(f"A metric is named twice: {names}.")
    if not names:
        raise ValueError("No metrics to score.")
    device_given = device is not None
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    defaults: dict[str, dict[str, Any]] = {
        "clip": {"model": clip_model, "device": device, "batch_size": batch_size},
        "dreamsim": {
            "device": device,
            "cache_dir": dreamsim_cache,
            "dreamsim_type": dreamsim_type,
            "batch_size": batch_size,
        },
        "dino": {"pipe": pipe, "batch_size": batch_size},
        **{name: {"score_size": score_size} for name in WEIGHT_FREE_METRICS},
    }
    options = dict(options or {})
    extra = sorted(set(options) - set(names))
    if extra:
        raise ValueError(f"Options given for metric(s) {extra}, which are not among {names}.")
    built = []
    for name in names:
        kwargs = dict(defaults.get(name, {}), **options.get(name, {}))
        if name == "dino" and kwargs.get("pipe") is None and "image_encoder" not in kwargs:
            raise ValueError(
                "dino compares DINOv2 embeddings with the pipeline's own encoder: pass the pipeline "
                "(--model <saved pipeline> or --tiny on the command line, pipe=... in Python)."
            )
        if name == "dino" and kwargs.get("pipe") is None:
            kwargs.pop("pipe", None)
        if (
            name == "clip"
            and isinstance(kwargs.get("model"), torch.nn.Module)
            and not device_given
            and "device" not in options.get(name, {})
        ):
            kwargs["device"] = None  # keep an instance where it is
        try:
            built.extend(build_metrics([name], **{name: kwargs} if kwargs else {}))
        except (ImportError, RuntimeError, OSError) as err:
            raise type(err)(f"Could not load metric {name!r}: {err}") from err
    return built


def score_manifest(
    manifest_path: str | os.PathLike,
    metrics: Sequence[str | Metric] | None = None,
    *,
    batch_size: int = 16,
    progress: bool = False,
    process_index: int = 0,
    num_processes: int = 1,
    **metric_options: Any,
) -> list[dict[str, Any]]:
    """Score every generation in a manifest against its original scene.

    Parameters
    ----------
    manifest_path
        ``manifest.jsonl`` of a study; generation paths are relative to its folder.
    metrics
        Metric names and/or built :class:`~metamergen.evaluation.metrics.Metric` objects, in column order;
        names are built with :func:`build_score_metrics` (``**metric_options`` go there). Default
        :data:`DEFAULT_METRICS`.
    batch_size
        Pairs per metric call (and per model forward pass for names built here).
    progress
        Show a tqdm bar over images.
    process_index, num_processes
        This process's share of a multi-process run: the manifest's scenes, sorted, dealt out
        round-robin (each original is loaded by one process). Gather the processes' rows and sort
        them with :func:`manifest_order`.

    Returns
    -------
    list of dict
        One row per image_id (of this process's share), in manifest order: the manifest row, then
        ``{metric.name: float}``, then ``score_resolution`` (:func:`resolution_label`).

    Warns
    -----
    ScoreWarning
        Once per metric that scored some pairs NaN because they were too small (counted).
    """
    from tqdm.auto import tqdm

    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    rows = load_manifest_rows(manifest_path)
    metrics = list(DEFAULT_METRICS if metrics is None else metrics)
    names = [m for m in metrics if isinstance(m, str)]
    built = iter(build_score_metrics(names, batch_size=batch_size, **metric_options) if names else [])
    objects = [next(built) if isinstance(m, str) else m for m in metrics]
    columns = [m.name for m in objects]
    if len(set(columns)) != len(columns):
        raise ValueError(f"Two metrics share a column name: {columns}.")
    clash = sorted(set(columns) & set(rows[0] if rows else {}))
    if clash:
        raise ValueError(f"Metric column(s) {clash} clash with manifest columns.")

    if not 0 <= int(process_index) < int(num_processes):
        raise ValueError(f"process_index must be in [0, {num_processes}), got {process_index}.")
    if int(num_processes) > 1:
        scenes = sorted({r["scene"] for r in rows})
        mine = set(scenes[int(process_index) :: int(num_processes)])
        rows = [r for r in rows if r["scene"] in mine]
    base = Path(manifest_path).parent
    order = sorted(range(len(rows)), key=lambda i: rows[i]["scene"])  # stable: manifest order within a scene
    last_use = {rows[i]["scene"]: pos for pos, i in enumerate(order)}
    originals: dict[str, Image.Image] = {}
    scores = {c: np.full(len(rows), np.nan) for c in columns}
    resolution = [""] * len(rows)
    with tqdm(total=len(rows), unit="image", disable=not progress, desc="score") as bar:
        for start in range(0, len(order), int(batch_size)):
            chunk = order[start : start + int(batch_size)]
            pairs_o, pairs_g = [], []
            for i in chunk:
                scene = rows[i]["scene"]
                if scene not in originals:
                    originals[scene] = _load_rgb(Path(scene))
                pairs_o.append(originals[scene])
                pairs_g.append(_load_rgb(base / rows[i]["path"]))
                resolution[i] = resolution_label(objects, originals[scene].size)
            for metric in objects:
                scores[metric.name][chunk] = metric(pairs_o, pairs_g)
            end = start + len(chunk)
            for scene in [s for s in originals if last_use[s] < end]:
                del originals[scene]  # every generation of this scene is scored
            bar.update(len(chunk))
    _warn_too_small(objects, scores)
    return [
        dict(row, **{c: float(scores[c][i]) for c in columns}, **{SCORE_RESOLUTION_COLUMN: resolution[i]})
        for i, row in enumerate(rows)
    ]


def manifest_order(manifest_path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` (score rows gathered from several processes) sorted into the manifest's order."""
    rank = {r["image_id"]: i for i, r in enumerate(load_manifest_rows(manifest_path))}
    return sorted((dict(r) for r in rows), key=lambda r: rank[r["image_id"]])


def _load_rgb(path: Path) -> Image.Image:
    from metamergen.utils.images import load_image

    return load_image(path)  # its ImageLoadError is a ValueError naming the file


def _table_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    columns = [c for c in MANIFEST_COLUMNS if any(c in r for r in rows)] if rows else list(MANIFEST_COLUMNS)
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    return columns


def _flat(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def write_score_table(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, format: str | None = None) -> Path:
    """Write score rows as CSV or Parquet, atomically.

    Columns: the manifest's (:data:`~metamergen.study.MANIFEST_COLUMNS` order), any other keys,
    then the metrics, in row order. ``fixations`` (and any other list) becomes a JSON string.
    In CSV, ``None`` is an empty field and infinite PSNR is ``inf``.

    Parameters
    ----------
    format
        ``"csv"`` or ``"parquet"``; default from the suffix (``.parquet`` -> Parquet, else CSV).
        Parquet needs ``pyarrow`` (installed with ``datasets``).
    """
    path = Path(path)
    fmt = format or ("parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv")
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"format must be 'csv' or 'parquet', got {format!r}.")
    columns = _table_columns(rows)
    flat = [{c: _flat(r.get(c)) for c in columns} for r in rows]
    if fmt == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as err:
            raise ImportError("Parquet output needs pyarrow: pip install pyarrow (or write CSV).") from err
        table = pa.Table.from_pylist(flat) if flat else pa.table({c: [] for c in columns})
        return atomic_write(path, lambda tmp: pq.write_table(table, tmp))

    import csv

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for row in flat:
                writer.writerow({k: _csv_value(v) for k, v in row.items()})

    return atomic_write(path, write)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    return value


# --------------------------------------------------------------------------- command line
