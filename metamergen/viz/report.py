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
      layers_summary.csv         the same per metric x model x layer (model metamers, below)
      baselines_summary.csv      the same per baseline (when ``baselines.csv`` is next to the scores)
      figures/<metric>.png       score vs number of fixations, one line per condition x source
      figures/<metric>_by_layer.png
                                 model metamers: score vs layer, one line per model
      sheets/<scene>_<scanpath>_<condition>_<source>.png
                                 per prefix N: scene + first N fixations, the model-free foveated
                                 input, the hypotheses captioned with their scores
      sheets/layers_<model>_<k>.png
                                 model metamers: per natural image, the image then its metamer of
                                 each layer, captioned with their scores

**Both kinds of metamer, one report.** A row with a ``layer`` (``metamergen model-metamers``'
manifest, scored or not; a table may hold both kinds, e.g. two score tables concatenated) is a
*model metamer*: where scene metamers are grouped by condition x fixation source x prefix, model
metamers are grouped by ``model`` x ``layer`` (layers in the order the run gave them), with the same
statistics, baselines, non-finite policy and sheets; the run's own tests
(:mod:`~metamergen.metamers.measures`: ``recognized``, ``null_test_passed``, ``loss``) are metric
columns like the image metrics and come first in the model metamers' table. A table with rows of one
kind only shows that kind's sections; ``summary.csv`` is written when there are scene metamers,
``layers_summary.csv`` when there are model metamers.

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
from metamergen.metamers.measures import LOSS, MEASURE_INFO, NULL_TEST_PASSED, RECOGNIZED  # registers their labels
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
    "summarize_layers",
    "summarize_scores",
    "write_report",
]


CONDITIONS: tuple[str, ...] = ("both", "peripheral", "foveal")
SOURCES: tuple[str, ...] = ("viewer", "random")
_CONDITION_COLORS = {"both": "#1b6ca8", "peripheral": "#d1495b", "foveal": "#2e933c"}
_SOURCE_STYLES = {"viewer": ("-", "o"), "random": ("--", "s")}
_EXTRA_COLORS = ("#7b4fa0", "#e08e0b", "#555555", "#0f9d9a")
_LINE_COLORS = (*_CONDITION_COLORS.values(), *_EXTRA_COLORS)  # model metamers: one colour per model
_EXTRA_STYLES = ((":", "^"), ("-.", "D"), ((0, (1, 3)), "v"))
_BASELINE_STYLES = ("--", ":", "-.")

#: Columns needed for the figures and summary table.
FIGURE_COLUMNS: tuple[str, ...] = ("image_id", "scene_id", "scanpath_id", "prefix", "condition", "fixation_source")
#: Extra columns needed for the contact sheets.
SHEET_COLUMNS: tuple[str, ...] = ("path", "scene", "fixations", "peripheral_blur")
#: Columns a model-metamer row needs (``metamergen model-metamers``' manifest; its sheets need path, scene).
LAYER_COLUMNS: tuple[str, ...] = ("image_id", "scene_id", "model", "layer")
#: Natural images (rows) per model-metamers contact sheet.
LAYER_SHEET_ROWS = 8
#: Model-metamer measures that are shares (0 to 1): their figures show the whole range.
SHARES: tuple[str, ...] = (RECOGNIZED, NULL_TEST_PASSED)
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


def _blank(column):
    """Where a column is empty: NaN, or a blank or null-like string."""
    return column.isna() | column.astype(str).str.strip().isin(["", "nan", "None", "<NA>"])


def _split_kinds(table):
    """``(scene-metamer rows, model-metamer rows)``: a row with a non-empty ``layer`` is a model metamer."""
    if "layer" not in table.columns:
        return table, table.iloc[:0]
    model = ~_blank(table["layer"])
    return table[~model], table[model]


def _prefix_labels(table) -> list[str]:
    """``prefix`` as labels: the integer N, or ``"all"`` where empty (whole scanpath)."""
    pd = pandas()
    raw = table["prefix"]
    num = pd.to_numeric(raw, errors="coerce")
    blank = _blank(raw)
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


def _clean_layers(table):
    """Copy of the model-metamer rows with string keys (and an empty ``scanpath_id`` where there is none)."""
    t = table.copy()
    for col in LAYER_COLUMNS:
        t[col] = t[col].astype(str)
    t["scanpath_id"] = t["scanpath_id"].fillna("").astype(str) if "scanpath_id" in t.columns else ""
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
    _check_columns(table, FIGURE_COLUMNS, "given")
    t = table if "_prefix" in table.columns else _clean(table)
    keys = {"condition": "condition", "fixation_source": "fixation_source", "prefix": "_prefix"}
    out = _summarize(t, metrics, keys, unit=unit, n_boot=n_boot, confidence=confidence, seed=seed)
    if len(out):
        order = {m: i for i, m in enumerate(metrics)}
        out = _sorted_cells(out.assign(_m=out["metric"].map(order)), ["_m"]).drop(columns="_m")
    return out


def summarize_layers(
    table,
    metrics: Sequence[str],
    *,
    unit: str = "scene",
    n_boot: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
):
    """Mean score and bootstrap CI per metric x model x layer of model metamers (``metamergen model-metamers``).

    As :func:`summarize_scores` (the same statistics and non-finite policy); a unit ``"scene"`` is
    the natural image a metamer was made from (its ``scene_id``).

    Returns
    -------
    pandas.DataFrame
        Columns ``metric, model, layer, mean, ci_low, ci_high``, :data:`COUNT_COLUMNS` and ``unit``;
        by metric, then models and their layers in the order of the table's rows (a run's order).
    """
    _check_columns(table, LAYER_COLUMNS, "given")
    t = _clean_layers(table)
    out = _summarize(
        t, metrics, {"model": "model", "layer": "layer"}, unit=unit, n_boot=n_boot, confidence=confidence, seed=seed
    )
    if len(out):
        order = {m: i for i, m in enumerate(metrics)}
        out = out.assign(_m=out["metric"].map(order)).sort_values("_m", kind="stable").drop(columns="_m")
    return out.reset_index(drop=True)


def _summarize(
    t, metrics: Sequence[str], keys: dict[str, str], *, unit: str, n_boot: int, confidence: float, seed: int
):
    """One :func:`cell_statistics` row per metric and group of ``keys`` (summary column -> table column)."""
    pd = pandas()
    if unit not in UNITS:
        raise ValueError(f"Unknown resampling unit {unit!r}; choose one of {list(UNITS)}.")
    unit_key = t[list(UNITS[unit])].astype(str).agg("\x1f".join, axis=1)
    rows = []
    for metric in metrics:
        values = pd.to_numeric(t[metric], errors="coerce")
        for key, idx in t.groupby(list(keys.values()), sort=False).groups.items():
            stats = cell_statistics(
                values.loc[idx].to_numpy(dtype=np.float64),
                unit_key.loc[idx].to_numpy(),
                n_boot=n_boot,
                confidence=confidence,
                seed=derive_cell_seed(seed, (metric, *key)),
            )
            rows.append(dict(metric=metric, **dict(zip(keys, key)), **stats, unit=unit))
    columns = ["metric", *keys, "mean", "ci_low", "ci_high", *COUNT_COLUMNS, "unit"]
    return pd.DataFrame(rows, columns=columns)


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
    s = summary[summary["metric"] == metric]
    if not len(s):
        raise ReportError(f"No summary rows for metric {metric!r}.")
    prefixes = sorted(s["prefix"].unique(), key=_prefix_order)
    xpos = {p: i for i, p in enumerate(prefixes)}
    conditions = sorted(s["condition"].unique(), key=_condition_rank)
    sources = sorted(s["fixation_source"].unique(), key=_source_rank)
    colors = _styles(conditions, _CONDITION_COLORS, _EXTRA_COLORS)
    styles = _styles(sources, _SOURCE_STYLES, _EXTRA_STYLES)
    lines = []
    for cond in conditions:
        for src in sources:
            d = s[(s["condition"] == cond) & (s["fixation_source"] == src)]
            d = d.sort_values("prefix", key=lambda x: x.map(_prefix_order))
            label = f"{cond} · {src} fixations"
            lines.append((label, colors[cond], *styles[src], [xpos[p] for p in d["prefix"]], d))
    info = _info(metric)
    return _line_figure(
        s,
        lines,
        [("all" if p == _ALL else p) for p in prefixes],
        path,
        metric=metric,
        xlabel="number of fixations N (first N of the scanpath)",
        title=f"{info.label} vs fixations",
        confidence=confidence,
        baselines=baselines,
    )


def plot_metric_by_layer(summary, metric: str, path: str | Path, *, confidence: float = 0.95, baselines=None) -> Path:
    """Draw one metric's score vs layer of model metamers (from :func:`summarize_layers`) to a PNG.

    One line per model, layers on the x axis in the order the table gave them (shallow to deep, as a
    run names them); baselines as in :func:`plot_metric`.
    """
    s = summary[summary["metric"] == metric]
    if not len(s):
        raise ReportError(f"No summary rows for metric {metric!r}.")
    layers = list(dict.fromkeys(s["layer"]))
    xpos = {layer: i for i, layer in enumerate(layers)}
    models = list(dict.fromkeys(s["model"]))
    colors = _styles(models, {}, _LINE_COLORS)
    lines = []
    for model in models:
        d = s[s["model"] == model]
        lines.append((model, colors[model], "-", "o", [xpos[layer] for layer in d["layer"]], d))
    return _line_figure(
        s,
        lines,
        layers,
        path,
        metric=metric,
        xlabel="layer the metamer matches (in the run's order)",
        title=f"{_info(metric).label} by layer",
        confidence=confidence,
        baselines=baselines,
        unit_words="natural images",
        ylim=(-0.03, 1.03) if metric in SHARES else None,
    )


def _line_figure(
    s,
    lines: Sequence[tuple],
    ticks: Sequence[str],
    path: str | Path,
    *,
    metric: str,
    xlabel: str,
    title: str,
    confidence: float,
    baselines,
    unit_words: str | None = None,
    ylim: tuple[float, float] | None = None,
) -> Path:
    """The report's figure: ``lines`` of ``(label, colour, line style, marker, x positions, cells)``
    (cells: summary rows with ``mean``, ``ci_low``, ``ci_high``), dodged apart, with error bars; the
    baselines of ``metric`` as grey lines and bands; ``ticks`` label x = 0, 1, ...; ``unit_words``
    names the bootstrap units (default: from the summary's ``unit``); ``ylim`` fixes the y range."""
    Figure, FigureCanvasAgg = _matplotlib()
    width = 0.25 if len(ticks) > 1 else 0.15
    fig = Figure(figsize=(6.4, 5.6), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for k, (label, color, ls, marker, x, d) in enumerate(lines):
        if not len(d):
            continue
        dodge = (k - (len(lines) - 1) / 2) * width / max(1, len(lines) - 1) if len(lines) > 1 else 0.0
        m = d["mean"].to_numpy(float)
        lo = np.nan_to_num(m - d["ci_low"].to_numpy(float), nan=0.0)
        hi = np.nan_to_num(d["ci_high"].to_numpy(float) - m, nan=0.0)
        ax.errorbar(
            np.asarray(x, dtype=float) + dodge,
            m,
            yerr=[lo, hi],
            color=color,
            linestyle=ls,
            marker=marker,
            markersize=4.5,
            capsize=3,
            linewidth=1.5,
            label=label,
        )
    if baselines is not None and len(baselines):
        drawn = baselines[(baselines["metric"] == metric) & np.isfinite(baselines["mean"].astype(float))]
        for j, (_, b) in enumerate(drawn.iterrows()):
            style = _BASELINE_STYLES[j % len(_BASELINE_STYLES)]
            ax.axhline(b["mean"], color="#666666", linestyle=style, linewidth=1.2, label=f"baseline: {b['label']}")
            if math.isfinite(b["ci_low"]):
                ax.axhspan(b["ci_low"], b["ci_high"], color="#999999", alpha=0.15, linewidth=0)
    unit = s["unit"].iloc[0]
    # an ensemble's "layer" names its members (a:3+b:5): one member a line; long names turn when crowded
    labels = [str(t).replace("+", "+\n") for t in ticks]
    n_lines = max((label.count("\n") + 1 for label in labels), default=1)
    widest = max((len(part) for label in labels for part in label.split("\n")), default=0)
    turn = widest > 8 and len(labels) > 4
    ax.set_xticks(
        range(len(labels)),
        labels,
        rotation=25 if turn else 0,
        ha="right" if turn else "center",
        fontsize=7 if widest > 10 else None,
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{_info(metric).label}\n({_direction(metric)})")
    ax.set_title(
        f"{title}: mean ± {confidence:.0%} CI\n"
        f"(bootstrap over {unit_words or UNIT_WORDS.get(unit, unit)}, up to n = {int(s['n_units'].max())} per point)",
        fontsize=9,
    )
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(True, alpha=0.3)
    # below the axes (and the tick labels), so that no line or band (the baselines sit low or high) is hidden
    below = -0.16 - 0.045 * (n_lines - 1) - (0.08 if turn else 0.0)
    ax.legend(fontsize=7, frameon=False, ncol=2, loc="upper center", bbox_to_anchor=(0.5, below))
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
    for i, img, path, scene in zip(t.index, t["image_id"], t["path"], t["scene"]):
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


def build_layer_sheet(group, root: Path, metrics: Sequence[str], *, height: int = 256) -> Image.Image:
    """One contact sheet of one model's metamers: per natural image, the image then its metamer of each layer.

    ``group``: model-metamer rows of one model (``scene`` = the natural image, ``path`` = the
    metamer); rows in the order of their natural images, columns in the order of the layers; each
    metamer captioned with its scores.
    """
    from metamergen.viz.figures import contact_sheet

    layers = list(dict.fromkeys(group["layer"]))
    shown = [m for m in metrics if m != LOSS]  # room for three scores: the tests and the image metrics first
    rows = []
    for scene_id, sub in group.groupby("scene_id", sort=False):
        by_layer = {r["layer"]: r for _, r in sub.iterrows()}
        panels = [_open(_resolve(root, sub["scene"].iloc[0]))]
        captions = [f"{scene_id}: natural image"]
        for layer in layers:
            if layer in by_layer:
                panels.append(_open(_resolve(root, by_layer[layer]["path"])))
                name = layer if len(layer) <= 14 else layer[:13] + "…"
                captions.append(f"{name}: {_caption(by_layer[layer], shown, max_metrics=3)}")
        rows.append(contact_sheet(panels, captions, height=height))
    header = f"model {group['model'].iloc[0]} · natural image, then its metamer of: {', '.join(layers)}"
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


@dataclass
class _Kind:
    """What the page shows of one kind of metamer: its rows, metrics, summary, figures and sheets."""

    rows: Any
    metrics: list[str]
    summary: Any
    figure_suffix: str = ""  # of the figures' file names and ReportResult.figures keys
    figures: list[tuple[str, str]] = field(default_factory=list)  # (metric, link)
    sheets: list[tuple[tuple[str, ...], str]] = field(default_factory=list)


def _cell(r, counts=None) -> str:
    """One summary row as a table cell: mean [CI], on how many it rests if fewer than ``counts``, exclusions."""
    ci = f" [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]" if math.isfinite(r["ci_low"]) else ""
    fewer = ""  # a metric without a value for some images says on how many it rests
    if counts is not None and (r["n_units"], r["n_images"]) != (counts["n_units"], counts["n_images"]):
        fewer = f" <small>(n {int(r['n_units'])} / {int(r['n_images'])})</small>"
    return f"<td>{_fmt(r['mean'])}{ci}{fewer}{_excluded_note(r)}</td>"


_TEXT = ' class="k"'  # a table cell holding text (left-aligned)


def _score_table(summary, keys: Sequence[tuple[str, str, bool]], metrics: Sequence[str], baselines) -> list[str]:
    """The table of mean scores: one row per cell of ``keys`` (summary column, header, left-aligned text?),
    then the baselines."""
    e = html.escape
    out = [
        "<table><tr>"
        + "".join(f"<th>{e(head)}</th>" for _, head, _ in keys)
        + "".join(
            f"<th>{e(_info(m).short)}<br><small>{'↑' if _info(m).higher_is_similar else '↓'} similar</small></th>"
            for m in metrics
        )
        + "<th>n</th></tr>"
    ]
    names = [k for k, _, _ in keys]
    for key, sel in summary.groupby(names, sort=False):
        counts = sel[["n_units", "n_images"]].max()
        cells = []
        for m in metrics:
            r = sel[sel["metric"] == m]
            cells.append(_cell(r.iloc[0], counts) if len(r) else "<td>–</td>")
        out.append(
            "<tr>"
            + "".join(f"<td{_TEXT if text else ''}>{e(str(k))}</td>" for k, (_, _, text) in zip(key, keys))
            + f"{''.join(cells)}<td>{int(counts['n_units'])} / {int(counts['n_images'])}</td></tr>"
        )
    if baselines is not None and len(baselines):
        for label in dict.fromkeys(baselines["label"]):
            sel = baselines[baselines["label"] == label]
            cells = [
                _cell(sel[sel["metric"] == m].iloc[0]) if (sel["metric"] == m).any() else "<td>–</td>" for m in metrics
            ]
            span = f' colspan="{len(keys) - 1}"' if len(keys) > 2 else ""
            out.append(
                f'<tr class="baseline"><td class="k">baseline</td><td class="k"{span}>{e(label)}</td>'
                f"{''.join(cells)}<td>{int(sel['n_units'].max())} scenes</td></tr>"
            )
    out.append("</table>")
    if baselines is not None and len(baselines):
        out.append(
            '<p class="note">Baselines (grey rows, grey lines in the figures): a render must beat them for a '
            "difference between conditions to be an effect of the model. Also as "
            '<a href="baselines_summary.csv">baselines_summary.csv</a>.</p>'
        )
    return out


def _excluded_notes(summary, baselines) -> list[str]:
    """A note per table (the scores', the baselines') that left non-finite scores out of its means."""
    out = []
    for what, table in (("scores", summary), ("baseline scores", baselines)):
        excluded = excluded_scores(table) if table is not None else {}
        if excluded:
            out.append(
                f'<p class="note excluded"><b>Non-finite {what} excluded from the means:</b> '
                f"{html.escape(describe_excluded(excluded))}. An infinite PSNR is an image identical to its scene: "
                "leaving it out lowers PSNR's mean (MSE keeps such images).</p>"
            )
    return out


def _figures(kind: _Kind) -> list[str]:
    e = html.escape
    out = ['<div class="figs">']
    left_out = excluded_scores(kind.summary)
    for metric, rel in kind.figures:
        excluded = _excluded_note(left_out.get(metric, {}))
        out.append(
            f'<figure><a href="{_href(rel)}"><img src="{_href(rel)}" alt="{e(metric)}"></a>'
            f"<figcaption>{e(_info(metric).label)} ({e(_direction(metric))}){excluded}</figcaption></figure>"
        )
    out.append("</div>")
    return out


def _scene_sections(kind: _Kind, *, unit: str, n_boot: int, confidence: float, baselines) -> list[str]:
    """Scene metamers: score vs fixations, the table per condition x source x prefix, the contact sheets."""
    e = html.escape
    out = ["<h2>Score vs number of fixations</h2>"]
    out.append(
        f'<p class="note">Each point is the mean of per-{e(unit)} means (scores averaged within each {e(unit)} '
        f"first, so every {e(unit)} weighs the same); error bars are {confidence:.0%} percentile-bootstrap "
        f"intervals over {e(UNIT_WORDS.get(unit, unit))} ({n_boot} resamples, seeded). Lines: colour = condition, "
        "line style = fixation source (solid: the viewer's own fixations, dashed: random fixations matched in "
        "count). “all” = the whole scanpath (empty prefix).</p>"
    )
    out += _figures(kind)
    out.append("<h2>Mean scores per condition × fixation source × prefix</h2>")
    out.append(
        f'<p class="note">mean [{confidence:.0%} CI]; n = {e(unit)}s / images. Non-finite scores (NaN, empty, '
        "±inf) are left out of every mean and interval, and each cell says how many it left out. Also as "
        f'<a href="summary.csv">summary.csv</a> (columns n_rows, n_nonfinite, n_inf).</p>'
    )
    out += _excluded_notes(kind.summary, baselines)
    keys = [("condition", "condition", True), ("fixation_source", "fixations", True), ("prefix", "N", False)]
    out += _score_table(kind.summary, keys, kind.metrics, baselines)
    out.append("<h2>Contact sheets</h2>")
    if kind.sheets:
        out.append(
            '<p class="note">Per prefix N: the scene with the first N fixations, the foveated input computed '
            "without the model (sharp 14-px patches over the periphery the model saw), then the hypotheses "
            "with their scores.</p>"
        )
        by_scene: dict[str, list] = {}
        for key, rel in kind.sheets:
            by_scene.setdefault(key[0], []).append((key, rel))
        for scene_id, items in by_scene.items():
            out.append(f"<h3>scene {e(scene_id)}</h3>")
            for (_, sp, c, src), rel in items:
                out.append(_sheet_figure(f"scanpath {sp} · {c} · {src} fixations", rel))
    else:
        out.append('<p class="note">No contact sheets were built.</p>')
    return out


def _layer_sections(kind: _Kind, *, unit: str, n_boot: int, confidence: float, baselines) -> list[str]:
    """Model metamers: score vs layer, the table per model x layer, the contact sheets."""
    out = ["<h2>Model metamers: score by layer</h2>"]
    out.append(
        f'<p class="note">Images whose activations at a layer of a network (or an ensemble of networks) match '
        f"a natural image's, reached from noise (<code>metamergen model-metamers</code>). Each point is the mean "
        f"over natural images with its {confidence:.0%} percentile-bootstrap interval ({n_boot} resamples, "
        "seeded); one line per model, layers in the run's order. <b>Rec</b>: share recognised by the generating "
        "model (an ensemble's: by every member's model), counting the label it gives the natural image as "
        "correct; <b>Null</b>: share passing Feather's null test (Spearman ρ, Pearson r and dB SNR to the target "
        "each above the maximum over pairs of natural images, at every layer matched); <b>Loss</b>: the "
        "synthesis loss at the end. The image metrics compare each metamer with its natural image.</p>"
    )
    out += _figures(kind)
    out.append("<h2>Mean scores per model × layer</h2>")
    out.append(
        f'<p class="note">mean [{confidence:.0%} CI]; n = natural images / metamers. Non-finite scores (NaN, '
        "empty, ±inf) are left out of every mean and interval, and each cell says how many it left out. Also as "
        '<a href="layers_summary.csv">layers_summary.csv</a>.</p>'
    )
    out += _excluded_notes(kind.summary, baselines)
    out += _score_table(kind.summary, [("model", "model", True), ("layer", "layer", True)], kind.metrics, baselines)
    out.append("<h2>Model metamers: contact sheets</h2>")
    if kind.sheets:
        out.append('<p class="note">Per natural image: the image, then its metamer of each layer with its scores.</p>')
        for (model, k), rel in kind.sheets:
            out.append(_sheet_figure(f"{model} · images {k}", rel))
    else:
        out.append('<p class="note">No contact sheets were built.</p>')
    return out


def _sheet_figure(title: str, rel: str) -> str:
    e = html.escape
    return (
        f'<figure class="sheet"><figcaption>{e(title)}</figcaption>'
        f'<a href="{_href(rel)}"><img src="{_href(rel)}" alt="{e(title)}" loading="lazy"></a></figure>'
    )


def _index_html(
    *,
    source: str,
    scenes: _Kind | None,
    layers: _Kind | None,
    unit,
    n_boot,
    confidence,
    version,
    skipped_sheets: int,
    baselines=None,
    notes: Sequence[tuple[str, str]] = (),
) -> str:
    e = html.escape
    kinds = [k for k in (scenes, layers) if k is not None]
    metrics = list(dict.fromkeys(m for k in kinds for m in k.metrics))
    what = []
    if scenes is not None:
        t = scenes.rows
        what.append(
            f"{len(t)} generated images, {t['scene_id'].nunique()} scenes, "
            f"{t[['scene_id', 'scanpath_id']].drop_duplicates().shape[0]} scanpaths"
        )
    if layers is not None:
        t = layers.rows
        what.append(
            f"{len(t)} model metamers of {t['scene_id'].nunique()} natural images "
            f"({t[['model', 'layer']].drop_duplicates().shape[0]} model × layer cells)"
        )
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>MetamerGen report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>MetamerGen report</h1>",
        f"<p>Score table <code>{e(source)}</code>: {'; '.join(what)}; metrics: {e(', '.join(metrics))}. "
        f"metamergen {e(version)}.</p>",
    ]
    if scenes is not None and "model" in scenes.rows.columns:
        models = sorted({str(m) for m in scenes.rows["model"].dropna().unique()})
        out.append(f"<p>Rendered by: {e('; '.join(models) or 'not recorded')}.</p>")
    for title, text in notes:
        out.append(f"<h2>{e(title)}</h2><p>{e(text)}</p>")
    settings = dict(unit=unit, n_boot=n_boot, confidence=confidence, baselines=baselines)
    if scenes is not None:
        out += _scene_sections(scenes, **settings)
    if layers is not None:
        out += _layer_sections(layers, **settings)
    if skipped_sheets:
        out.append(f'<p class="note">{skipped_sheets} further sheet(s) left out (--max-sheets).</p>')
    out.append("</body></html>\n")
    return "\n".join(out)


# -------------------------------------------------------------------------------------- main


@dataclass
class ReportResult:
    """Paths written by :func:`write_report` (relative to ``out`` where noted).

    ``summary_csv`` is ``None`` when the table has no scene metamers, ``layers_summary_csv`` when it
    has no model metamers. ``figures`` are keyed by metric (score vs fixations) and by
    ``"<metric>_by_layer"`` (model metamers). ``excluded`` and ``excluded_baselines`` are
    :func:`excluded_scores` of the scores' and the baselines' summaries: per metric, how many
    non-finite scores were left out of the means (empty when none were).
    """

    out: Path
    index: Path
    summary_csv: Path | None
    figures: dict[str, Path] = field(default_factory=dict)
    sheets: list[Path] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    excluded: dict[str, dict[str, int]] = field(default_factory=dict)
    excluded_baselines: dict[str, dict[str, int]] = field(default_factory=dict)
    layers_summary_csv: Path | None = None


#: What a report folder holds (see the module docstring): a folder with anything else is not replaced.
REPORT_ENTRIES: frozenset[str] = frozenset(
    {"index.html", "summary.csv", "layers_summary.csv", "baselines_summary.csv", "figures", "sheets"}
)
#: What ``metamergen model-metamers`` wrote in its ``report/`` before it became this report: replaced with it.
_FORMER_ENTRIES = frozenset({"recognition_by_layer.png", "metamers.png"})
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
        n
        for n in os.listdir(out)
        if n not in REPORT_ENTRIES | _FORMER_ENTRIES and n not in _DISPOSABLE and temporary_target(n) is None
    )
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ReportError(
            f"--out {out} holds files a report does not write ({shown}); the report replaces the whole folder, "
            "so it refuses: choose a new or empty folder, or move those files out."
        )


def _selected_groups(ts, tm, max_sheets: int | None) -> tuple[list, list, int]:
    """The (key, index) groups that get a contact sheet, in page order: the scene metamers' (``ts``), then
    the model metamers' (``tm``: per model, :data:`LAYER_SHEET_ROWS` natural images a sheet); and how
    many are left out."""
    scene: list = []
    if ts is not None:
        keys = ["scene_id", "scanpath_id", "condition", "fixation_source"]
        scene = sorted(
            ts.groupby(keys, sort=False).groups.items(),
            key=lambda kv: (kv[0][0], kv[0][1], _condition_rank(kv[0][2]), _source_rank(kv[0][3])),
        )
    layer: list = []
    if tm is not None:
        for model, sub in tm.groupby("model", sort=False):
            ids = list(dict.fromkeys(sub["scene_id"]))
            for k in range(0, len(ids), LAYER_SHEET_ROWS):
                chunk = ids[k : k + LAYER_SHEET_ROWS]
                layer.append(((model, f"{k + 1}-{k + len(chunk)}"), sub.index[sub["scene_id"].isin(chunk)]))
    skipped = 0
    if max_sheets is not None and len(scene) + len(layer) > max_sheets:
        skipped = len(scene) + len(layer) - max_sheets
        scene = scene[:max_sheets]
        layer = layer[: max_sheets - len(scene)]
    return scene, layer, skipped


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
        The score table, CSV or Parquet (or a model-metamers ``manifest.jsonl``: its tests alone).
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
    scene_rows, layer_rows = _split_kinds(table)
    if len(scene_rows):
        _check_columns(scene_rows, FIGURE_COLUMNS + (SHEET_COLUMNS if sheets else ()), str(scores))
    if len(layer_rows):
        _check_columns(layer_rows, LAYER_COLUMNS + (("path", "scene") if sheets else ()), str(scores))
    chosen = metric_columns(table, metrics)
    if not chosen:
        raise ReportError(
            f"The score table {scores} has no metric columns with values; expected any of {list(METRIC_INFO)} "
            "(run `metamergen score` first)."
        )
    ts = _clean(scene_rows) if len(scene_rows) else None
    tm = _clean_layers(layer_rows) if len(layer_rows) else None
    scene_metrics = _kind_metrics(ts, chosen, table, requested=metrics)
    layer_metrics = _kind_metrics(tm, chosen, table, requested=metrics, first=tuple(MEASURE_INFO))
    scene_groups, layer_groups, skipped = [], [], 0
    if sheets:
        if ts is not None:
            for i, fx in zip(ts.index, ts["fixations"]):
                _parse_fixations(fx, f"row {i} (image_id {ts.at[i, 'image_id']})")
        for t in (ts, tm):
            if t is not None:
                _check_files(t, root)
        scene_groups, layer_groups, skipped = _selected_groups(ts, tm, max_sheets)
        if ts is not None:
            _check_decodable(ts, scene_groups, root)
        if tm is not None:
            _check_decodable(tm, layer_groups, root)
    _matplotlib()  # fail before writing anything if it is missing
    _check_out(out)

    stats = dict(unit=unit, n_boot=n_boot, confidence=confidence, seed=seed)
    scenes = layers = None
    if ts is not None:
        scenes = _Kind(ts, scene_metrics, summarize_scores(ts, scene_metrics, **stats))
    if tm is not None:
        layers = _Kind(tm, layer_metrics, summarize_layers(tm, layer_metrics, **stats), figure_suffix="_by_layer")
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
        _build_report(
            build,
            scenes=scenes,
            layers=layers,
            base_summary=base_summary,
            root=root,
            scene_groups=scene_groups,
            layer_groups=layer_groups,
            confidence=confidence,
            sheet_height=sheet_height,
        )
        page = _index_html(
            source=str(scores),
            scenes=scenes,
            layers=layers,
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
    kinds = [k for k in (scenes, layers) if k is not None]
    pd = pandas()
    return ReportResult(
        out=out,
        index=out / "index.html",
        summary_csv=out / "summary.csv" if scenes is not None else None,
        layers_summary_csv=out / "layers_summary.csv" if layers is not None else None,
        figures={f"{metric}{k.figure_suffix}": out / rel for k in kinds for metric, rel in k.figures},
        sheets=[out / rel for k in kinds for _, rel in k.sheets],
        metrics=list(chosen),
        excluded=excluded_scores(pd.concat([k.summary for k in kinds], ignore_index=True)),
        excluded_baselines=excluded_scores(base_summary) if base_summary is not None else {},
    )


def _kind_metrics(t, chosen: Sequence[str], table, *, requested, first: Sequence[str] = ()) -> list[str]:
    """The metrics one kind of metamer shows: ``chosen`` (``first`` ones first), less, in a table holding
    both kinds and without ``requested`` metrics, those with no value in this kind's rows."""
    if t is None:
        return []
    pd = pandas()
    ordered = [m for m in first if m in chosen] + [m for m in chosen if m not in first]
    if requested or len(t) == len(table):
        return ordered
    return [m for m in ordered if pd.to_numeric(t[m], errors="coerce").notna().any()]


def _build_report(
    folder: Path,
    *,
    scenes: _Kind | None,
    layers: _Kind | None,
    base_summary,
    root: Path,
    scene_groups,
    layer_groups,
    confidence: float,
    sheet_height: int,
) -> None:
    """Write summaries, figures and sheets into ``folder``; the kinds' ``figures`` and ``sheets`` get their links."""
    if base_summary is not None:
        atomic_write(folder / "baselines_summary.csv", lambda p: base_summary.to_csv(p, index=False))
    used: set[str] = set()
    for kind, csv_name, plot, build, groups in (
        (scenes, "summary.csv", plot_metric, _scene_sheet_builder(), scene_groups),
        (layers, "layers_summary.csv", plot_metric_by_layer, build_layer_sheet, layer_groups),
    ):
        if kind is None:
            continue
        atomic_write(folder / csv_name, lambda p, s=kind.summary: s.to_csv(p, index=False))
        for metric in kind.metrics:
            if not kind.summary.loc[kind.summary["metric"] == metric, "mean"].notna().any():
                continue  # every score of this metric is non-finite: nothing to draw (the table says so)
            rel = f"figures/{_safe(metric)}{kind.figure_suffix}.png"
            plot(kind.summary, metric, folder / rel, confidence=confidence, baselines=base_summary)
            kind.figures.append((metric, rel))
        for key, idx in groups:
            name = ("layers_" if kind is layers else "") + "_".join(_safe(str(k)) for k in key)
            base, k = name, 1
            while name in used:
                k += 1
                name = f"{base}-{k}"
            used.add(name)
            rel = f"sheets/{name}.png"
            sheet = build(kind.rows.loc[idx], root, kind.metrics, height=sheet_height)
            atomic_write(folder / rel, lambda p, im=sheet: im.save(p, format="PNG"))
            kind.sheets.append((tuple(str(k) for k in key), rel))


def _scene_sheet_builder():
    """:func:`build_sheet` with one scene cache for all of a report's sheets (they arrive scene by scene)."""
    cache: dict = {}

    def build(group, root: Path, metrics: Sequence[str], *, height: int) -> Image.Image:
        return build_sheet(group, root, metrics, height=height, scene_cache=cache)

    return build
