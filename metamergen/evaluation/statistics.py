"""Interval statistics the report and the ablations share: unit means and percentile bootstrap CIs.

Intervals are computed over *units* (scenes by default): the images of one scene are averaged
first, so that many renders of one scene do not pass for independent evidence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from metamergen.utils.seeds import derive_seed

__all__ = ["bootstrap_ci", "derive_cell_seed", "paired_difference", "unit_means"]


def unit_means(values: Sequence[float], units: Sequence[Any]) -> np.ndarray:
    """Average ``values`` within each unit (NaNs dropped); one mean per unit, in first-seen order."""
    values = np.asarray(values, dtype=np.float64)
    units = np.asarray([str(u) for u in units])
    ok = np.isfinite(values)
    values, units = values[ok], units[ok]
    if len(values) == 0:
        return np.zeros(0)
    _, first, inverse = np.unique(units, return_index=True, return_inverse=True)
    sums = np.bincount(inverse, weights=values)
    counts = np.bincount(inverse)
    means = sums / counts
    return means[np.argsort(first)]


def bootstrap_ci(
    values: Sequence[float], *, n_boot: int = 10000, confidence: float = 0.95, seed: int | Sequence[int] = 0
) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile-bootstrap interval.

    Resamples the values (one per unit) with replacement ``n_boot`` times and takes the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the resampled means.
    Non-finite values are dropped. Returns ``(mean, low, high)``; ``low``/``high`` are NaN with
    fewer than two values, all three with none.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}.")
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if n < 2:
        return mean, math.nan, math.nan
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    chunk = max(1, 4_000_000 // n)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        boot[start:stop] = v[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha])
    return mean, float(low), float(high)


def derive_cell_seed(seed: int, key: Sequence[str]) -> int:
    """The bootstrap seed of one table cell (metric, condition, source, prefix): a pure function of
    the report's ``seed`` and the cell, so a cell's interval does not depend on the other cells."""
    return derive_seed(int(seed), *key)


def paired_difference(
    a: Sequence[float],
    b: Sequence[float],
    units: Sequence[Any],
    *,
    n_boot: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Mean of the paired differences ``a - b`` with a bootstrap interval over units.

    Pairs (one ``a``, one ``b``, same noise, same fixations but for what is compared) are first
    averaged within each unit (scene), so every unit weighs the same; pairs with a non-finite side
    are dropped.

    Returns
    -------
    dict
        ``mean_a``, ``mean_b`` (means of unit means), ``difference`` and its ``ci_low`` / ``ci_high``,
        ``n_units``, ``n_pairs``.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    units = np.asarray([str(u) for u in units])
    if not (len(a) == len(b) == len(units)):
        raise ValueError(f"a, b and units must have one entry per pair, got {len(a)}, {len(b)}, {len(units)}.")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b, units = a[ok], b[ok], units[ok]
    diff, low, high = bootstrap_ci(unit_means(a - b, units), n_boot=n_boot, confidence=confidence, seed=seed)
    return {
        "mean_a": float(unit_means(a, units).mean()) if len(a) else math.nan,
        "mean_b": float(unit_means(b, units).mean()) if len(b) else math.nan,
        "difference": diff,
        "ci_low": low,
        "ci_high": high,
        "n_units": int(len(np.unique(units))),
        "n_pairs": int(len(a)),
    }
