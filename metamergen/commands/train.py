"""``metamergen train``: train the adapters (``accelerate launch -m metamergen train ...`` for several GPUs)."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["add_parser", "main", "remove_unfinished_run", "run"]

DESCRIPTION = (
    "Train MetamerGen's foveal/peripheral adapters. Launch with `accelerate launch training/train.py "
    "--config configs/<name>.yaml [section.key=value ...]`."
)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument(
        "--resume",
        default=None,
        help="'latest' or a checkpoint folder; the config must match the run's config.yaml "
        "(logging, checkpoint and validation settings may change)",
    )
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="with --resume, also accept a changed optim.max_steps (extend a run), run.mixed_precision, "
        "run.attention, run.gradient_checkpointing, run.cpu, data.feature_cache or data.skip_bad_samples "
        "(recorded in config_changes.jsonl)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in a run.output_dir that holds one (checkpoints or an exported pipeline), "
        "deleting that run's outputs first",
    )
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. optim.learning_rate=5e-5")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``train`` to the command line's subparsers."""
    t = subparsers.add_parser(
        "train",
        help="train the adapters (same as training/train.py; use `accelerate launch -m metamergen train ...` for several GPUs)",
        description=DESCRIPTION,
    )
    _add_arguments(t)
    t.set_defaults(func=run)
    return t


def run(args: argparse.Namespace) -> int:
    """Handler of ``metamergen train``: read the config, configure logging, train."""
    from metamergen.training.config import TrainConfig
    from metamergen.training.trainer import train

    if args.allow_config_change and not args.resume:
        raise SystemExit("error: --allow-config-change applies to --resume only (a new run has no config to change).")
    cfg = TrainConfig.from_yaml(args.config, args.overrides)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(cfg.run.output_dir)
    before = set(os.listdir(out)) if out.is_dir() else None
    try:
        train(cfg, resume=args.resume, allow_config_change=args.allow_config_change, overwrite=args.overwrite)
    except BaseException:
        if not args.resume and int(os.environ.get("RANK", "0")) == 0:  # the main process cleans up
            remove_unfinished_run(out, before)
        raise
    return 0


def remove_unfinished_run(out: Path, before: set[str] | None) -> list[str]:
    """After a new run failed: remove what it wrote if it wrote nothing a resume could use.

    A run that failed (or was interrupted) before its first checkpoint leaves only its
    ``config.yaml`` (and perhaps ``logs/``): nothing ``--resume`` can start from. Those are removed,
    and so is ``out`` if the run created it. A run with a ``checkpoint-*`` folder or an exported
    ``pipeline`` / ``adapters`` is left whole, to be resumed.

    Parameters
    ----------
    out
        The run's ``run.output_dir``.
    before
        The names ``out`` held before the run started, or ``None`` if it did not exist.

    Returns
    -------
    list of str
        The names removed (``["."]`` for ``out`` itself).
    """
    import shutil

    from metamergen.training.run_folder import RUN_OUTPUTS

    if not out.is_dir():
        return []
    new = sorted(set(os.listdir(out)) - (before or set()))
    if any(n.startswith("checkpoint-") or n in ("pipeline", "adapters") for n in new):
        return []  # resumable, or finished: keep it whole
    if before is None and all(n in RUN_OUTPUTS for n in new):
        shutil.rmtree(out, ignore_errors=True)
        return ["."]
    removed = [n for n in new if n in RUN_OUTPUTS]
    for name in removed:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``training/train.py``: bad input is one line on stderr and exit code 2, as in
    ``metamergen train`` (``METAMERGEN_DEBUG=1`` for the traceback)."""
    import sys

    from metamergen.commands import DEBUG_ENV, EXIT_USAGE

    p = argparse.ArgumentParser(prog="train.py", description=DESCRIPTION)
    _add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except (SystemExit, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0") or (
            isinstance(e, SystemExit) and not isinstance(e.code, str)
        ):
            raise
        message = " ".join(str(e.code if isinstance(e, SystemExit) else e).split())
        print(f"{p.prog}: {message if message.startswith('error') else 'error: ' + message}", file=sys.stderr)
        return EXIT_USAGE
