"""Feather et al.'s test of success: does a metamer match its target better than any two natural images do?

For a layer, three measures compare a metamer's activations ``m`` with its target's ``a`` (the
natural image's):

- Spearman's ρ (average ranks for ties, as ``scipy.stats.spearmanr``: ReLU layers have many zeros);
- Pearson's r;
- SNR in dB, ``10 * log10(||a|| / ||a - m||)``: the official code's definition (a ratio of norms,
  not of powers, so its values are half the usual power-ratio dB; the test only compares ranks).

The **null distribution** is the same three measures over pairs of *different* natural images
(the first of a pair playing the target). A metamer **passes** when each of its three measures is
strictly greater than the null distribution's *maximum* of that measure; a NaN measure fails. As in
the official code, a pair in which either image's activations are all zero scores 0 on all three.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

# Not plenoptic: it has no null distribution or null test.
__all__ = ["MEASURES", "NullDistribution", "NullTest", "null_distribution", "null_test", "similarity"]

#: The measures of the null test, in the order they are reported.
MEASURES: tuple[str, ...] = ("spearman", "pearson", "snr_db")


def _as_rows(x: Any, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"{what} must be (N, D) activations (or one (D,) vector), got shape {x.shape}.")
    return x


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks of each row (1..D), ties given the mean of the ranks they span (``scipy.stats.rankdata``)."""
    out = np.empty_like(x)
    for i, row in enumerate(x):
        order = np.argsort(row, kind="mergesort")
        sorted_row = row[order]
        new_value = np.r_[True, sorted_row[1:] != sorted_row[:-1]]
        group = np.cumsum(new_value) - 1  # tie group of each sorted position
        starts = np.flatnonzero(new_value)
        ends = np.r_[starts[1:], len(row)]
        mean_rank = (starts + ends + 1) / 2.0  # ranks start..end-1 (0-based) -> mean, 1-based
        out[i, order] = mean_rank[group]
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=1) / denom
    return np.clip(r, -1.0, 1.0)  # NaN (a constant row) stays NaN


def similarity(target: Any, other: Any) -> dict[str, np.ndarray]:
    """Spearman ρ, Pearson r and dB SNR between matching rows of ``target`` and ``other``.

    Parameters
    ----------
    target
        ``(N, D)`` (or ``(D,)``) activations playing the signal: the natural images'.
    other
        Same shape: the metamers' (or the second images' of null pairs).

    Returns
    -------
    dict
        ``"spearman"``, ``"pearson"``, ``"snr_db"`` -> ``(N,)`` float64 arrays. ρ and r are in
        [-1, 1] (NaN for a constant, non-zero row); SNR is +inf for identical rows. A row pair in
        which either side is all zeros scores 0 on all three (the official code's rule).
    """
    a, b = _as_rows(target, "target"), _as_rows(other, "other")
    if a.shape != b.shape:
        raise ValueError(f"target and other must have the same shape, got {a.shape} and {b.shape}.")
    if a.shape[1] == 0:
        raise ValueError("activations have no values (D = 0).")
    noise = np.linalg.norm(a - b, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = 10.0 * np.log10(np.linalg.norm(a, axis=1) / noise)
    out = {"spearman": _pearson(_average_ranks(a), _average_ranks(b)), "pearson": _pearson(a, b), "snr_db": snr}
    zero = ~a.any(axis=1) | ~b.any(axis=1)
    for values in out.values():
        values[zero] = 0.0
    return out


@dataclass(frozen=True)
class NullDistribution:
    """The three measures over pairs of different natural images, for one layer.

    Attributes
    ----------
    spearman, pearson, snr_db
        ``(P,)`` values, one per pair.
    pairs
        ``(P, 2)`` indices of the images of each pair (first = target role) in the activations given.
    """

    spearman: np.ndarray
    pearson: np.ndarray
    snr_db: np.ndarray
    pairs: np.ndarray = field(repr=False)

    @property
    def maxima(self) -> dict[str, float]:
        """Each measure's maximum over the pairs (NaN pairs ignored): the bar a metamer must clear."""
        return {
            m: float(np.nanmax(getattr(self, m))) if np.isfinite(getattr(self, m)).any() else math.nan for m in MEASURES
        }

    def __len__(self) -> int:
        return len(self.pairs)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON-ready): the maxima, the number of pairs and every pair's measures."""
        return {
            "n_pairs": len(self),
            "maxima": self.maxima,
            **{m: getattr(self, m).tolist() for m in MEASURES},
            "pairs": self.pairs.tolist(),
        }


def null_distribution(activations: Any, *, n_pairs: int | None = None, seed: int = 0) -> NullDistribution:
    """Measures between pairs of different natural images' activations at one layer.

    Parameters
    ----------
    activations
        ``(N, D)``: one row per natural image (N >= 2), e.g. from
        :func:`~metamergen.metamers.layer_activations`.
    n_pairs
        ``None``: every ordered pair ``(i, j)``, ``i != j`` (N·(N-1) pairs; SNR is not symmetric).
        Otherwise that many ordered pairs drawn uniformly with replacement from ``seed``.
    seed
        Seed of the draw.

    Notes
    -----
    Feather et al. used 10⁶ pairs of (augmented) training images, each image in one pair; with a
    small pool the pairs here share images, so the maximum is over fewer independent draws.
    """
    acts = _as_rows(activations, "activations")
    n = len(acts)
    if n < 2:
        raise ValueError(f"a null distribution needs at least 2 natural images, got {n}.")
    if n_pairs is None:
        i, j = np.nonzero(~np.eye(n, dtype=bool))
    else:
        if int(n_pairs) < 1:
            raise ValueError(f"n_pairs must be >= 1, got {n_pairs}.")
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n, size=int(n_pairs))
        j = (i + rng.integers(1, n, size=int(n_pairs))) % n  # uniform over the other n - 1 images
    values = similarity(acts[i], acts[j])
    return NullDistribution(**values, pairs=np.stack([i, j], axis=1))


@dataclass(frozen=True)
class NullTest:
    """Outcome of the null test for N metamers at one layer.

    Attributes
    ----------
    measures
        ``"spearman"``, ``"pearson"``, ``"snr_db"`` -> ``(N,)`` values of each metamer against its target.
    null_maxima
        Each measure's maximum over the null distribution.
    """

    measures: dict[str, np.ndarray]
    null_maxima: dict[str, float]

    @property
    def beats(self) -> dict[str, np.ndarray]:
        """Per measure, ``(N,)`` bool: the metamer's value is strictly above the null maximum."""
        return {m: np.asarray(self.measures[m] > self.null_maxima[m]) for m in MEASURES}

    @property
    def passed(self) -> np.ndarray:
        """``(N,)`` bool: all three measures beat the null maximum."""
        beats = self.beats
        return beats["spearman"] & beats["pearson"] & beats["snr_db"]

    def rows(self) -> list[dict[str, Any]]:
        """One plain dict per metamer: its three values, each null maximum and ``passed``."""
        passed = self.passed
        return [
            {
                **{m: float(self.measures[m][k]) for m in MEASURES},
                **{f"null_max_{m}": self.null_maxima[m] for m in MEASURES},
                "passed": bool(passed[k]),
            }
            for k in range(len(passed))
        ]


def null_test(metamer_activations: Any, target_activations: Any, null: NullDistribution) -> NullTest:
    """Feather's null test: each metamer must beat the null maximum on Spearman, Pearson and dB SNR.

    Parameters
    ----------
    metamer_activations
        ``(N, D)``: the metamers' activations at the layer (or ``(D,)`` for one).
    target_activations
        ``(N, D)``: the natural images' they were made to match, row for row.
    null
        The layer's :class:`NullDistribution` (same model, layer and input transform).
    """
    return NullTest(measures=similarity(target_activations, metamer_activations), null_maxima=null.maxima)
