"""The paper's ablation in miniature, on held-out toy scenes with the bundled demo model.

    python inference/ablation.py --out outputs/ablation            # 32 scenes, 2 samples each
    python inference/ablation.py --scenes 4 --hypotheses 1 --steps 4 --out /tmp/abl   # smoke run

Renders (via :func:`metamergen.demo.run.run_demo`) every held-out scene for prefixes 1, 2, 3, 5, 10,
both streams / peripheral only / foveal only, viewer and matched random fixations, scores them,
and answers the paper's three questions with scene-level paired bootstrap intervals (95 %):

1. **streams**: is similarity to the original ordered both >= peripheral-only > foveal-only?
   (viewer fixations, all prefixes pooled; differences both - peripheral, peripheral - foveal);
2. **fixations**: does similarity rise with the number of fixations? (both streams, viewer;
   difference prefix 10 - prefix 1);
3. **viewer vs random**: do viewer fixations recover more objects than random ones?
   (both streams, all prefixes pooled; difference viewer - random).

Each difference is signed so that a positive value means "as the paper predicts", whatever the
metric's direction. The table goes to ``<out>/ablation.md`` and ``<out>/ablation.json``. What comes
out is reported as it comes out; nothing here is tuned to a result.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from metamergen.demo.run import DEMO_METRICS, DEMO_MODEL, run_demo  # noqa: E402
from metamergen.evaluation.registry import METRIC_INFO  # noqa: E402
from metamergen.evaluation.statistics import bootstrap_ci
from metamergen.evaluation.tables import read_table  # noqa: E402
from metamergen.utils.io import atomic_write  # noqa: E402

#: Measures of the ablation and whether higher means more similar / more recovered.
HIGHER_IS_BETTER = {m: METRIC_INFO[m].higher_is_similar for m in DEMO_METRICS}


def _scene_means(table, metric: str, **where: Any) -> dict[str, float]:
    sub = table
    for k, v in where.items():
        sub = sub[sub[k].isin(v if isinstance(v, (list, tuple)) else [v])]
    return sub.groupby("scene_id")[metric].mean().dropna().to_dict()


def paired_difference(table, metric: str, a: dict, b: dict, *, n_boot: int, seed: int) -> dict:
    """Mean over scenes of (a - b), signed so that positive = a more similar, with a bootstrap CI."""
    ma, mb = _scene_means(table, metric, **a), _scene_means(table, metric, **b)
    scenes = sorted(set(ma) & set(mb))
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    diffs = [sign * (ma[s] - mb[s]) for s in scenes]
    mean, low, high = bootstrap_ci(diffs, n_boot=n_boot, seed=seed)
    return {
        "mean": mean,
        "low": low,
        "high": high,
        "n_scenes": len(scenes),
        "a": float(np.mean([ma[s] for s in scenes])) if scenes else float("nan"),
        "b": float(np.mean([mb[s] for s in scenes])) if scenes else float("nan"),
    }


def ablation_table(table, *, n_boot: int = 10000, seed: int = 0) -> list[dict]:
    """The three questions (module docstring) for every measure; one row per (question, measure)."""
    viewer = {"fixation_source": "viewer"}
    questions = [
        ("both > peripheral", {"condition": "both", **viewer}, {"condition": "peripheral", **viewer}),
        ("peripheral > foveal", {"condition": "peripheral", **viewer}, {"condition": "foveal", **viewer}),
        (
            "10 fixations > 1",
            {"condition": "both", "prefix": 10, **viewer},
            {"condition": "both", "prefix": 1, **viewer},
        ),
        ("viewer > random", {"condition": "both", **viewer}, {"condition": "both", "fixation_source": "random"}),
    ]
    rows = []
    for q, (name, a, b) in enumerate(questions):
        for m, metric in enumerate(DEMO_METRICS):
            d = paired_difference(table, metric, a, b, n_boot=n_boot, seed=seed + 100 * q + m)
            verdict = "yes" if d["low"] > 0 else ("reversed" if d["high"] < 0 else "not resolved")
            rows.append({"question": name, "measure": metric, **d, "verdict": verdict})
    return rows


def _markdown(rows: list[dict], summary: dict) -> str:
    ovo = summary["own_vs_other"]
    lines = [
        f"Held-out scenes: {summary['n_scenes']}, generations: {summary['n_generations']}, "
        f"samples per condition: {summary['settings']['hypotheses']}, DDIM steps: {summary['settings']['steps']}.",
        f"Own scene closest (pixel MSE) for {ovo['own_closest']:.0%} of generations (chance {ovo['chance']:.0%}); "
        f"MSE own / other = {ovo['ratio']:.3f}.",
        "",
        "Differences are means over scenes of A - B, signed so that > 0 is the paper's prediction; "
        "95 % scene-level bootstrap intervals.",
        "",
        "| question (A > B) | measure | A | B | difference [95 % CI] | holds? |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['question']} | {r['measure']} | {r['a']:.3f} | {r['b']:.3f} | "
            f"{r['mean']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}] | {r['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/ablation")
    p.add_argument("--model", default=str(DEMO_MODEL))
    p.add_argument("--scenes", type=int, default=32)
    p.add_argument("--hypotheses", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--n-boot", type=int, default=10000)
    args = p.parse_args(argv)
    result = run_demo(
        args.out,
        model=args.model,
        n_scenes=args.scenes,
        hypotheses=args.hypotheses,
        steps=args.steps,
        n_boot=min(args.n_boot, 2000),
        sheets=False,
    )
    rows = ablation_table(read_table(result.scores), n_boot=args.n_boot)
    out = Path(args.out)
    md = _markdown(rows, result.summary)
    atomic_write(out / "ablation.md", lambda t: Path(t).write_text(md))
    atomic_write(
        out / "ablation.json",
        lambda t: Path(t).write_text(json.dumps({"summary": result.summary, "rows": rows}, indent=2) + "\n"),
    )
    print(md)
    print(f"Written to {out / 'ablation.md'} (figures: {result.report_index.parent / 'figures'}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
