"""``metamergen train``: train the adapters (``accelerate launch -m metamergen train ...`` for several GPUs)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

__all__ = ["add_parser", "main", "run"]

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
    train(cfg, resume=args.resume, allow_config_change=args.allow_config_change, overwrite=args.overwrite)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``training/train.py``: bad input is one line on stderr and exit code 2, as in
    ``metamergen train`` (``METAMERGEN_DEBUG=1`` for the traceback)."""
    import os
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
