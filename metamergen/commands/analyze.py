"""``metamergen analyze``: same/different responses + scores -> the paper's regression analysis."""

from __future__ import annotations

import argparse
import json

from metamergen.commands.report import split_names

__all__ = ["add_parser", "run"]


def run(args: argparse.Namespace) -> int:
    """Handler of ``metamergen analyze``."""
    from metamergen.evaluation.analysis import AnalysisError, write_analysis

    try:
        paths = write_analysis(
            args.responses,
            args.out,
            features=split_names(args.features),
            scores=args.scores,
            on=args.on,
            same=args.same_column,
            by=args.by,
            n_bins=args.bins,
            confidence=args.confidence,
            standardize=not args.raw_units,
            alpha=args.alpha,
        )
    except AnalysisError as err:
        raise SystemExit(f"error: {err}") from err
    result = json.loads(paths["json"].read_text())
    steps = result["overall"]["stepwise"]["steps"]
    if steps:
        print("Forward stepwise (McFadden ΔR²): " + ", ".join(f"{s['feature']} {s['delta_r2']:.3f}" for s in steps))
    print(f"Wrote {', '.join(p.name for p in paths.values())} to {args.out}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``analyze`` to the command line's subparsers."""
    a = subparsers.add_parser(
        "analyze",
        help="which similarity features predict a 'same' response (binned proportions, logistic, stepwise)",
        description="Fit the paper's behavioural analysis to same/different responses joined to the scores: "
        "proportion 'same' per quantile bin (Wilson CIs), logistic regression on standardized features "
        "(IRLS; SEs, McFadden R²), forward stepwise regression with each feature's ΔR².",
    )
    a.add_argument(
        "--responses", required=True, help="CSV/Parquet with a 0/1 'same' column (1 = same) and feature columns"
    )
    a.add_argument(
        "--features",
        nargs="+",
        default=None,
        help="feature columns, e.g. dreamsim,clip,ssim (default: all metric columns present)",
    )
    a.add_argument("--out", required=True, help="output folder")
    a.add_argument("--scores", default=None, help="score table to join the responses to (on --on)")
    a.add_argument("--on", default="image_id", help="join column for --scores (default image_id)")
    a.add_argument("--same-column", default="same", help="response column (default 'same')")
    a.add_argument("--by", default=None, help="also analyse per level of this column, e.g. fixation_source")
    a.add_argument("--bins", type=int, default=5, help="quantile bins for the proportions (default 5)")
    a.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    a.add_argument(
        "--alpha", type=float, default=None, help="stop stepwise selection at LR p >= alpha (default: add all)"
    )
    a.add_argument("--raw-units", action="store_true", help="do not z-score the features (coefficients per raw unit)")
    a.set_defaults(func=run)
    return a
