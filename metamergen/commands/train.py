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
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
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

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train(TrainConfig.from_yaml(args.config, args.overrides), resume=args.resume)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``training/train.py``."""
    p = argparse.ArgumentParser(prog="train.py", description=DESCRIPTION)
    _add_arguments(p)
    return run(p.parse_args(argv))
