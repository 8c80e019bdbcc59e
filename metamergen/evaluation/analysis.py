"""Behavioural analysis: which similarity features predict a "same" response (a scene metamer)?

Input is a table of same/different responses joined to the scores: one row per trial, a binary
``same`` column (1 = "same", the generation is a metamer for that viewer; ``True``/``False`` and
the strings ``same``/``different`` are accepted too) and feature columns (``dreamsim``, ``clip``,
``ssim``, ...). The paper's three analyses:

* :func:`binned_proportions`: proportion "same" per quantile bin of one feature, with Wilson
  score intervals (:func:`wilson_interval`);
* :func:`logistic_regression`: logistic regression of ``same`` on the standardized features
  (z-scores), fitted by iteratively reweighted least squares in numpy, with standard errors from
  the observed information, Wald z and p values and McFadden's pseudo-R²
  (``1 - logL(model) / logL(intercept only)``);
* :func:`forward_stepwise`: starting from the intercept, add at each step the feature that raises
  McFadden's R² most and report its gain ΔR² (the paper: DreamSim, ΔR² = 0.10, was the strongest
  single predictor), with a likelihood-ratio test per step.

Features enter as given (a similarity such as CLIP is not flipped into a distance): the sign of a
coefficient is read with the feature's direction, which the summaries print. Pseudo-R² and ΔR² do
not depend on the sign. Rows with a missing response or feature are dropped (and counted); all
models of one analysis use the same rows, so their R² values are comparable.

``metamergen analyze`` (:func:`register_analyze_command`) writes ``analysis.json``,
``analysis.md`` and ``binned_proportions.png``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from metamergen.evaluation.registry import METRIC_INFO, metric_direction, metric_info
from metamergen.evaluation.tables import TableError, pandas, read_table
from metamergen.utils.io import atomic_write
from metamergen.utils.plotting import figure_classes

__all__ = [
    "AnalysisError",
    "Bin",
    "LogisticFit",
    "StepwiseResult",
    "StepwiseStep",
    "analyze",
    "binned_proportions",
    "forward_stepwise",
    "logistic_regression",
    "wilson_interval",
    "write_analysis",
]


class AnalysisError(ValueError):
    """Data the analysis cannot use (missing columns, non-binary responses, constant features)."""


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion of ``k`` successes in ``n`` trials (NaNs for n = 0)."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"Need 0 <= k <= n, got k={k}, n={n}.")
    if n == 0:
        return math.nan, math.nan
    z = _z(confidence)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


# ------------------------------------------------------------------------------------- binning


@dataclass
class Bin:
    """One quantile bin of a feature: its edges, mean value and the proportion "same"."""

    index: int
    low: float
    high: float
    mean_feature: float
    n: int
    n_same: int
    proportion: float
    ci_low: float
    ci_high: float


def binned_proportions(x: Sequence[float], same: Sequence[int], n_bins: int = 5, confidence: float = 0.95) -> list[Bin]:
    """Proportion "same" per quantile bin of ``x``, bins in increasing ``x``.

    Edges are the ``0, 1/n_bins, ..., 1`` quantiles of ``x``; a value on an inner edge goes to the
    upper bin, the maximum to the last bin. Tied values can merge edges, giving fewer bins.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(same, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"x and same differ in length ({len(x)} vs {len(y)}).")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}.")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) == 0:
        return []
    edges = np.unique(np.quantile(x, np.linspace(0, 1, n_bins + 1)))
    if len(edges) == 1:
        edges = np.array([edges[0], edges[0]])
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    bins = []
    for b in range(len(edges) - 1):
        sel = idx == b
        n, k = int(sel.sum()), int(y[sel].sum())
        if n == 0:
            continue
        lo, hi = wilson_interval(k, n, confidence)
        bins.append(Bin(b, float(edges[b]), float(edges[b + 1]), float(x[sel].mean()), n, k, k / n, lo, hi))
    return bins


# ------------------------------------------------------------------------------------ logistic


def _loglik(y: np.ndarray, eta: np.ndarray) -> float:
    # log p = -log(1 + e^-eta), log(1 - p) = -log(1 + e^eta), both without overflow
    return float(-(y * np.logaddexp(0, -eta) + (1 - y) * np.logaddexp(0, eta)).sum())


def _null_loglik(y: np.ndarray) -> float:
    p = y.mean()
    if p in (0.0, 1.0):
        return 0.0
    return float(len(y) * (p * math.log(p) + (1 - p) * math.log(1 - p)))


def _sigmoid(eta: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0, -eta))


def _pvalue(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2)) if math.isfinite(z) else math.nan


@dataclass
class LogisticFit:
    """A fitted logistic regression of ``same`` on features.

    ``coef``, ``se``, ``z``, ``p`` start with the intercept. With ``standardized`` the feature
    coefficients are per standard deviation (``means``/``sds`` give the scaling used; a raw-unit
    coefficient is ``coef / sd``) and ``odds_ratio`` is the odds ratio per SD.
    """

    features: list[str]
    coef: np.ndarray
    se: np.ndarray
    z: np.ndarray
    p: np.ndarray
    loglik: float
    loglik_null: float
    pseudo_r2: float
    n: int
    n_same: int
    converged: bool
    iterations: int
    standardized: bool
    means: np.ndarray
    sds: np.ndarray

    @property
    def terms(self) -> list[str]:
        return ["intercept", *self.features]

    @property
    def odds_ratio(self) -> np.ndarray:
        return np.exp(self.coef)

    def coefficient(self, feature: str) -> float:
        return float(self.coef[self.terms.index(feature)])

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """P(same) for raw feature rows ``X`` (``(n, len(features))``, the fit's scaling is applied)."""
        X = (np.asarray(X, dtype=np.float64).reshape(-1, len(self.features)) - self.means) / self.sds
        return _sigmoid(self.coef[0] + X @ self.coef[1:])

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "standardized": self.standardized,
            "coefficients": [
                {
                    "term": t,
                    "coef": float(c),
                    "se": float(s),
                    "z": float(z),
                    "p": float(p),
                    "odds_ratio": float(math.exp(c)),
                    **({"mean": float(self.means[i - 1]), "sd": float(self.sds[i - 1])} if i else {}),
                }
                for i, (t, c, s, z, p) in enumerate(zip(self.terms, self.coef, self.se, self.z, self.p))
            ],
            "loglik": self.loglik,
            "loglik_null": self.loglik_null,
            "mcfadden_r2": self.pseudo_r2,
            "aic": 2 * len(self.coef) - 2 * self.loglik,
            "n": self.n,
            "n_same": self.n_same,
            "converged": self.converged,
            "iterations": self.iterations,
        }


def _check_binary(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64).ravel()
    bad = ~np.isin(y, (0.0, 1.0))
    if bad.any():
        raise AnalysisError(f"The response must be 0/1; found {sorted(set(y[bad].tolist()))[:5]}.")
    return y


def logistic_regression(
    X: np.ndarray,
    y: Sequence[int],
    features: Sequence[str] | None = None,
    *,
    standardize: bool = True,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> LogisticFit:
    """Fit ``P(same) = sigmoid(b0 + X b)`` by iteratively reweighted least squares.

    Parameters
    ----------
    X
        ``(n, k)`` features (``k`` may be 0: intercept only). Must be finite.
    y
        ``(n,)`` responses, 0 or 1.
    features
        Names of the ``k`` columns (default ``x0, x1, ...``).
    standardize
        Z-score each column first (mean 0, SD 1 with ``ddof=0``), so coefficients are per SD.
    max_iter, tol
        IRLS stops when the log-likelihood changes by less than ``tol`` (relative). A fit that
        does not converge (e.g. perfect separation) is returned with ``converged=False`` and a
        warning.
    """
    y = _check_binary(y)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    X = X.reshape(len(y), -1)
    k = X.shape[1]
    names = list(features) if features is not None else [f"x{i}" for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} feature names for {k} columns.")
    if not np.isfinite(X).all():
        raise AnalysisError("Features contain NaN or infinite values; drop those rows first.")
    n = len(y)
    if n == 0:
        raise AnalysisError("No rows to fit.")
    if y.min() == y.max():
        raise AnalysisError(
            f"All {n} responses are {'same' if y[0] else 'different'}: a logistic regression needs both."
        )
    means = X.mean(axis=0) if standardize else np.zeros(k)
    sds = X.std(axis=0) if standardize else np.ones(k)
    constant = [nm for nm, s, col in zip(names, sds, X.T) if (s == 0 if standardize else np.ptp(col) == 0)]
    if constant:
        raise AnalysisError(f"Feature(s) {constant} are constant over the {n} rows: they cannot predict anything.")
    Z = np.column_stack([np.ones(n), (X - means) / sds])
    beta = np.zeros(k + 1)
    beta[0] = math.log(y.mean() / (1 - y.mean()))
    ll = _loglik(y, Z @ beta)
    converged, it = False, 0
    for it in range(1, max_iter + 1):  # noqa: B007 - read after the loop: iterations used
        eta = Z @ beta
        p = _sigmoid(eta)
        w = np.clip(p * (1 - p), 1e-12, None)
        H = Z.T @ (Z * w[:, None])
        try:
            step = np.linalg.solve(H, Z.T @ (y - p))
        except np.linalg.LinAlgError as err:
            raise AnalysisError(f"Features {names} are collinear (singular information matrix).") from err
        new, t = beta + step, 1.0
        new_ll = _loglik(y, Z @ new)
        while new_ll < ll - 1e-12 * abs(ll) and t > 1e-6:  # step halving keeps the likelihood rising
            t /= 2
            new = beta + t * step
            new_ll = _loglik(y, Z @ new)
        beta, done = new, abs(new_ll - ll) <= tol * (abs(ll) + tol)
        ll = new_ll
        if done:
            converged = True
            break
    p = _sigmoid(Z @ beta)
    w = p * (1 - p)
    H = Z.T @ (Z * w[:, None])
    try:
        cov = np.linalg.inv(H)
        se = np.sqrt(np.clip(np.diag(cov), 0, None))
    except np.linalg.LinAlgError:
        se = np.full(k + 1, math.nan)
    if not converged or (standardize and np.any(np.abs(beta[1:]) > 30)):
        converged = False
        warnings.warn(
            f"Logistic regression on {names} did not converge in {max_iter} IRLS iterations (perfect or "
            "quasi-complete separation?); coefficients and standard errors are unreliable.",
            RuntimeWarning,
            stacklevel=2,
        )
    ll0 = _null_loglik(y)
    z = beta / se
    return LogisticFit(
        features=names,
        coef=beta,
        se=se,
        z=z,
        p=np.array([_pvalue(v) for v in z]),
        loglik=ll,
        loglik_null=ll0,
        pseudo_r2=1 - ll / ll0,
        n=n,
        n_same=int(y.sum()),
        converged=converged,
        iterations=it,
        standardized=standardize,
        means=means,
        sds=sds,
    )


# ------------------------------------------------------------------------------------ stepwise


@dataclass
class StepwiseStep:
    """One forward step: the feature added, McFadden R² after it, its gain and LR test."""

    step: int
    feature: str
    pseudo_r2: float
    delta_r2: float
    lr_stat: float
    lr_pvalue: float
    coef: float
    se: float


@dataclass
class StepwiseResult:
    """Forward selection path plus each feature's single and unique contributions.

    ``single_r2[f]``: McFadden R² of ``f`` alone (its ΔR² over the intercept).
    ``unique_r2[f]``: R² lost when ``f`` is dropped from the model with all features.
    """

    steps: list[StepwiseStep]
    single_r2: dict[str, float]
    unique_r2: dict[str, float]
    full: LogisticFit
    n: int

    @property
    def order(self) -> list[str]:
        return [s.feature for s in self.steps]

    def delta_r2(self) -> dict[str, float]:
        return {s.feature: s.delta_r2 for s in self.steps}

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": [asdict(s) for s in self.steps],
            "single_r2": dict(self.single_r2),
            "unique_r2": dict(self.unique_r2),
            "full_model": self.full.to_dict(),
            "n": self.n,
        }


def _chi2_1_sf(x: float) -> float:
    return math.erfc(math.sqrt(max(x, 0.0) / 2))


def forward_stepwise(
    X: np.ndarray,
    y: Sequence[int],
    features: Sequence[str],
    *,
    standardize: bool = True,
    alpha: float | None = None,
    max_features: int | None = None,
) -> StepwiseResult:
    """Forward stepwise logistic regression ordered by McFadden R² gain.

    At each step every remaining feature is tried; the one giving the largest R² is added and
    its ΔR², likelihood-ratio statistic ``2 (logL_new - logL_old)`` and p value (χ², 1 df) are
    recorded. By default all features are added (the full ordering); with ``alpha`` selection
    stops before a feature whose LR p value is ``>= alpha``; ``max_features`` caps the steps.
    """
    y = _check_binary(y)
    X = np.asarray(X, dtype=np.float64).reshape(len(y), -1)
    names = list(features)
    if len(names) != X.shape[1]:
        raise ValueError(f"{len(names)} feature names for {X.shape[1]} columns.")
    if len(set(names)) != len(names):
        raise ValueError(f"Feature names repeat: {names}.")
    col = {nm: i for i, nm in enumerate(names)}

    def fit(subset: Sequence[str]) -> LogisticFit:
        return logistic_regression(X[:, [col[s] for s in subset]], y, subset, standardize=standardize)

    null = fit([])
    single = {nm: fit([nm]) for nm in names}
    chosen: list[str] = []
    current = null
    steps = []
    limit = len(names) if max_features is None else min(max_features, len(names))
    while len(chosen) < limit:
        candidates = {nm: (single[nm] if not chosen else fit([*chosen, nm])) for nm in names if nm not in chosen}
        best = max(candidates, key=lambda nm: (candidates[nm].pseudo_r2, -names.index(nm)))
        f = candidates[best]
        lr = 2 * (f.loglik - current.loglik)
        pval = _chi2_1_sf(lr)
        if alpha is not None and pval >= alpha:
            break
        i = f.terms.index(best)
        steps.append(
            StepwiseStep(
                len(chosen) + 1,
                best,
                f.pseudo_r2,
                f.pseudo_r2 - current.pseudo_r2,
                lr,
                pval,
                float(f.coef[i]),
                float(f.se[i]),
            )
        )
        chosen.append(best)
        current = f
    full = fit(names)
    unique = {}
    for nm in names:
        rest = [m for m in names if m != nm]
        unique[nm] = full.pseudo_r2 - (fit(rest).pseudo_r2 if rest else 0.0)
    return StepwiseResult(steps, {nm: single[nm].pseudo_r2 for nm in names}, unique, full, len(y))


# ------------------------------------------------------------------------------ table analysis


_SAME_WORDS = {
    "same": 1.0,
    "different": 0.0,
    "diff": 0.0,
    "true": 1.0,
    "false": 0.0,
    "yes": 1.0,
    "no": 0.0,
    "1": 1.0,
    "0": 0.0,
    "1.0": 1.0,
    "0.0": 0.0,
}


def _responses(series) -> np.ndarray:
    """Response column -> float array of 0/1 and NaN (missing)."""
    pd = pandas()
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        y = pd.to_numeric(series, errors="coerce").astype(float).to_numpy()
    else:
        text = series.astype(str).str.strip().str.lower()
        missing = series.isna() | text.isin(["", "nan", "none", "<na>"])
        mapped = text.map(_SAME_WORDS)
        bad = mapped.isna() & ~missing
        if bad.any():
            raise AnalysisError(
                f"Response column {series.name!r} must be 1/0 (or same/different, true/false); found "
                f"{sorted(set(series[bad].astype(str)))[:5]}."
            )
        y = mapped.astype(float).to_numpy()
    ok = np.isfinite(y)
    if not np.isin(y[ok], (0.0, 1.0)).all():
        raise AnalysisError(
            f"Response column {series.name!r} must be 1 (same) or 0 (different); found {sorted(set(y[ok]) - {0.0, 1.0})[:5]}."
        )
    return y


def _analyze_rows(
    X: np.ndarray,
    y: np.ndarray,
    features: list[str],
    n_bins: int,
    confidence: float,
    standardize: bool,
    alpha: float | None,
) -> dict[str, Any]:
    n_same = int(y.sum())
    out: dict[str, Any] = {"n": len(y), "n_same": n_same, "proportion_same": n_same / len(y) if len(y) else math.nan}
    out["proportion_same_ci"] = list(wilson_interval(n_same, len(y), confidence))
    out["binned"] = {
        f: [asdict(b) for b in binned_proportions(X[:, i], y, n_bins, confidence)] for i, f in enumerate(features)
    }
    fit = logistic_regression(X, y, features, standardize=standardize)
    out["logistic"] = fit.to_dict()
    out["stepwise"] = forward_stepwise(X, y, features, standardize=standardize, alpha=alpha).to_dict()
    return out


def analyze(
    table,
    features: Sequence[str],
    *,
    same: str = "same",
    by: str | None = None,
    n_bins: int = 5,
    confidence: float = 0.95,
    standardize: bool = True,
    alpha: float | None = None,
) -> dict[str, Any]:
    """All three analyses on a response table; a JSON-ready dict.

    Parameters
    ----------
    table
        pandas DataFrame with the response column and the feature columns.
    features
        Feature columns (e.g. ``["dreamsim", "clip", "ssim"]``).
    same
        The response column (1 = "same").
    by
        Optional grouping column (e.g. ``fixation_source``): the analyses are also run per level,
        under ``"groups"`` (the paper found CLIP predictive for the viewer's own fixations only).
    n_bins, confidence, standardize, alpha
        See :func:`binned_proportions`, :func:`logistic_regression`, :func:`forward_stepwise`.
    """
    pd = pandas()
    features = list(features)
    if not features:
        raise AnalysisError("Name at least one feature column.")
    need = [same, *features, *([by] if by else [])]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise AnalysisError(f"The response table lacks the column(s) {missing}; columns found: {list(table.columns)}.")
    for f in features:
        if not pd.api.types.is_numeric_dtype(table[f]):
            raise AnalysisError(f"Feature column {f!r} is not numeric (dtype {table[f].dtype}).")
    y = _responses(table[same])
    X = table[features].to_numpy(dtype=np.float64)
    ok = np.isfinite(y) & np.isfinite(X).all(axis=1)
    dropped = {"missing response": int((~np.isfinite(y)).sum())}
    for i, f in enumerate(features):
        dropped[f"missing {f}"] = int((np.isfinite(y) & ~np.isfinite(X[:, i])).sum())
    if ok.sum() == 0:
        raise AnalysisError("No row has a response and every feature.")
    result: dict[str, Any] = {
        "response": same,
        "features": features,
        "directions": {f: metric_direction(f) for f in features},
        "standardized": standardize,
        "confidence": confidence,
        "rows_read": len(table),
        "rows_dropped": {k: v for k, v in dropped.items() if v},
        "overall": _analyze_rows(X[ok], y[ok], features, n_bins, confidence, standardize, alpha),
    }
    if by:
        result["by"] = by
        groups = {}
        levels = table[by].astype(str).to_numpy()
        for level in sorted(set(levels[ok])):
            sel = ok & (levels == level)
            try:
                groups[level] = _analyze_rows(X[sel], y[sel], features, n_bins, confidence, standardize, alpha)
            except AnalysisError as err:
                groups[level] = {"n": int(sel.sum()), "error": str(err)}
        result["groups"] = groups
    return result


# ---------------------------------------------------------------------------------- outputs


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        if v != 0 and abs(v) < 10**-digits:
            return f"{v:.1e}"
        return f"{v:.{digits}f}"
    return str(v)


def _markdown_block(res: dict[str, Any], title: str, confidence: float) -> list[str]:
    lines = [f"## {title}", ""]
    if "error" in res:
        return lines + [f"Not analysed ({res['n']} rows): {res['error']}", ""]
    lo, hi = res["proportion_same_ci"]
    lines += [
        f'{res["n"]} trials, {res["n_same"]} "same" ({res["proportion_same"]:.1%}, '
        f"{confidence:.0%} Wilson CI {lo:.1%}–{hi:.1%}).",
        "",
    ]
    st = res["stepwise"]
    lines += [
        "### Forward stepwise logistic regression (McFadden R²)",
        "",
        "| step | feature | R² | ΔR² | LR χ² | p | β (per SD) | SE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in st["steps"]:
        lines.append(
            f"| {s['step']} | {s['feature']} | {_f(s['pseudo_r2'])} | **{_f(s['delta_r2'])}** | "
            f"{_f(s['lr_stat'], 2)} | {_f(s['lr_pvalue'])} | {_f(s['coef'])} | {_f(s['se'])} |"
        )
    lines += [
        "",
        "Each feature alone (R² over the intercept) and uniquely (R² lost when dropped from the full model):",
        "",
        "| feature | direction | R² alone | unique ΔR² |",
        "|---|---|---|---|",
    ]
    for f in st["single_r2"]:
        lines.append(f"| {f} | {metric_direction(f)} | {_f(st['single_r2'][f])} | {_f(st['unique_r2'][f])} |")
    lg = res["logistic"]
    lines += [
        "",
        f"### Logistic regression on all features (McFadden R² = {_f(lg['mcfadden_r2'])}, "
        f"n = {lg['n']}{'' if lg['converged'] else ', NOT CONVERGED'})",
        "",
        "| term | β | SE | z | p | odds ratio |",
        "|---|---|---|---|---|---|",
    ]
    for c in lg["coefficients"]:
        lines.append(
            f"| {c['term']} | {_f(c['coef'])} | {_f(c['se'])} | {_f(c['z'], 2)} | {_f(c['p'])} | {_f(c['odds_ratio'])} |"
        )
    lines += ["", '### Proportion "same" per quantile bin', ""]
    for f, bins in res["binned"].items():
        lines += [
            f"**{f}** ({metric_direction(f)})",
            "",
            f"| bin | range | n | same | {confidence:.0%} CI |",
            "|---|---|---|---|---|",
        ]
        for b in bins:
            lines.append(
                f"| {b['index'] + 1} | {_f(b['low'])}–{_f(b['high'])} | {b['n']} | {b['proportion']:.1%} | "
                f"{b['ci_low']:.1%}–{b['ci_high']:.1%} |"
            )
        lines.append("")
    return lines


def analysis_markdown(result: dict[str, Any], source: str = "") -> str:
    """A readable Markdown summary of :func:`analyze`'s result."""
    lines = ['# Behavioural analysis: what predicts a "same" response', ""]
    if source:
        lines += [f"Responses: `{source}`; response column `{result['response']}` (1 = same).", ""]
    lines += [
        f"Features: {', '.join(f'{f} ({d})' for f, d in result['directions'].items())}. "
        + ("Coefficients are per standard deviation of the feature (z-scored). " if result["standardized"] else "")
        + 'A negative β for a distance (or a positive β for a similarity) means: more similar → more "same".',
        "",
    ]
    if result["rows_dropped"]:
        lines += ["Rows dropped: " + ", ".join(f"{v} ({k})" for k, v in result["rows_dropped"].items()) + ".", ""]
    lines += _markdown_block(result["overall"], "All trials", result["confidence"])
    for level, res in result.get("groups", {}).items():
        lines += _markdown_block(res, f"{result['by']} = {level}", result["confidence"])
    return "\n".join(lines) + "\n"


def plot_binned(result: dict[str, Any], path: str | Path) -> Path:
    """Proportion "same" vs feature (bin means, Wilson CIs): one panel per feature; one line per group."""
    Figure, FigureCanvasAgg = figure_classes()
    features = result["features"]
    ncol = min(3, len(features))
    nrow = math.ceil(len(features) / ncol)
    fig = Figure(figsize=(4.0 * ncol, 3.3 * nrow), dpi=150)
    FigureCanvasAgg(fig)
    series = [("all trials", result["overall"])]
    series += [(f"{result['by']} = {k}", v) for k, v in result.get("groups", {}).items() if "binned" in v]
    for i, feat in enumerate(features):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        for j, (label, res) in enumerate(series):
            bins = res["binned"][feat]
            if not bins:
                continue
            x = np.array([b["mean_feature"] for b in bins])
            p = np.array([b["proportion"] for b in bins])
            err = [p - np.array([b["ci_low"] for b in bins]), np.array([b["ci_high"] for b in bins]) - p]
            ax.errorbar(
                x, p, yerr=err, marker="o", markersize=4, capsize=3, linestyle="-" if j == 0 else "--", label=label
            )
        ax.set_xlabel(f"{metric_info(feat).label}\n({metric_direction(feat)})", fontsize=8)
        ax.set_ylabel('proportion "same"', fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
        if len(series) > 1 and i == 0:
            ax.legend(fontsize=6, frameon=False)
    fig.suptitle(f'Proportion "same" per quantile bin ({result["confidence"]:.0%} Wilson CIs)', fontsize=9)
    fig.tight_layout()
    return atomic_write(path, lambda p: fig.savefig(p, format="png"))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_analysis(
    responses: str | Path,
    out: str | Path,
    *,
    features: Sequence[str] | None = None,
    scores: str | Path | None = None,
    on: str = "image_id",
    **kwargs: Any,
) -> dict[str, Path]:
    """Read the responses (optionally joined to a score table on ``on``), run :func:`analyze`,
    write ``analysis.json``, ``analysis.md`` and ``binned_proportions.png`` into ``out``.

    Without ``features``: every known metric column (:data:`~metamergen.evaluation.registry.METRIC_INFO`) present.
    """
    try:
        table = read_table(responses)
        if scores is not None:
            table = _join(table, read_table(scores), on, str(responses), str(scores))
    except TableError as err:
        raise AnalysisError(str(err)) from err
    if not features:
        features = [m for m in METRIC_INFO if m in table.columns]
        if not features:
            raise AnalysisError(f"No feature columns found (looked for {list(METRIC_INFO)}); pass --features.")
    try:
        figure_classes()  # fail before writing anything if it is missing
    except ImportError as err:
        raise AnalysisError(str(err)) from err
    result = analyze(table, features, **kwargs)
    result["source"] = str(responses) + (f" joined to {scores} on {on}" if scores is not None else "")
    out = Path(out)
    paths = {"json": out / "analysis.json", "markdown": out / "analysis.md", "figure": out / "binned_proportions.png"}
    text = json.dumps(_jsonable(result), indent=2)
    atomic_write(paths["json"], lambda p: Path(p).write_text(text, encoding="utf-8"))
    md = analysis_markdown(result, result["source"])
    atomic_write(paths["markdown"], lambda p: Path(p).write_text(md, encoding="utf-8"))
    plot_binned(result, paths["figure"])
    return paths


def _join(responses, scores, on: str, rname: str, sname: str):
    for name, t in ((rname, responses), (sname, scores)):
        if on not in t.columns:
            raise AnalysisError(f"{name} has no column {on!r} to join on.")
    if scores[on].duplicated().any():
        raise AnalysisError(f"{sname}: {on!r} is not unique, so the join would duplicate responses.")
    unknown = sorted(set(responses[on].astype(str)) - set(scores[on].astype(str)))
    if unknown:
        raise AnalysisError(f"{len(unknown)} {on} value(s) of {rname} are not in {sname}, e.g. {unknown[:5]}.")
    r = responses.assign(**{on: responses[on].astype(str)})
    s = scores.assign(**{on: scores[on].astype(str)})
    overlap = [c for c in s.columns if c in r.columns and c != on]
    return r.merge(s.drop(columns=overlap), on=on, how="left", validate="many_to_one")
