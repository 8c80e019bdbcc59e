"""``metamergen toyworld``: write a toy-world dataset (the demo model's training and test scenes)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["add_parser", "main", "run"]

DESCRIPTION = (
    "Write a toy-world dataset: OUT/train and OUT/test, each with images/, scanpaths.jsonl "
    "(viewer + random), objects.jsonl and dataset.json."
)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output folder")
    p.add_argument("--train", type=int, default=1000, help="training scenes (default 1000)")
    p.add_argument("--test", type=int, default=200, help="test scenes (default 200)")
    p.add_argument("--seed", type=int, default=0, help="world seed (train and test seeds derive from it)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--viewers", type=int, default=1, help="viewer scanpaths per scene (default 1)")
    p.add_argument("--fixations", type=int, default=10, help="fixations per viewer scanpath (default 10)")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``toyworld`` to the command line's subparsers."""
    p = subparsers.add_parser(
        "toyworld", help="write a toy-world dataset (scenes, scanpaths, object boxes)", description=DESCRIPTION
    )
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Handler of ``metamergen toyworld``."""
    from metamergen.demo.toyworld import ToyWorldConfig, write_world

    cfg = ToyWorldConfig(size=args.size, n_fixations=args.fixations, seed=args.seed)
    summary = write_world(args.out, args.train, args.test, args.seed, config=cfg, viewers_per_scene=args.viewers)
    for split, s in summary.items():
        print(f"{split}: {s['n_scenes']} scenes, {s['n_scanpaths']} scanpaths -> {s['dir']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``metamergen toyworld`` as a standalone command."""
    p = argparse.ArgumentParser(prog="metamergen toyworld", description=DESCRIPTION)
    _add_arguments(p)
    return run(p.parse_args(argv))
