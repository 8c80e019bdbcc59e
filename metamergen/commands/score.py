"""``metamergen score``: manifest -> similarity table (DreamSim, CLIP, weight-free levels)."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from metamergen.evaluation.registry import DEFAULT_METRICS, METRIC_INFO

__all__ = ["add_parser", "main", "parse_score_size", "run"]

#: The weight-free metrics' default score resolution (longer side, pixels): the value of
#: ``metamergen.evaluation.metrics.SCORE_SIZE``, repeated here so ``--help`` imports no torch
#: (tests/test_scoring.py checks that the two agree).
_SCORE_SIZE = 512
#: Smallest --score-size: SSIM's window is 11 px, and scenes are at least 16 px (utils.images).
_MIN_SCORE_SIZE = 16


def parse_score_size(text: str) -> int | None:
    """``--score-size``: a whole number of pixels >= 16, or ``"full"`` (``None``: the original's size).

    Raises
    ------
    SystemExit
        One line naming the flag and what it takes.
    """
    if text.strip().lower() == "full":
        return None
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < _MIN_SCORE_SIZE:
        raise SystemExit(
            f"error: --score-size takes a longer side in pixels >= {_MIN_SCORE_SIZE} (default {_SCORE_SIZE}) or "
            f"'full' for the original's size, got {text!r}."
        )
    return value


def _add_score_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--manifest", required=True, help="manifest.jsonl written by `metamergen generate`")
    s.add_argument("--out", default=None, help="score table (default: scores.csv next to the manifest)")
    s.add_argument("--format", choices=["csv", "parquet"], default=None, help="default: from --out's suffix, else csv")
    s.add_argument(
        "--metrics",
        default=None,
        help=f"comma-separated, from {','.join(METRIC_INFO)} (default: {','.join(DEFAULT_METRICS)}, plus dino with a pipeline)",
    )
    s.add_argument(
        "--clip-model", default="openai/clip-vit-large-patch14", help="CLIP hub id or local folder (default ViT-L/14)"
    )
    s.add_argument(
        "--dreamsim-cache",
        default=None,
        help="folder of DreamSim's weights (default $METAMERGEN_DREAMSIM_CACHE or ~/.cache/metamergen/dreamsim)",
    )
    s.add_argument("--dreamsim-type", default="ensemble", help="DreamSim variant (default ensemble)")
    s.add_argument(
        "--score-size",
        default=str(_SCORE_SIZE),
        help=f"longer side, pixels, at which the weight-free metrics compare each pair (the original's aspect "
        f"ratio; an original already within it keeps its size); 'full' = the original's size (default {_SCORE_SIZE}; "
        "clip, dreamsim and dino use their own square inputs); recorded in the score_resolution column",
    )
    s.add_argument("--batch-size", type=int, default=16, help="pairs per batch (default 16)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--model", help="saved MetamerGenPipeline whose DINOv2 the dino metric uses")
    s.add_argument(
        "--tiny", action="store_true", help="the tiny random offline pipeline's DINOv2 for dino (tests only)"
    )
    s.add_argument("--device", default=None, help="torch device (default cuda if available, else cpu)")
    s.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32", help="dtype of --model")
    s.add_argument(
        "--no-baselines",
        action="store_true",
        help="do not score the baselines (a flat mean-colour image and the periphery input per scene) into baselines.csv",
    )


def run(args: argparse.Namespace) -> int:
    """Handler of ``metamergen score``."""
    from metamergen.commands._common import process_state
    from metamergen.evaluation.metrics import METRICS
    from metamergen.evaluation.scoring import (
        ScoreWarning,
        build_score_metrics,
        load_manifest_rows,
        manifest_order,
        score_manifest,
        write_score_table,
    )
    from metamergen.utils.distributed import leave_process_group

    if args.batch_size < 1:
        raise SystemExit(f"error: --batch-size must be >= 1, got {args.batch_size}.")
    score_size = parse_score_size(args.score_size)
    if args.model and args.tiny:
        raise SystemExit("error: give --model or --tiny, not both.")
    names = None
    if args.metrics is not None:
        names = [n.strip() for n in args.metrics.split(",") if n.strip()]
        unknown = [n for n in names if n not in METRICS]
        if unknown or not names:
            raise SystemExit(
                f"error: unknown metric(s) {unknown or args.metrics!r}; valid names: {', '.join(METRICS)}."
            )
    with_pipe = bool(args.model or args.tiny)
    if names is None:
        names = list(DEFAULT_METRICS) + (["dino"] if with_pipe else [])
    if "dino" in names and not with_pipe:
        raise SystemExit("error: dino uses the pipeline's DINOv2: pass --model <saved pipeline> (or --tiny).")
    out = (
        Path(args.out)
        if args.out
        else Path(args.manifest).parent / ("scores.parquet" if args.format == "parquet" else "scores.csv")
    )
    try:
        load_manifest_rows(args.manifest)  # fail on missing files before any model loads
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    state = process_state(args)
    pipe = None
    if "dino" in names:
        from metamergen.loading import TINY_WARNING, load_model

        if args.tiny:
            print(TINY_WARNING, file=sys.stderr)
        from metamergen.commands._common import half_precision_on_cpu_said_once

        with half_precision_on_cpu_said_once(args.device or "cpu", args.dtype):
            pipe = load_model(model=args.model, tiny=args.tiny, dtype=args.dtype, device=args.device or "cpu").pipe
    try:
        metrics = build_score_metrics(
            names,
            device=args.device,
            batch_size=args.batch_size,
            clip_model=args.clip_model,
            dreamsim_cache=args.dreamsim_cache,
            dreamsim_type=args.dreamsim_type,
            pipe=pipe,
            score_size=score_size,
        )
        split = {} if state is None else {"process_index": state.process_index, "num_processes": state.num_processes}
        main_process = state is None or state.is_main_process
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ScoreWarning)
            rows = score_manifest(
                args.manifest,
                metrics,
                batch_size=args.batch_size,
                progress=not args.no_progress and main_process,
                **split,
            )
        for w in caught:  # one line each: "warning: ssim: 2 of 18 image(s) are smaller than ..."
            if issubclass(w.category, ScoreWarning):
                print(f"warning: {w.message}", file=sys.stderr)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if state is not None:  # each process scored its scenes; the main process writes one table
            from accelerate.utils import gather_object

            rows = manifest_order(args.manifest, gather_object(rows))
            leave_process_group()  # nothing collective follows; the main process writes the table alone
            if not state.is_main_process:
                return 0
        # image paths in the table are relative to the table's own folder, wherever it is written
        base = Path(args.manifest).resolve().parent
        for r in rows:
            r["path"] = os.path.relpath(base / r["path"], out.resolve().parent)
        baselines_path = None
        if not args.no_baselines:
            from metamergen.evaluation.baselines import BASELINES_NAME, score_baselines

            baselines_path = out.parent / BASELINES_NAME
            write_score_table(score_baselines(load_manifest_rows(args.manifest), metrics), baselines_path, "csv")
        write_score_table(rows, out, args.format)
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as err:
        raise SystemExit(f"error: {err}") from None
    also = f" and the baselines to {baselines_path}" if baselines_path else ""
    print(f"Scored {len(rows)} image(s) with {', '.join(m.name for m in metrics)}; wrote {out}{also}")
    return 0


_SCORE_HELP = "score a study's generations against their scenes (DreamSim, CLIP, weight-free levels)"


_SCORE_DESCRIPTION = (
    "Compare each generation in a manifest with its original scene and write a table joined with the "
    "manifest: one row per image, one column per metric."
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``score`` to the command line's subparsers."""
    s = subparsers.add_parser("score", help=_SCORE_HELP, description=_SCORE_DESCRIPTION)
    _add_score_arguments(s)
    s.set_defaults(func=run)
    return s


def main(argv: Sequence[str] | None = None) -> int:
    """``metamergen score`` as a standalone command (``inference/score.py``)."""
    parser = argparse.ArgumentParser(prog="score", description=_SCORE_DESCRIPTION)
    _add_score_arguments(parser)
    return run(parser.parse_args(argv))
