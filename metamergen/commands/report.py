"""``metamergen report``: score table -> figures, contact sheets, summary.csv and an HTML index."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["add_parser", "run", "split_names"]

#: Bootstrap resampling units (kept here so that --help needs no library import).
CI_UNITS = ("scene", "scanpath", "image")


def split_names(values: Sequence[str] | None) -> list[str] | None:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]``; empty or None -> None (all)."""
    if not values:
        return None
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def run(args: argparse.Namespace) -> int:
    """Handler of ``metamergen report``.

    Bad settings (``--confidence`` outside (0, 1), ...), an unusable table or an unreadable image
    exit with one line before anything is written. Non-finite scores left out of the means are
    reported in one warning line on stderr (and in ``summary.csv`` and ``index.html``).
    """
    import sys

    from metamergen.evaluation.tables import TableError
    from metamergen.viz.report import check_report_settings, describe_excluded, write_report

    try:
        check_report_settings(
            unit=args.ci_unit,
            n_boot=args.n_boot,
            confidence=args.confidence,
            max_sheets=args.max_sheets,
            sheet_height=args.sheet_height,
        )
        res = write_report(
            args.scores,
            args.out,
            root=args.root,
            metrics=split_names(args.metrics),
            unit=args.ci_unit,
            n_boot=args.n_boot,
            confidence=args.confidence,
            seed=args.seed,
            sheets=not args.no_sheets,
            max_sheets=args.max_sheets,
            sheet_height=args.sheet_height,
        )
    except TableError as err:  # ReportError too
        raise SystemExit(f"error: {err}") from err
    tables = ", ".join(p.name for p in (res.summary_csv, res.layers_summary_csv) if p is not None)
    print(
        f"Wrote {len(res.figures)} figure(s), {len(res.sheets)} contact sheet(s), {tables} and index.html "
        f"to {res.out} (metrics: {', '.join(res.metrics)})"
    )
    for what, excluded in (("scores", res.excluded), ("baseline scores", res.excluded_baselines)):
        if excluded:
            print(
                f"metamergen report: warning: non-finite {what} left out of the means: {describe_excluded(excluded)} "
                "(per cell: n_nonfinite in summary.csv and on index.html).",
                file=sys.stderr,
            )
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``report`` to the command line's subparsers."""
    r = subparsers.add_parser(
        "report",
        help="figures, contact sheets and an HTML index from a score table",
        description="From the table `metamergen score` writes: score vs number of fixations per condition and "
        "fixation source with bootstrap CIs, contact sheets (scene + scanpath, the foveated input, the "
        "hypotheses with their scores), summary.csv and index.html. Model metamers (`metamergen model-metamers`' "
        "manifest, scored or not) on the same page: score vs layer per model, with recognition and the null "
        "test, layers_summary.csv and their sheets.",
    )
    r.add_argument("--scores", required=True, help="score table (.csv or .parquet; or a model-metamers manifest.jsonl)")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument(
        "--root",
        default=None,
        help="folder the table's relative image paths are relative to (default: the score table's folder)",
    )
    r.add_argument(
        "--metrics", nargs="+", default=None, help="metric columns to report, e.g. dreamsim,clip (default: all present)"
    )
    r.add_argument(
        "--ci-unit", choices=list(CI_UNITS), default="scene", help="bootstrap resampling unit (default: scene)"
    )
    r.add_argument("--n-boot", type=int, default=10000, help="bootstrap resamples (default 10000)")
    r.add_argument(
        "--confidence", type=float, default=0.95, help="interval level, strictly between 0 and 1 (default 0.95)"
    )
    r.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    r.add_argument("--no-sheets", action="store_true", help="figures and tables only (no image files needed)")
    r.add_argument("--max-sheets", type=int, default=None, help="build at most this many contact sheets")
    r.add_argument("--sheet-height", type=int, default=256, help="panel height of the contact sheets in pixels")
    r.set_defaults(func=run)
    return r
