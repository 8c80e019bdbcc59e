"""Behavioural analysis: Wilson intervals, binned proportions, IRLS logistic regression, stepwise."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metamergen.commands.analyze import add_parser as add_analyze_parser
from metamergen.evaluation.analysis import (
    AnalysisError,
    analyze,
    binned_proportions,
    forward_stepwise,
    logistic_regression,
    wilson_interval,
)

TRUE_INTERCEPT, TRUE_SLOPE = 3.0, -10.0  # logit P(same) = 3 - 10 * dreamsim (raw units)


def synthetic(n: int = 4000, seed: int = 0) -> pd.DataFrame:
    """`same` drawn from a known logistic model in dreamsim; `noise` is unrelated."""
    rng = np.random.default_rng(seed)
    ds = rng.normal(0.4, 0.1, n)
    noise = rng.normal(5.0, 2.0, n)
    same = (rng.random(n) < 1 / (1 + np.exp(-(TRUE_INTERCEPT + TRUE_SLOPE * ds)))).astype(int)
    return pd.DataFrame({"image_id": [f"g{i}" for i in range(n)], "dreamsim": ds, "noise": noise, "same": same})


def test_wilson_interval_hand_cases():
    # 5 of 10: centre 0.5, half-width 1.96 * sqrt(.025 + 1.96^2/400) / (1 + 1.96^2/10)
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-5)
    lo90, hi90 = wilson_interval(5, 10, confidence=0.90)
    assert 0.23659 < lo90 and hi90 < 0.76341
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_logistic_regression_recovers_the_true_coefficient():
    d = synthetic()
    X, y = d[["dreamsim", "noise"]].to_numpy(), d["same"].to_numpy()
    raw = logistic_regression(X, y, ["dreamsim", "noise"], standardize=False)
    assert raw.converged
    assert abs(raw.coefficient("dreamsim") - TRUE_SLOPE) < 3 * raw.se[1] and raw.se[1] < 0.6
    assert abs(raw.coefficient("intercept") - TRUE_INTERCEPT) < 3 * raw.se[0]
    assert abs(raw.coefficient("noise")) < 3 * raw.se[2] and raw.p[2] > 0.01 and raw.p[1] < 1e-10
    # the MLE: score equations hold
    Z = np.column_stack([np.ones(len(y)), X])
    p = 1 / (1 + np.exp(-(Z @ raw.coef)))
    assert np.abs(Z.T @ (y - p)).max() < 1e-6 * len(y)

    # standard errors = sqrt(diag(inverse observed information)), checked by finite differences
    def loglik(b):
        eta = Z @ b
        return float((y * eta - np.logaddexp(0, eta)).sum())

    h, k = 1e-4, len(raw.coef)
    H = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            e_i, e_j = np.eye(k)[i] * h, np.eye(k)[j] * h
            H[i, j] = (
                loglik(raw.coef + e_i + e_j)
                - loglik(raw.coef + e_i - e_j)
                - loglik(raw.coef - e_i + e_j)
                + loglik(raw.coef - e_i - e_j)
            ) / (4 * h * h)
    assert raw.se == pytest.approx(np.sqrt(np.diag(np.linalg.inv(-H))), rel=1e-3)
    # McFadden R² against the intercept-only log-likelihood
    pbar = y.mean()
    ll0 = len(y) * (pbar * np.log(pbar) + (1 - pbar) * np.log(1 - pbar))
    assert raw.pseudo_r2 == pytest.approx(1 - loglik(raw.coef) / ll0)
    # standardizing rescales the slope by the feature's SD and leaves the fit unchanged
    std = logistic_regression(X, y, ["dreamsim", "noise"])
    assert std.coefficient("dreamsim") == pytest.approx(raw.coefficient("dreamsim") * X[:, 0].std(), rel=1e-6)
    assert std.pseudo_r2 == pytest.approx(raw.pseudo_r2, rel=1e-9)
    assert std.z[1:] == pytest.approx(raw.z[1:], rel=1e-6)
    assert std.predict_proba(X[:3]) == pytest.approx(p[:3], rel=1e-6)


def test_stepwise_picks_the_true_feature_first_with_a_clearly_larger_gain():
    d = synthetic()
    res = forward_stepwise(d[["noise", "dreamsim"]].to_numpy(), d["same"].to_numpy(), ["noise", "dreamsim"])
    assert res.order == ["dreamsim", "noise"]
    gain = res.delta_r2()
    assert gain["dreamsim"] > 0.05 and gain["noise"] < 0.002 and gain["dreamsim"] > 25 * gain["noise"]
    assert res.single_r2["dreamsim"] == pytest.approx(gain["dreamsim"])
    assert sum(gain.values()) == pytest.approx(res.full.pseudo_r2)
    assert res.steps[0].lr_pvalue < 1e-20 and res.steps[1].lr_pvalue > 0.01
    assert res.unique_r2["noise"] == pytest.approx(gain["noise"])
    stopped = forward_stepwise(
        d[["noise", "dreamsim"]].to_numpy(), d["same"].to_numpy(), ["noise", "dreamsim"], alpha=0.01
    )
    assert stopped.order == ["dreamsim"]


def test_binned_proportions_rise_with_similarity():
    d = synthetic()
    bins = binned_proportions(d["dreamsim"], d["same"], n_bins=5)
    assert [b.n for b in bins] == [800] * 5  # quantile bins
    props = [b.proportion for b in bins]  # bins in increasing distance = decreasing similarity
    assert all(a > b for a, b in zip(props, props[1:])) and props[0] - props[-1] > 0.3
    for b in bins:
        assert (b.ci_low, b.ci_high) == pytest.approx(wilson_interval(b.n_same, b.n))
        assert b.low <= b.mean_feature <= b.high
    flat = binned_proportions(d["noise"], d["same"], n_bins=5)
    assert max(b.proportion for b in flat) - min(b.proportion for b in flat) < 0.08


def test_separation_is_reported_not_hidden():
    x = np.linspace(0, 1, 40)
    with pytest.warns(RuntimeWarning, match="separation"):
        fit = logistic_regression(x, (x > 0.5).astype(int), ["x"])
    assert not fit.converged


def test_analyze_cleans_responses_and_groups(tmp_path: Path):
    d = synthetic(2000)
    d["fixation_source"] = np.where(np.arange(len(d)) % 2, "viewer", "random")
    d["same"] = np.where(d["same"] == 1, "same", "different").astype(object)
    d.loc[3, "same"] = None
    d.loc[5, "dreamsim"] = np.nan
    res = analyze(d, ["dreamsim", "noise"], by="fixation_source")
    assert res["overall"]["n"] == 1998 and res["rows_dropped"] == {"missing response": 1, "missing dreamsim": 1}
    assert set(res["groups"]) == {"random", "viewer"}
    assert res["overall"]["stepwise"]["steps"][0]["feature"] == "dreamsim"
    assert res["directions"]["dreamsim"] == "lower = more similar"
    d.loc[7, "same"] = "maybe"
    with pytest.raises(AnalysisError, match="maybe"):
        analyze(d, ["dreamsim"])
    with pytest.raises(AnalysisError, match="clip"):
        analyze(d, ["dreamsim", "clip"])


def test_analyze_command_writes_json_markdown_and_figure(tmp_path: Path, capsys):
    d = synthetic(1500)
    d[["image_id", "same"]].to_csv(tmp_path / "responses.csv", index=False)
    d[["image_id", "dreamsim", "noise"]].to_parquet(tmp_path / "scores.parquet")
    parser = argparse.ArgumentParser()
    add_analyze_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "analyze",
            "--responses",
            str(tmp_path / "responses.csv"),
            "--scores",
            str(tmp_path / "scores.parquet"),
            "--features",
            "dreamsim,noise",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert args.func(args) == 0
    assert "dreamsim" in capsys.readouterr().out
    out = tmp_path / "out"
    result = json.loads((out / "analysis.json").read_text())
    assert result["overall"]["stepwise"]["steps"][0]["feature"] == "dreamsim"
    assert result["overall"]["logistic"]["coefficients"][1]["term"] == "dreamsim"
    md = (out / "analysis.md").read_text()
    assert "ΔR²" in md and "| 1 | dreamsim |" in md
    assert (out / "binned_proportions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = d[["image_id", "same"]].copy()
    bad.loc[0, "image_id"] = "unknown-id"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    args = parser.parse_args(
        [
            "analyze",
            "--responses",
            str(tmp_path / "bad.csv"),
            "--scores",
            str(tmp_path / "scores.parquet"),
            "--out",
            str(tmp_path / "out2"),
        ]
    )
    with pytest.raises(SystemExit, match="unknown-id"):
        args.func(args)
    assert not (tmp_path / "out2").exists()
