"""The paper's ablation in miniature, on held-out toy scenes with the bundled demo model.

    python inference/ablation.py --out outputs/ablation            # 32 scenes, 2 samples each
    python inference/ablation.py --scenes 4 --hypotheses 1 --steps 4 --out /tmp/abl   # smoke run

Renders (via :func:`metamergen.demo.run.run_demo`) every held-out scene for prefixes 1, 2, 3, 5, 10,
both streams / peripheral only / foveal only, viewer and matched random fixations (paired noise),
scores them, and answers the questions of :mod:`metamergen.demo.effects` with scene-level paired
bootstrap intervals (95 %): the fovea's gain on fixated objects, its growth with fixations, the
periphery's layout and the whole-image ordering of the streams, viewer vs random fixations, and
the renders against the flat-image and periphery-input baselines.

Each difference is signed so that a positive value means "as the paper predicts", whatever the
metric's direction. The table goes to ``<out>/ablation.md`` and ``<out>/ablation.json``. What comes
out is reported as it comes out; nothing here is tuned to a result.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from metamergen.demo.effects import (  # noqa: E402
    BASELINE_MEASURES,
    baseline_comparisons,
    demo_effects,
    effects_markdown,
)
from metamergen.demo.run import DEMO_MODEL, DEMO_PERIPHERAL_BLUR, run_demo  # noqa: E402
from metamergen.evaluation.baselines import BASELINES_NAME  # noqa: E402
from metamergen.evaluation.tables import read_table  # noqa: E402
from metamergen.utils.io import atomic_write  # noqa: E402


def ablation_table(table, baselines=None, *, n_boot: int = 10000, seed: int = 0) -> list[dict]:
    """The demo's paired effects (:func:`metamergen.demo.effects.demo_effects`) and, with the
    baseline table, the renders against the baselines (:data:`~metamergen.demo.effects.BASELINE_MEASURES`)."""
    rows = demo_effects(table, n_boot=n_boot, seed=seed)
    if baselines is not None:
        rows += baseline_comparisons(table, baselines, BASELINE_MEASURES, n_boot=n_boot, seed=seed)
    return rows


def _markdown(rows: list[dict], summary: dict) -> str:
    ovo = summary["own_vs_other"]
    lines = [
        f"Held-out scenes: {summary['n_scenes']}, generations: {summary['n_generations']}, "
        f"samples per condition: {summary['settings']['hypotheses']}, DDIM steps: {summary['settings']['steps']}, "
        f"periphery s = {summary['settings']['peripheral_blur']:g}.",
        f"Own scene closest (pixel MSE) for {ovo['own_closest']:.0%} of generations (chance {ovo['chance']:.0%}); "
        f"MSE own / other = {ovo['ratio']:.3f}.",
        "",
        "Renders of one scene, scanpath and hypothesis share their initial noise, so differences are paired; "
        "each is averaged within a scene, signed so that > 0 is the paper's prediction (A better than B), "
        "with a 95 % scene-level bootstrap interval.",
        "",
    ]
    return "\n".join(lines) + "\n" + effects_markdown(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/ablation")
    p.add_argument("--model", default=str(DEMO_MODEL))
    p.add_argument("--scenes", type=int, default=32)
    p.add_argument("--hypotheses", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument(
        "--peripheral-blur",
        type=float,
        default=DEMO_PERIPHERAL_BLUR,
        help=f"the periphery's down/up scale (default the demo's {DEMO_PERIPHERAL_BLUR:g})",
    )
    p.add_argument("--n-boot", type=int, default=10000)
    args = p.parse_args(argv)
    result = run_demo(
        args.out,
        model=args.model,
        n_scenes=args.scenes,
        hypotheses=args.hypotheses,
        steps=args.steps,
        peripheral_blur=args.peripheral_blur,
        n_boot=min(args.n_boot, 2000),
        sheets=False,
    )
    baselines = read_table(result.scores.parent / BASELINES_NAME)
    rows = ablation_table(read_table(result.scores), baselines, n_boot=args.n_boot)
    out = Path(args.out)
    # the demo's own effect rows (its report's resamples) would be a second set of intervals for the same effects
    summary = {k: v for k, v in result.summary.items() if k not in ("effects", "versus_baselines")}
    md = _markdown(rows, summary)
    atomic_write(out / "ablation.md", lambda t: Path(t).write_text(md))
    atomic_write(
        out / "ablation.json",
        lambda t: Path(t).write_text(json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n"),
    )
    print(md)
    print(f"Written to {out / 'ablation.md'} (figures: {result.report_index.parent / 'figures'}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
