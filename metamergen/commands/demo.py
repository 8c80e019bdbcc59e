"""``metamergen demo``: the bundled toy-world model renders, scores and reports, offline, on a CPU."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]

DESCRIPTION = """\
Render, score and report held-out toy-world scenes with the bundled demo model, offline on a CPU:

1. writes held-out scenes (the first scenes of the world's test split, never seen in training)
   with toy-viewer scanpaths;
2. renders every scene for fixation prefixes 1, 2, 3, 5, 10, for both streams / peripheral only /
   foveal only, from the viewer's fixations and from the matched random control;
3. scores every generation against its scene with weight-free metrics and object-level measures,
   checks that renders are closer to their own scene than to the other scenes, and prints the
   paired effects (fovea, fixations, periphery, viewer vs random) and the renders against two
   baselines (a flat image, the periphery input);
4. writes the usual report (figures with scene-level bootstrap intervals, contact sheets, HTML).
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``demo`` to the command line's subparsers."""
    d = subparsers.add_parser(
        "demo",
        help="render, score and report held-out toy scenes with the bundled demo model (offline, CPU)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    d.add_argument("--model", default=None, help="demo model folder (default: the bundled one)")
    d.add_argument("--scenes", type=int, default=4, help="held-out scenes to render (default 4)")
    d.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    d.add_argument("--hypotheses", type=int, default=1, help="samples per condition (default 1)")
    d.set_defaults(func=run)
    return d


def run(args: argparse.Namespace) -> int:
    """Handler of ``metamergen demo``."""
    from metamergen.demo.effects import effects_markdown
    from metamergen.demo.run import DEMO_MODEL, run_demo

    if not 1 <= args.steps <= 1000:  # the demo model's scheduler has 1000 timesteps
        raise SystemExit(f"error: --steps must be between 1 and 1000 (the scheduler's timesteps), got {args.steps}.")
    if args.scenes < 2:
        raise SystemExit(
            f"error: --scenes must be >= 2 (each render is compared with the other scenes), got {args.scenes}."
        )
    if args.hypotheses < 1:
        raise SystemExit(f"error: --hypotheses must be >= 1, got {args.hypotheses}.")
    try:
        result = run_demo(
            args.out,
            model=args.model or DEMO_MODEL,
            n_scenes=args.scenes,
            steps=args.steps,
            hypotheses=args.hypotheses,
            progress=True,
        )
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    ovo = result.summary["own_vs_other"]
    print(
        f"{result.summary['n_generations']} generations of {ovo['n_scenes']} held-out scenes in "
        f"{result.summary['timings_s']['total']:.0f} s. Own scene closest for {ovo['own_closest']:.0%} "
        f"(chance {ovo['chance']:.0%}); MSE to own scene / to others = {ovo['ratio']:.2f}."
    )
    print(
        "\nEffects (renders paired by scene, scanpath and hypothesis, against the baselines by scene; averaged "
        "per scene, > 0 = as the paper predicts, 95 % scene bootstrap; also in demo_summary.json and the report):\n"
    )
    print(effects_markdown([*result.summary["effects"], *result.summary["versus_baselines"]]))
    print(f"Report: {result.report_index}")
    return 0
