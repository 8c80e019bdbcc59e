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
* ``model-metamers``: images a *network* cannot tell apart, by optimisation (:mod:`metamergen.metamers`);
* ``serve``: the pipeline behind HTTP for live, gaze-contingent experiments (:mod:`metamergen.serve`);
* ``convert``: eye-tracking exports -> canonical scanpath JSON Lines (:mod:`metamergen.fixations`);
* ``train``: train the adapters (:mod:`metamergen.training`);
* ``toyworld``: write a toy-world dataset (:mod:`metamergen.demo`).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

__all__ = ["DEBUG_ENV", "SUBCOMMANDS", "build_parser", "main"]

#: Subcommand modules of this package, in ``--help`` order (the command to try first comes first).
SUBCOMMANDS: tuple[str, ...] = (
    "demo",
    "render",
    "generate",
    "score",
    "report",
    "analyze",
    "metamers",
    "serve",
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
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks instead of one-line errors (or METAMERGEN_DEBUG=1)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


#: Exit codes: 0 done, 1 an unexpected failure, 2 a usage or input error (argparse's code), 130
#: interrupted (the shell's code for Ctrl-C).
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

#: Set to 1 for full tracebacks (the same as ``--debug``).
DEBUG_ENV = "METAMERGEN_DEBUG"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


#: Options whose value may start with a minus sign (argparse would take ``-10,5`` for an option).
_NEGATIVE_VALUE_OPTIONS = ("--fixations",)


def _attach_negative_values(argv: list[str]) -> list[str]:
    """``--fixations -10,5`` -> ``--fixations=-10,5``, the form argparse accepts."""
    import re

    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in _NEGATIVE_VALUE_OPTIONS and i + 1 < len(argv) and re.match(r"-[\d.]", argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metamergen`` console script.

    Errors in the input (a missing file, a bad value, an unreadable image) print one line naming
    what is wrong and exit with 2; anything unexpected prints one line and exits with 1; Ctrl-C
    exits with 130 and says how to resume. ``--debug`` (or ``METAMERGEN_DEBUG=1``) re-raises with
    the full traceback instead.
    """
    import os
    import sys

    parser = build_parser()
    args = parser.parse_args(_attach_negative_values(sys.argv[1:] if argv is None else list(argv)))
    debug = bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    prog = f"metamergen {args.command}"
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(
            f"{prog}: interrupted. Finished outputs are complete; run the same command again to resume.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except SystemExit as e:  # handlers raise SystemExit("error: ...") for bad input
        if debug or e.code is None or isinstance(e.code, int):
            raise
        message = _one_line(e.code)
        print(f"{prog}: {message if message.startswith('error') else 'error: ' + message}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        if debug:
            raise
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - the last line of defence of a command-line tool
        if debug:
            raise
        print(
            f"{prog}: failed: {type(e).__name__}: {_one_line(e)} (run with --debug for the traceback)", file=sys.stderr
        )
        return EXIT_FAILURE
    return EXIT_OK if code is None else int(code)
