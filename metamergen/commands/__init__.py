"""The ``metamergen`` command line (also ``python -m metamergen``): one module per subcommand.

This package is the only place with argparse and :class:`SystemExit`. Each module has
``add_parser(subparsers)``, which imports nothing heavy (so ``--help`` answers at once), and a
handler ``run(args)`` that imports the library it drives. Subcommands, in the order of a study:

* ``demo``: the bundled toy-world model, rendered, scored and reported offline;
* ``render``: scene + one fixation list -> hypotheses, a contact sheet and a JSON record;
* ``generate``: scenes + scanpaths -> a study's hypotheses and manifest (:mod:`metamergen.study`);
* ``score``: manifest -> similarity table (:mod:`metamergen.evaluation`);
* ``report``: score table -> figures, contact sheets and an HTML index (:mod:`metamergen.viz`);
* ``analyze``: same/different responses + scores -> the paper's regression analysis;
* ``convert``: eye-tracking exports -> canonical scanpath JSON Lines (:mod:`metamergen.fixations`);
* ``train``: train the adapters (:mod:`metamergen.training`);
* ``toyworld``: write a toy-world dataset (:mod:`metamergen.demo`).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

#: Subcommand modules of this package, in ``--help`` order (the command to try first comes first).
SUBCOMMANDS: tuple[str, ...] = (
    "demo",
    "render",
    "generate",
    "score",
    "report",
    "analyze",
    "convert",
    "train",
    "toyworld",
)


def build_parser() -> argparse.ArgumentParser:
    """The ``metamergen`` parser with every subcommand (handlers in ``func``)."""
    parser = argparse.ArgumentParser(
        prog="metamergen",
        description="MetamerGen: render what a viewer could believe they saw after a few fixations "
        "(Raina et al., ICLR 2026, arXiv 2601.11675).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metamergen`` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)
