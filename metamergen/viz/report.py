"""``metamergen report``: figures, contact sheets and an HTML index from a score table.

Input is the table ``metamergen score`` writes (CSV or Parquet): one row per generated image, the
manifest columns (``image_id``, ``path``, ``scene``, ``scene_id``, ``scanpath_id``, ``prefix``,
``fixations``, ``fixation_source``, ``condition``, ``peripheral_blur``, ...) plus any subset of the
metric columns ``psnr``, ``mse``, ``ssim``, ``color_hist``, ``gabor``, ``sobel``, ``clip``,
``dreamsim``, ``dino``. Output (the whole folder is built next to ``out`` under a temporary
name and renamed into place at the end, so ``out`` holds either the complete new report or what
it held before, never a mix; as the folder is replaced whole, an existing ``out`` must be an
earlier report or empty, and one holding other files is refused)::

    report/
      index.html                 links everything (relative links) + a table of mean scores
      summary.csv                mean, CI, counts per metric x condition x source x prefix
      baselines_summary.csv      the same per baseline (when ``baselines.csv`` is next to the scores)
      figures/<metric>.png       score vs number of fixations, one line per condition x source
      sheets/<scene>_<scanpath>_<condition>_<source>.png
                                 per prefix N: scene + first N fixations, the model-free foveated
                                 input, the hypotheses captioned with their scores

Statistics (stated in the figures and the index page): a cell's estimate is the **mean of unit
means**: scores are first averaged within each resampling unit (by default the scene, so every
scene weighs the same however many scanpaths and seeds it has), then across units. The 95 %
interval is a percentile bootstrap over those units (``n_boot`` resamples with replacement, seeded
per cell so a cell's interval does not depend on which other cells or metrics are present). With
fewer than two units a cell has no interval.

Non-finite scores (NaN or an empty field: no score for that image; ``+inf``/``-inf``: e.g. the PSNR
of an image identical to its scene) cannot enter a mean. They are **excluded, and counted**: a
cell's mean, interval, ``n_units`` and ``n_images`` rest on its finite scores only, and
``summary.csv`` says how many were left out (``n_rows`` scores in the cell, ``n_nonfinite`` of them
excluded, ``n_inf`` of those infinite); the index page states the policy, puts "k of n
non-finite, excluded" in every cell concerned and totals the exclusions per metric, and
``metamergen report`` prints one warning line with those totals. A cell whose scores are all
non-finite keeps its row (mean empty). Exclusion biases a mean when the excluded scores are not
typical ones: an infinite PSNR is a perfect reconstruction, so PSNR's mean over the rest
understates similarity (MSE, 0 there, keeps those images).

The foveated panel is computed without any model weights (:func:`metamergen.viz.figures.foveated_input`),
following the encoder that made the row: squash fit to the canvas and patch size the manifest
records (``encoder_canvas``, ``encoder_patch``; tables from before those columns fall back to the
paper's 448 px and 14 px, and the caption says so), the down/up periphery at the row's
``peripheral_blur``, sharp patches where :func:`~metamergen.foveation.token_mask` is set, resized
back to the scene's size. It shows the input of the row's ``condition``: ``peripheral`` rows have no sharp
patches, ``foveal`` rows show the sharp patches over uniform grey (the peripheral stream was off).
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from PIL import Image

from metamergen import defaults
from metamergen.evaluation.baselines import BASELINES, BASELINES_NAME
from metamergen.evaluation.registry import METRIC_INFO, MetricInfo, metric_direction, metric_info
from metamergen.evaluation.statistics import bootstrap_ci, derive_cell_seed, unit_means
from metamergen.evaluation.tables import TableError, pandas, read_table
from metamergen.utils.io import atomic_write, replace_dir, temporary_target
from metamergen.utils.plotting import figure_classes

__all__ = [
    "CONDITIONS",
    "COUNT_COLUMNS",
    "ReportError",
    "ReportResult",
    "SOURCES",
    "cell_statistics",
    "describe_excluded",
    "excluded_scores",
    "metric_columns",
    "read_table",
    "summarize_baselines",
    "summarize_scores",
    "write_report",
]


CONDITIONS: tuple[str, ...] = ("both", "peripheral", "foveal")
SOURCES: tuple[str, ...] = ("viewer", "random")
_CONDITION_COLORS = {"both": "#1b6ca8", "peripheral": "#d1495b", "foveal": "#2e933c"}
_SOURCE_STYLES = {"viewer": ("-", "o"), "random": ("--", "s")}
_EXTRA_COLORS = ("#7b4fa0", "#e08e0b", "#555555", "#0f9d9a")
_EXTRA_STYLES = ((":", "^"), ("-.", "D"), ((0, (1, 3)), "v"))
_BASELINE_STYLES = ("--", ":", "-.")

#: Columns needed for the figures and summary table.
FIGURE_COLUMNS: tuple[str, ...] = ("image_id", "scene_id", "scanpath_id", "prefix", "condition", "fixation_source")
#: Extra columns needed for the contact sheets.
SHEET_COLUMNS: tuple[str, ...] = ("path", "scene", "fixations", "peripheral_blur")
UNITS: dict[str, tuple[str, ...]] = {
    "scene": ("scene_id",),
    "scanpath": ("scene_id", "scanpath_id"),
    "image": ("image_id",),
}
_ALL = "all"


class ReportError(TableError):
    """A score table the report cannot use (missing columns, files, bad values)."""


# ------------------------------------------------------------------------------------ table


def metric_columns(table, requested: Sequence[str] | None = None) -> list[str]:
    """The metric columns to use, in :data:`METRIC_INFO` order (requested ones in the given order).

    Without ``requested``: every known metric column that is present and has at least one number.
    With ``requested``: each must be a column; names outside :data:`METRIC_INFO` are allowed if
    numeric (labelled without a direction).
    """
    pd = pandas()
    if requested:
        missing = [m for m in requested if m not in table.columns]
        if missing:
            present = [m for m in METRIC_INFO if m in table.columns]
            raise ReportError(
                f"Metric column(s) {missing} are not in the score table; metric columns present: {present or 'none'}."
            )
        out = []
        for m in requested:
            if not pd.api.types.is_numeric_dtype(table[m]):
                raise ReportError(f"Metric column {m!r} is not numeric (dtype {table[m].dtype}).")
            out.append(m)
        return out
    return [m for m in METRIC_INFO if m in table.columns and pd.to_numeric(table[m], errors="coerce").notna().any()]


def _info(metric: str) -> MetricInfo:
    return metric_info(metric)


def _direction(metric: str) -> str:
    return metric_direction(metric)


def _check_columns(table, columns: Iterable[str], source: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ReportError(
            f"The score table {source} lacks the required column(s) {missing}. It should be the table "
            f"`metamergen score` writes (manifest columns plus metric columns); columns found: {list(table.columns)}."
        )


def _prefix_labels(table) -> list[str]:
    """``prefix`` as labels: the integer N, or ``"all"`` where empty (whole scanpath)."""
    pd = pandas()
    raw = table["prefix"]
    num = pd.to_numeric(raw, errors="coerce")
    blank = raw.isna() | raw.astype(str).str.strip().isin(["", "nan", "None", "<NA>"])
    bad = (~blank) & (num.isna() | (num != num.round()))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ReportError(f"Column 'prefix' must hold an integer N or be empty; row {i} has {raw.iloc[i]!r}.")
    return [_ALL if b else str(int(v)) for b, v in zip(blank, num)]


def _prefix_order(label: str) -> float:
    return math.inf if label == _ALL else float(label)


def _clean(table):
    """Copy of the table with string keys and a ``_prefix`` label column."""
    t = table.copy()
    for col in ("scene_id", "scanpath_id", "image_id", "condition", "fixation_source"):
        t[col] = t[col].astype(str)
    t["_prefix"] = _prefix_labels(t)
    return t


# --------------------------------------------------------------------------------- statistics


#: Summary columns that say what a cell's statistics rest on (module docstring, "Non-finite scores").
COUNT_COLUMNS: tuple[str, ...] = ("n_units", "n_images", "n_rows", "n_nonfinite", "n_inf")


def cell_statistics(
    values: Sequence[float],
    units: Sequence[Any],
    *,
    n_boot: int = 10000,
    confidence: float = 0.95,
    seed: int | Sequence[int] = 0,
) -> dict[str, Any]:
    """The one computation behind every summary row: statistics over the finite scores, plus counts.

    Parameters
    ----------
    values
        The cell's scores, one per image (NaN, empty and infinite values allowed).
    units
        The resampling unit of each score (e.g. its scene id).
    n_boot, confidence, seed
        Bootstrap resamples, interval level, seed of this cell.

    Returns
    -------
    dict
        ``mean`` (mean of unit means over the finite scores; NaN if there are none), ``ci_low``,
        ``ci_high``, ``n_units`` and ``n_images`` (units and scores that entered), ``n_rows`` (all
        scores of the cell), ``n_nonfinite`` (scores excluded: NaN, empty or infinite) and
        ``n_inf`` (of those, the infinite ones).
    """
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    means = unit_means(v, units)  # keeps the finite scores only
    mean, low, high = bootstrap_ci(means, n_boot=n_boot, confidence=confidence, seed=seed)
    return dict(
        mean=mean,
        ci_low=low,
        ci_high=high,
        n_units=len(means),
        n_images=int(finite.sum()),
        n_rows=len(v),
        n_nonfinite=int((~finite).sum()),
        n_inf=int(np.isinf(v).sum()),
    )


def excluded_scores(summary) -> dict[str, dict[str, int]]:
    """Per metric, how many scores of a summary (:func:`summarize_scores`, :func:`summarize_baselines`)
    were left out of its means as non-finite.

    Returns
    -------
    dict
        ``{metric: {"n_nonfinite": k, "n_rows": n, "n_inf": j}}`` for the metrics with ``k > 0``,
        in the summary's metric order.
    """
    out: dict[str, dict[str, int]] = {}
    if not len(summary) or "n_nonfinite" not in summary.columns:
        return out
    for metric in dict.fromkeys(summary["metric"]):
        sel = summary[summary["metric"] == metric]
        k = int(sel["n_nonfinite"].sum())
        if k:
            out[metric] = {"n_nonfinite": k, "n_rows": int(sel["n_rows"].sum()), "n_inf": int(sel["n_inf"].sum())}
    return out


def describe_excluded(excluded: dict[str, dict[str, int]]) -> str:
    """``"psnr 4 of 32 (4 infinite), clip 2 of 32 (2 NaN or empty)"`` for :func:`excluded_scores`."""
    parts = []
    for metric, c in excluded.items():
        kinds = []
        if c["n_inf"]:
            kinds.append(f"{c['n_inf']} infinite")
        if c["n_nonfinite"] - c["n_inf"]:
            kinds.append(f"{c['n_nonfinite'] - c['n_inf']} NaN or empty")
        parts.append(f"{metric} {c['n_nonfinite']} of {c['n_rows']} ({', '.join(kinds)})")
    return ", ".join(parts)


def summarize_scores(
    table,
    metrics: Sequence[str],
    *,
    unit: str = "scene",
    n_boot: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
):
    """Mean score and bootstrap CI per metric x condition x fixation source x prefix.

    Non-finite scores (NaN, empty, +-inf) are excluded from every statistic and counted (module
    docstring, "Non-finite scores"); a cell whose scores are all non-finite keeps its row with an
    empty mean.

    Parameters
    ----------
    table
        The score table (pandas DataFrame) with at least :data:`FIGURE_COLUMNS` and ``metrics``.
    metrics
        Metric columns to summarise.
    unit
        Resampling unit: ``"scene"`` (default), ``"scanpath"`` (scene id + scanpath id) or
        ``"image"`` (every row independent, which ignores that hypotheses of one scanpath and
        scanpaths of one scene are correlated).
    n_boot, confidence, seed
        Bootstrap resamples, interval level, base seed.

    Returns
    -------
    pandas.DataFrame
        Columns ``metric, condition, fixation_source, prefix`` (label: N or ``"all"``), ``mean,
        ci_low, ci_high``, :data:`COUNT_COLUMNS` and ``unit``; sorted by metric, condition,
        source, prefix.
    """
    pd = pandas()
    if unit not in UNITS:
        raise ValueError(f"Unknown resampling unit {unit!r}; choose one of {list(UNITS)}.")
    _check_columns(table, FIGURE_COLUMNS, "given")
    t = table if "_prefix" in table.columns else _clean(table)
    unit_key = t[list(UNITS[unit])].astype(str).agg("\x1f".join, axis=1)
    rows = []
    for metric in metrics:
        values = pd.to_numeric(t[metric], errors="coerce")
        for (cond, src, pre), idx in t.groupby(["condition", "fixation_source", "_prefix"], sort=False).groups.items():
            stats = cell_statistics(
                values.loc[idx].to_numpy(dtype=np.float64),
                unit_key.loc[idx].to_numpy(),
                n_boot=n_boot,
                confidence=confidence,
                seed=derive_cell_seed(seed, (metric, cond, src, pre)),
            )
            rows.append(dict(metric=metric, condition=cond, fixation_source=src, prefix=pre, **stats, unit=unit))
    columns = ["metric", "condition", "fixation_source", "prefix", "mean", "ci_low", "ci_high", *COUNT_COLUMNS, "unit"]
    out = pd.DataFrame(rows, columns=columns)
    if len(out):
        order = {m: i for i, m in enumerate(metrics)}
        out = _sorted_cells(out.assign(_m=out["metric"].map(order)), ["_m"]).drop(columns="_m")
    return out


def summarize_baselines(
    baselines,
    metrics: Sequence[str],
    *,
    n_boot: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
):
    """Mean score and bootstrap CI over scenes of each baseline (``metamergen score``'s ``baselines.csv``).

    Non-finite scores are excluded and counted as in :func:`summarize_scores`.

    Returns
    -------
    pandas.DataFrame
        Columns ``metric, baseline, label, mean, ci_low, ci_high``, :data:`COUNT_COLUMNS`; one row
        per metric and baseline (the periphery baseline once per ``peripheral_blur`` in the table).
    """
    pd = pandas()
    _check_columns(baselines, ("baseline", "scene_id"), "the baseline table")
    rows = []
    blur = pd.to_numeric(baselines.get("peripheral_blur"), errors="coerce") if "peripheral_blur" in baselines else None
    keys = baselines.assign(_blur=blur if blur is not None else np.nan)
    for (kind, s), idx in keys.groupby(["baseline", "_blur"], sort=False, dropna=False).groups.items():
        label = BASELINES.get(kind, kind) + (f", s = {s:g}" if kind == "periphery" and math.isfinite(s) else "")
        for metric in metrics:
            if metric not in baselines.columns:
                continue
            stats = cell_statistics(
                pd.to_numeric(baselines.loc[idx, metric], errors="coerce").to_numpy(dtype=np.float64),
                baselines.loc[idx, "scene_id"].astype(str).to_numpy(),
                n_boot=n_boot,
                confidence=confidence,
                seed=derive_cell_seed(seed, (metric, "baseline", label)),
            )
            rows.append(dict(metric=metric, baseline=kind, label=label, **stats))
    columns = ["metric", "baseline", "label", "mean", "ci_low", "ci_high", *COUNT_COLUMNS]
    return pd.DataFrame(rows, columns=columns)


def _sorted_cells(df, first: Sequence[str] = ()):
    """Sort by condition (both, peripheral, foveal, others), source (viewer, random, others), prefix."""
    ranks = df.assign(
        _c=[_condition_rank(c) for c in df["condition"]],
        _s=[_source_rank(s) for s in df["fixation_source"]],
        _p=[_prefix_order(p) for p in df["prefix"]],
    )
    ranks["_c0"], ranks["_c1"] = [r[0] for r in ranks["_c"]], [r[1] for r in ranks["_c"]]
    ranks["_s0"], ranks["_s1"] = [r[0] for r in ranks["_s"]], [r[1] for r in ranks["_s"]]
    cols = [*first, "_c0", "_c1", "_s0", "_s1", "_p"]
    return (
        ranks.sort_values(cols, kind="stable")
        .drop(columns=["_c", "_s", "_p", "_c0", "_c1", "_s0", "_s1"])
        .reset_index(drop=True)
    )


def _condition_rank(c: str) -> tuple[int, str]:
    return (CONDITIONS.index(c), "") if c in CONDITIONS else (len(CONDITIONS), c)


def _source_rank(s: str) -> tuple[int, str]:
    return (SOURCES.index(s), "") if s in SOURCES else (len(SOURCES), s)


# ------------------------------------------------------------------------------------ figures


def _matplotlib():
    try:
        return figure_classes()
    except ImportError as err:
        raise ReportError(str(err)) from err


def _styles(values: Sequence[str], known: dict, extra: Sequence) -> dict:
    out, k = {}, 0
    for v in values:
        if v in known:
            out[v] = known[v]
        else:
            out[v] = extra[k % len(extra)]
            k += 1
    return out


UNIT_WORDS = {"scene": "scenes", "scanpath": "scanpaths", "image": "images"}


def plot_metric(summary, metric: str, path: str | Path, *, confidence: float = 0.95, baselines=None) -> Path:
    """Draw one metric's score vs number of fixations (from :func:`summarize_scores`) to a PNG.

    ``baselines`` (from :func:`summarize_baselines`) are drawn as grey horizontal lines with their
    intervals as bands, so that an effect can be read against what a render must beat.
    """
    Figure, FigureCanvasAgg = _matplotlib()
    s = summary[summary["metric"] == metric]
    if not len(s):
        raise ReportError(f"No summary rows for metric {metric!r}.")
    prefixes = sorted(s["prefix"].unique(), key=_prefix_order)
    xpos = {p: i for i, p in enumerate(prefixes)}
    conditions = sorted(s["condition"].unique(), key=_condition_rank)
    sources = sorted(s["fixation_source"].unique(), key=_source_rank)
    colors = _styles(conditions, _CONDITION_COLORS, _EXTRA_COLORS)
    styles = _styles(sources, _SOURCE_STYLES, _EXTRA_STYLES)
    lines = [(c, src) for c in conditions for src in sources]
    width = 0.25 if len(prefixes) > 1 else 0.15
    fig = Figure(figsize=(6.4, 5.6), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for k, (cond, src) in enumerate(lines):
        d = s[(s["condition"] == cond) & (s["fixation_source"] == src)]
        if not len(d):
            continue
        d = d.sort_values("prefix", key=lambda x: x.map(_prefix_order))
        dodge = (k - (len(lines) - 1) / 2) * width / max(1, len(lines) - 1) if len(lines) > 1 else 0.0
        x = np.array([xpos[p] for p in d["prefix"]], dtype=float) + dodge
        m = d["mean"].to_numpy(float)
        lo = np.nan_to_num(m - d["ci_low"].to_numpy(float), nan=0.0)
        hi = np.nan_to_num(d["ci_high"].to_numpy(float) - m, nan=0.0)
        ls, marker = styles[src]
        ax.errorbar(
            x,
            m,
            yerr=[lo, hi],
            color=colors[cond],
            linestyle=ls,
            marker=marker,
            markersize=4.5,
            capsize=3,
            linewidth=1.5,
            label=f"{cond} · {src} fixations",
        )
    if baselines is not None and len(baselines):
        drawn = baselines[(baselines["metric"] == metric) & np.isfinite(baselines["mean"].astype(float))]
        for j, (_, b) in enumerate(drawn.iterrows()):
            style = _BASELINE_STYLES[j % len(_BASELINE_STYLES)]
            ax.axhline(b["mean"], color="#666666", linestyle=style, linewidth=1.2, label=f"baseline: {b['label']}")
            if math.isfinite(b["ci_low"]):
                ax.axhspan(b["ci_low"], b["ci_high"], color="#999999", alpha=0.15, linewidth=0)
    info = _info(metric)
    unit = s["unit"].iloc[0]
    n_units = int(s["n_units"].max())
    ax.set_xticks(range(len(prefixes)), [("all" if p == _ALL else p) for p in prefixes])
    ax.set_xlabel("number of fixations N (first N of the scanpath)")
    ax.set_ylabel(f"{info.label}\n({_direction(metric)})")
    ax.set_title(
        f"{info.label} vs fixations: mean ± {confidence:.0%} CI\n"
        f"(bootstrap over {UNIT_WORDS.get(unit, unit)}, up to n = {n_units} per point)",
        fontsize=9,
    )
    ax.grid(True, alpha=0.3)
    # below the axes, so that no line or band (the baselines sit low or high) is hidden behind it
    ax.legend(fontsize=7, frameon=False, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    fig.tight_layout()
    return atomic_write(path, lambda p: fig.savefig(p, format="png"))


# -------------------------------------------------------------------------------- foveated view


# ------------------------------------------------------------------------------------- sheets


def _fmt(v: float) -> str:
    if math.isinf(v):  # a score may be infinite (PSNR of identical images); say so rather than hide it
        return "inf" if v > 0 else "-inf"
    if not math.isfinite(v):
        return "–"
    if v == 0 or 0.01 <= abs(v) < 100:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _caption(row, metrics: Sequence[str], max_metrics: int = 4) -> str:
    parts = []
    for m in metrics[:max_metrics]:
        try:
            v = float(row[m])
        except (TypeError, ValueError):
            continue
        if not math.isnan(v):
            parts.append(f"{_info(m).short} {_fmt(v)}")
    return " · ".join(parts) or "no scores"


def _parse_fixations(text: Any, where: str) -> np.ndarray:
    if text is None or (isinstance(text, float) and math.isnan(text)) or str(text).strip() == "":
        return np.zeros((0, 2))
    try:
        arr = np.asarray(json.loads(str(text)) if not isinstance(text, (list, np.ndarray)) else text, dtype=float)
    except (ValueError, TypeError) as err:
        raise ReportError(
            f"Column 'fixations' of {where} is not a JSON list of [x, y]: {str(text)[:80]!r} ({err})."
        ) from err
    if arr.size == 0:
        return np.zeros((0, 2))
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ReportError(f"Column 'fixations' of {where} must be [[x, y], ...], got shape {arr.shape}.")
    return arr[:, :2]


def _resolve(root: Path, p: Any) -> Path:
    path = Path(str(p))
    return path if path.is_absolute() else root / path


def _check_files(t, root: Path) -> None:
    missing = []
    for i, (img, path, scene) in enumerate(zip(t["image_id"], t["path"], t["scene"])):
        for col, p in (("path", path), ("scene", scene)):
            if p is None or (isinstance(p, float) and math.isnan(p)) or str(p).strip() == "":
                missing.append(f"row {i} (image_id {img}): column {col!r} is empty")
            elif not _resolve(root, p).is_file():
                missing.append(f"row {i} (image_id {img}): {col} {p!r} -> {_resolve(root, p)}")
    if missing:
        unique = list(dict.fromkeys(missing))
        shown = "\n  ".join(unique[:10])
        more = f"\n  ... and {len(unique) - 10} more" if len(unique) > 10 else ""
        raise ReportError(
            f"{len(unique)} image file(s) named in the score table are missing (relative paths resolved against "
            f"--root {root}):\n  {shown}{more}\nPass --root <folder of the manifest> if the table was moved, "
            "or --no-sheets to build only the figures."
        )


def _open(path: Path) -> Image.Image:
    from metamergen.utils.images import ImageLoadError, load_image

    try:
        return load_image(path)
    except (ImageLoadError, FileNotFoundError) as err:
        raise ReportError(str(err)) from err


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe(text: str) -> str:
    return _SAFE.sub("-", text).strip("-.") or "x"


def _stack(rows: Sequence[Image.Image], header: str) -> Image.Image:
    from PIL import ImageDraw

    head = 20
    width = max(r.width for r in rows)
    out = Image.new("RGB", (width, head + sum(r.height for r in rows)), (255, 255, 255))
    ImageDraw.Draw(out).text((6, 4), header, fill=(0, 0, 0))
    y = head
    for r in rows:
        out.paste(r, (0, y))
        y += r.height
    return out


def _encoder_frame(row: Any) -> tuple[int, int, str]:
    """``(canvas, patch, caption note)`` of the encoder that rendered ``row`` (the manifest records
    them); rows from before those columns get the paper's frame and a note saying it is assumed."""
    canvas, patch = row.get("encoder_canvas"), row.get("encoder_patch")
    try:
        canvas, patch = int(canvas), int(patch)
    except (TypeError, ValueError):
        return defaults.ENCODER_RESOLUTION, defaults.ENCODER_PATCH_SIZE, " (frame not recorded: 448/14 assumed)"
    return canvas, patch, ""


def build_sheet(
    group, root: Path, metrics: Sequence[str], *, height: int = 256, scene_cache: dict | None = None
) -> Image.Image:
    """One contact sheet for the rows of one (scene, scanpath, condition, source) group.

    One row per prefix (and per distinct fixation list / blur within it): the scene with the
    fixations drawn, the model-free foveated input, then the hypotheses captioned with scores.
    """
    from metamergen.viz.figures import contact_sheet, draw_scanpath, foveated_input

    cache = scene_cache if scene_cache is not None else {}
    first = group.iloc[0]
    cond = str(first["condition"])
    rows = []
    g = group.assign(
        _order=group["_prefix"].map(_prefix_order),
        _fx=group["fixations"].astype(str),
        _blur=group["peripheral_blur"].astype(str),
    )
    sort_cols = ["_order", "_fx", "_blur"] + (["seed"] if "seed" in g.columns else []) + ["image_id"]
    g = g.sort_values(sort_cols, kind="stable")
    for (_, _, _, scene_path), sub in g.groupby(["_order", "_fx", "_blur", "scene"], sort=False, dropna=False):
        r0 = sub.iloc[0]
        where = f"image_id {r0['image_id']}"
        xy = _parse_fixations(r0["fixations"], where)
        scene_file = _resolve(root, scene_path)
        if scene_file not in cache:
            cache.clear()  # groups arrive scene by scene: keep one scene in memory
            cache[scene_file] = _open(scene_file)
        scene = cache[scene_file]
        blur = pd_float(r0["peripheral_blur"])
        if not math.isfinite(blur) and cond != "foveal":
            warnings.warn(
                f"{where}: no peripheral_blur recorded; showing the periphery at s = {defaults.PERIPHERAL_BLUR}.",
                stacklevel=2,
            )
            blur = defaults.PERIPHERAL_BLUR
        size, patch, frame_note = _encoder_frame(r0)
        prefix = r0["_prefix"]
        n_label = f"N={prefix}" if prefix != _ALL else "all"
        view = foveated_input(
            scene, xy, blur if math.isfinite(blur) else defaults.PERIPHERAL_BLUR, cond, size=size, patch_size=patch
        )
        panels = [draw_scanpath(scene, xy), view]
        input_caption = {
            "both": f"input: fovea + periphery s={blur:g}",
            "peripheral": f"input: periphery only s={blur:g}",
            "foveal": "input: fovea only",
        }.get(cond, f"input s={blur:g}")
        captions = [f"{n_label}: scene + {len(xy)} fixation{'s' if len(xy) != 1 else ''}", input_caption + frame_note]
        for _, r in sub.iterrows():
            panels.append(_open(_resolve(root, r["path"])))
            captions.append(_caption(r, metrics))
        rows.append(contact_sheet(panels, captions, height=height))
    header = (
        f"scene {first['scene_id']} · scanpath {first['scanpath_id']} · condition {cond} · "
        f"{first['fixation_source']} fixations"
    )
    return _stack(rows, header)


def pd_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


# -------------------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.figs { display: flex; flex-wrap: wrap; gap: 1em; }
.figs figure { margin: 0; } .figs img { width: 480px; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; } td.k { text-align: left; }
.note { color: #555; font-size: 0.9em; max-width: 60em; }
tr.baseline td { background: #f7f7f7; color: #555; }
figure.sheet { margin: 0 0 1em 0; } figure.sheet img { max-width: 100%; border: 1px solid #eee; }
figure.sheet figcaption { font-size: 0.85em; color: #555; }
.excluded { color: #a0522d; }
"""


def _excluded_note(counts) -> str:
    """`` (k of n non-finite, excluded)`` for a summary row or an :func:`excluded_scores` entry
    (both have ``n_nonfinite`` and ``n_rows``) that left scores out, else ``""``."""
    k = int(counts.get("n_nonfinite", 0) or 0)
    if not k:
        return ""
    return f' <small class="excluded">({k} of {int(counts["n_rows"])} non-finite, excluded)</small>'


def _href(path: str) -> str:
    return "/".join(quote(part) for part in path.split("/"))


def _index_html(
    *,
    source: str,
    t,
    metrics,
    summary,
    figures,
    sheets,
    unit,
    n_boot,
    confidence,
    version,
    skipped_sheets: int,
    baselines=None,
    notes: Sequence[tuple[str, str]] = (),
) -> str:
    e = html.escape
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>MetamerGen report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>MetamerGen report</h1>",
        f"<p>Score table <code>{e(source)}</code>: {len(t)} generated images, {t['scene_id'].nunique()} scenes, "
        f"{t[['scene_id', 'scanpath_id']].drop_duplicates().shape[0]} scanpaths; metrics: "
        f"{e(', '.join(metrics))}. metamergen {e(version)}.</p>",
    ]
    if "model" in t.columns:
        models = sorted({str(m) for m in t["model"].dropna().unique()})
        out.append(f"<p>Rendered by: {e('; '.join(models) or 'not recorded')}.</p>")
    for title, text in notes:
        out.append(f"<h2>{e(title)}</h2><p>{e(text)}</p>")
    out.append("<h2>Score vs number of fixations</h2>")
    out.append(
        f'<p class="note">Each point is the mean of per-{e(unit)} means (scores averaged within each {e(unit)} '
        f"first, so every {e(unit)} weighs the same); error bars are {confidence:.0%} percentile-bootstrap "
        f"intervals over {e(UNIT_WORDS.get(unit, unit))} ({n_boot} resamples, seeded). Lines: colour = condition, "
        "line style = fixation source (solid: the viewer's own fixations, dashed: random fixations matched in "
        "count). “all” = the whole scanpath (empty prefix).</p>"
    )
    out.append('<div class="figs">')
    left_out = excluded_scores(summary)
    for metric, rel in figures:
        excluded = _excluded_note(left_out.get(metric, {}))
        out.append(
            f'<figure><a href="{_href(rel)}"><img src="{_href(rel)}" alt="{e(metric)}"></a>'
            f"<figcaption>{e(_info(metric).label)} ({e(_direction(metric))}){excluded}</figcaption></figure>"
        )
    out.append("</div>")
    out.append("<h2>Mean scores per condition × fixation source × prefix</h2>")
    out.append(
        f'<p class="note">mean [{confidence:.0%} CI]; n = {e(unit)}s / images. Non-finite scores (NaN, empty, '
        "±inf) are left out of every mean and interval, and each cell says how many it left out. Also as "
        f'<a href="summary.csv">summary.csv</a> (columns n_rows, n_nonfinite, n_inf).</p>'
    )
    for what, table in (("scores", summary), ("baseline scores", baselines)):
        excluded = excluded_scores(table) if table is not None else {}
        if excluded:
            out.append(
                f'<p class="note excluded"><b>Non-finite {what} excluded from the means:</b> '
                f"{e(describe_excluded(excluded))}. An infinite PSNR is an image identical to its scene: "
                "leaving it out lowers PSNR's mean (MSE keeps such images).</p>"
            )
    out.append(
        "<table><tr><th>condition</th><th>fixations</th><th>N</th>"
        + "".join(
            f"<th>{e(_info(m).short)}<br><small>{'↑' if _info(m).higher_is_similar else '↓'} similar</small></th>"
            for m in metrics
        )
        + "<th>n</th></tr>"
    )
    if len(summary):
        keys = _sorted_cells(summary[["condition", "fixation_source", "prefix"]].drop_duplicates())
        for _, k in keys.iterrows():
            sel = summary[
                (summary["condition"] == k["condition"])
                & (summary["fixation_source"] == k["fixation_source"])
                & (summary["prefix"] == k["prefix"])
            ]
            cells = []
            counts = sel[["n_units", "n_images"]].max() if len(sel) else None
            n = f"{int(counts['n_units'])} / {int(counts['n_images'])}" if counts is not None else ""
            for m in metrics:
                r = sel[sel["metric"] == m]
                if not len(r):
                    cells.append("<td>–</td>")
                    continue
                r = r.iloc[0]
                ci = f" [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]" if math.isfinite(r["ci_low"]) else ""
                fewer = ""  # a metric without a value for some images says on how many it rests
                if (r["n_units"], r["n_images"]) != (counts["n_units"], counts["n_images"]):
                    fewer = f" <small>(n {int(r['n_units'])} / {int(r['n_images'])})</small>"
                cells.append(f"<td>{_fmt(r['mean'])}{ci}{fewer}{_excluded_note(r)}</td>")
            out.append(
                f'<tr><td class="k">{e(k["condition"])}</td><td class="k">{e(k["fixation_source"])}</td>'
                f"<td>{e(k['prefix'])}</td>{''.join(cells)}<td>{n}</td></tr>"
            )
    if baselines is not None and len(baselines):
        for label in dict.fromkeys(baselines["label"]):
            sel = baselines[baselines["label"] == label]
            cells = []
            for m in metrics:
                r = sel[sel["metric"] == m]
                if not len(r):
                    cells.append("<td>–</td>")
                    continue
                r = r.iloc[0]
                ci = f" [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]" if math.isfinite(r["ci_low"]) else ""
                cells.append(f"<td>{_fmt(r['mean'])}{ci}{_excluded_note(r)}</td>")
            n_scenes = int(sel["n_units"].max())
            out.append(
                f'<tr class="baseline"><td class="k">baseline</td><td class="k" colspan="2">{e(label)}</td>'
                f"{''.join(cells)}<td>{n_scenes} scenes</td></tr>"
            )
    out.append("</table>")
    if baselines is not None and len(baselines):
        out.append(
            '<p class="note">Baselines (grey rows, grey lines in the figures): a render must beat them for a '
            "difference between conditions to be an effect of the model. Also as "
            '<a href="baselines_summary.csv">baselines_summary.csv</a>.</p>'
        )
    out.append("<h2>Contact sheets</h2>")
    if sheets:
        out.append(
            '<p class="note">Per prefix N: the scene with the first N fixations, the foveated input computed '
            "without the model (sharp 14-px patches over the periphery the model saw), then the hypotheses "
            "with their scores.</p>"
        )
        by_scene: dict[str, list] = {}
        for key, rel in sheets:
            by_scene.setdefault(key[0], []).append((key, rel))
        for scene_id, items in by_scene.items():
            out.append(f"<h3>scene {e(scene_id)}</h3>")
            for (_, sp, c, src), rel in items:
                title = f"scanpath {sp} · {c} · {src} fixations"
                out.append(
                    f'<figure class="sheet"><figcaption>{e(title)}</figcaption>'
                    f'<a href="{_href(rel)}"><img src="{_href(rel)}" alt="{e(title)}" loading="lazy"></a></figure>'
                )
    else:
        out.append('<p class="note">No contact sheets were built.</p>')
    if skipped_sheets:
        out.append(f'<p class="note">{skipped_sheets} further sheet(s) left out (--max-sheets).</p>')
    out.append("</body></html>\n")
    return "\n".join(out)


# -------------------------------------------------------------------------------------- main


@dataclass
class ReportResult:
    """Paths written by :func:`write_report` (relative to ``out`` where noted).

    ``excluded`` and ``excluded_baselines`` are :func:`excluded_scores` of the two summaries: per
    metric, how many non-finite scores were left out of the means (empty when none were).
    """

    out: Path
    index: Path
    summary_csv: Path
    figures: dict[str, Path] = field(default_factory=dict)
    sheets: list[Path] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    excluded: dict[str, dict[str, int]] = field(default_factory=dict)
    excluded_baselines: dict[str, dict[str, int]] = field(default_factory=dict)


#: What a report folder holds (see the module docstring): a folder with anything else is not replaced.
REPORT_ENTRIES: frozenset[str] = frozenset({"index.html", "summary.csv", "baselines_summary.csv", "figures", "sheets"})
#: Entries a report folder may also hold and that may go with it: file managers' metadata (and the
#: temporary files of an ``atomic_write`` that was killed, :func:`~metamergen.utils.io.temporary_target`).
_DISPOSABLE = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


def check_report_settings(
    *, unit: str, n_boot: int, confidence: float, max_sheets: int | None, sheet_height: int
) -> None:
    """Raise :class:`ReportError` for settings no report can use (before anything is read or written)."""
    if unit not in UNITS:
        raise ReportError(f"Unknown resampling unit {unit!r}; choose one of {', '.join(UNITS)}.")
    if not (isinstance(confidence, (int, float)) and math.isfinite(confidence) and 0 < confidence < 1):
        raise ReportError(
            f"--confidence is the interval level, a number strictly between 0 and 1 (e.g. 0.95), got {confidence}."
        )
    if n_boot < 1:
        raise ReportError(f"--n-boot is the number of bootstrap resamples and must be >= 1 (e.g. 10000), got {n_boot}.")
    if max_sheets is not None and max_sheets < 0:
        raise ReportError(f"--max-sheets must be >= 0 (0: no sheets), got {max_sheets}.")
    if sheet_height < 16:
        raise ReportError(f"--sheet-height is the panel height in pixels and must be >= 16, got {sheet_height}.")


def _check_out(out: Path) -> None:
    """Refuse an ``out`` that the report would replace but that holds something else (a file, other files)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ReportError(f"--out {out} is a file, not a folder: choose a folder for the report.")
    foreign = sorted(
        n for n in os.listdir(out) if n not in REPORT_ENTRIES and n not in _DISPOSABLE and temporary_target(n) is None
    )
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ReportError(
            f"--out {out} holds files a report does not write ({shown}); the report replaces the whole folder, "
            "so it refuses: choose a new or empty folder, or move those files out."
        )


def _selected_groups(t, max_sheets: int | None) -> tuple[list, int]:
    """The (key, index) groups that get a contact sheet, in page order, and how many are left out."""
    keys = ["scene_id", "scanpath_id", "condition", "fixation_source"]
    groups = sorted(
        t.groupby(keys, sort=False).groups.items(),
        key=lambda kv: (kv[0][0], kv[0][1], _condition_rank(kv[0][2]), _source_rank(kv[0][3])),
    )
    if max_sheets is not None and len(groups) > max_sheets:
        return groups[:max_sheets], len(groups) - max_sheets
    return groups, 0


def _check_decodable(t, groups, root: Path) -> None:
    """Decode every image the sheets will show, so that a broken file stops the report before it starts."""
    from metamergen.utils.images import ImageLoadError, load_image

    bad, done = [], set()
    for _, idx in groups:
        for i in idx:
            for col in ("scene", "path"):
                path = _resolve(root, t.at[i, col])
                if path in done:
                    continue
                done.add(path)
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # only decodability matters here; the sheets warn once
                        load_image(path)
                except (ImageLoadError, FileNotFoundError) as err:
                    bad.append(f"image_id {t.at[i, 'image_id']} ({col}): {str(err).rstrip('.')}")
    if bad:
        more = f" (and {len(bad) - 1} more unreadable image file(s))" if len(bad) > 1 else ""
        raise ReportError(
            f"Nothing was written: an image the contact sheets need cannot be read: {bad[0]}{more}. "
            "Re-render or re-export it, drop its rows from the score table, or pass --no-sheets for the "
            "figures and tables only."
        )


def write_report(
    scores: str | Path,
    out: str | Path,
    *,
    root: str | Path | None = None,
    metrics: Sequence[str] | None = None,
    unit: str = "scene",
    n_boot: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
    sheets: bool = True,
    max_sheets: int | None = None,
    sheet_height: int = 256,
    baselines: str | Path | bool = True,
    notes: Sequence[tuple[str, str]] = (),
) -> ReportResult:
    """Build the report folder from a score table (see the module docstring for its layout).

    Everything is checked first (settings, columns, values, and every image the sheets show is
    decoded); the report is then built in a temporary folder next to ``out`` and renamed to
    ``out`` when complete, replacing a previous report there. A failure at any point leaves
    ``out`` as it was. An ``out`` holding files a report does not write is refused, not replaced.

    Parameters
    ----------
    scores
        The score table, CSV or Parquet.
    out
        Output folder.
    root
        Folder the table's relative ``path``/``scene`` entries are relative to (default: the
        score table's folder).
    metrics
        Metric columns to report (default: every known metric column present with values).
    unit
        Bootstrap resampling unit: ``"scene"``, ``"scanpath"`` or ``"image"``.
    n_boot, confidence, seed
        Bootstrap settings (``confidence`` strictly between 0 and 1).
    sheets, max_sheets, sheet_height
        Build contact sheets; at most ``max_sheets`` of them (None: all); panel height in pixels.
    baselines
        The baseline table (``metamergen score`` writes ``baselines.csv`` next to the scores): a
        path, ``True`` to use that file when it exists, ``False`` for none. Baselines appear in the
        summary, the table and every figure.
    notes
        Extra ``(title, text)`` paragraphs for the page (the demo adds its own-vs-other check).

    Raises
    ------
    ReportError
        Bad settings, an unusable table, a missing or unreadable image, an ``out`` that is not a
        report folder.
    """
    from metamergen import __version__

    check_report_settings(
        unit=unit, n_boot=n_boot, confidence=confidence, max_sheets=max_sheets, sheet_height=sheet_height
    )
    scores = Path(scores)
    out = Path(out)
    root = Path(root) if root is not None else scores.parent
    table = read_table(scores)
    if not len(table):
        raise ReportError(f"The score table {scores} has no rows.")
    _check_columns(table, FIGURE_COLUMNS + (SHEET_COLUMNS if sheets else ()), str(scores))
    chosen = metric_columns(table, metrics)
    if not chosen:
        raise ReportError(
            f"The score table {scores} has no metric columns with values; expected any of {list(METRIC_INFO)} "
            "(run `metamergen score` first)."
        )
    t = _clean(table)
    groups, skipped = ([], 0)
    if sheets:
        for i, fx in enumerate(t["fixations"]):
            _parse_fixations(fx, f"row {i} (image_id {t['image_id'].iloc[i]})")
        _check_files(t, root)
        groups, skipped = _selected_groups(t, max_sheets)
        _check_decodable(t, groups, root)
    _matplotlib()  # fail before writing anything if it is missing
    _check_out(out)

    summary = summarize_scores(t, chosen, unit=unit, n_boot=n_boot, confidence=confidence, seed=seed)
    base_summary = None
    base_path = scores.parent / BASELINES_NAME if baselines is True else (Path(baselines) if baselines else None)
    if base_path is not None and (baselines is not True or base_path.is_file()):
        base_summary = summarize_baselines(
            read_table(base_path), chosen, n_boot=n_boot, confidence=confidence, seed=seed
        )

    final = out.resolve()  # resolved: "--out ." has no name of its own to build a sibling next to
    final.parent.mkdir(parents=True, exist_ok=True)
    # a fresh sibling (same file system, so the final rename is atomic), removed again on any failure
    build = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(build, 0o777 & ~umask)  # mkdtemp folders are private (0700); give what a plain mkdir would
        figure_links, sheet_links = _build_report(
            build,
            summary=summary,
            base_summary=base_summary,
            t=t,
            root=root,
            chosen=chosen,
            groups=groups,
            confidence=confidence,
            sheet_height=sheet_height,
        )
        page = _index_html(
            source=str(scores),
            t=t,
            metrics=chosen,
            summary=summary,
            figures=figure_links,
            sheets=sheet_links,
            unit=unit,
            n_boot=n_boot,
            confidence=confidence,
            version=__version__,
            skipped_sheets=skipped,
            baselines=base_summary,
            notes=notes,
        )
        atomic_write(build / "index.html", lambda p: Path(p).write_text(page, encoding="utf-8"))
        replace_dir(build, final)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return ReportResult(
        out=out,
        index=out / "index.html",
        summary_csv=out / "summary.csv",
        figures={metric: out / rel for metric, rel in figure_links},
        sheets=[out / rel for _, rel in sheet_links],
        metrics=list(chosen),
        excluded=excluded_scores(summary),
        excluded_baselines=excluded_scores(base_summary) if base_summary is not None else {},
    )


def _build_report(
    folder: Path,
    *,
    summary,
    base_summary,
    t,
    root: Path,
    chosen: Sequence[str],
    groups,
    confidence: float,
    sheet_height: int,
) -> tuple[list[tuple[str, str]], list[tuple[tuple[str, ...], str]]]:
    """Write summaries, figures and sheets into ``folder``; returns the figure and sheet links."""
    atomic_write(folder / "summary.csv", lambda p: summary.to_csv(p, index=False))
    if base_summary is not None:
        atomic_write(folder / "baselines_summary.csv", lambda p: base_summary.to_csv(p, index=False))
    figure_links = []
    for metric in chosen:
        if not summary.loc[summary["metric"] == metric, "mean"].notna().any():
            continue  # every score of this metric is non-finite: nothing to draw (the table says so)
        rel = f"figures/{_safe(metric)}.png"
        plot_metric(summary, metric, folder / rel, confidence=confidence, baselines=base_summary)
        figure_links.append((metric, rel))
    sheet_links = []
    used, cache = set(), {}
    for key, idx in groups:
        name = "_".join(_safe(str(k)) for k in key)
        base, k = name, 1
        while name in used:
            k += 1
            name = f"{base}-{k}"
        used.add(name)
        rel = f"sheets/{name}.png"
        sheet = build_sheet(t.loc[idx], root, chosen, height=sheet_height, scene_cache=cache)
        atomic_write(folder / rel, lambda p, im=sheet: im.save(p, format="PNG"))
        sheet_links.append((tuple(str(k) for k in key), rel))
    return figure_links, sheet_links
