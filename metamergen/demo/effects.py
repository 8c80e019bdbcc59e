"""The effects the method exists for, measured on the toy world's ground truth with paired renders.

Renders of one scene, scanpath and hypothesis share their initial noise (the study's common random
numbers), so each comparison below is paired: the two renders differ only in what is compared.
Differences are averaged within each scene first and bootstrapped over scenes. Each is signed so
that a positive difference is the paper's prediction:

1. **the fovea**: on the fixated objects (:data:`FOVEA_MEASURES`: their colour in place, the pixels
   inside their boxes, their shapes), both streams beat the peripheral stream alone;
2. **more fixations**: that gain is larger after 10 fixations than after 1, per fixated object
   (the fovea measures) and over all the scene's objects (more of them have been fixated);
3. **the periphery**: outside the objects (the layout) peripheral-only beats foveal-only, and on the
   whole image both streams are at least as good as either alone;
4. **whose fixations**: the viewer's own fixations vs matched random ones (the paper found a small,
   non-significant difference), reported whichever way it comes out;

and, for every measure the README quotes, the renders against the baselines (a flat mean-colour
image and the periphery input itself): a measure on which nothing beats a flat image measures nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from metamergen.evaluation.statistics import paired_difference

__all__ = [
    "BASELINE_MEASURES",
    "BASELINE_RENDERS",
    "FOVEA_MEASURES",
    "baseline_comparisons",
    "demo_effects",
    "effects_markdown",
    "lower_is_better",
    "verdict",
]

#: The measures on which the renders are compared with the baselines: the image metrics the paper
#: reports, the layout, the toy world's object colour and shape, and the fovea's measures (a
#: baseline's fixated columns are scored over the fixation lists of the renders it is compared with:
#: :func:`metamergen.demo.measures.fixation_averaged`). Each one's direction is the metric
#: registry's (:func:`lower_is_better`).
BASELINE_MEASURES: tuple[str, ...] = (
    "mse",
    "ssim",
    "layout_mse",
    "objects_recovered",
    "shapes_recognised",
    "fixated_objects_recovered",
    "fixated_object_mse",
    "fixated_shapes_recognised",
)

#: The renders compared with the baselines: ``(condition, fixation_source)``.
BASELINE_RENDERS: tuple[str, str] = ("both", "viewer")

#: The fovea's measures (questions 1 and 2): whether a fixated object's colour appears in its place,
#: the pixel error inside the fixated objects' boxes, and whether their shapes can be named.
FOVEA_MEASURES: tuple[str, ...] = ("fixated_objects_recovered", "fixated_object_mse", "fixated_shapes_recognised")


def lower_is_better(measure: str) -> bool:
    """The measure's direction, from the metric registry (the toy measures register on import)."""
    import metamergen.demo.measures  # noqa: F401  (registers the toy measures)
    from metamergen.evaluation.registry import METRIC_INFO

    if measure not in METRIC_INFO:
        raise KeyError(f"{measure!r} has no registered direction; register it with register_metric_info.")
    return not METRIC_INFO[measure].higher_is_similar


_PAIR = ["scene_id", "scanpath_id", "hypothesis"]


def verdict(ci_low: float, ci_high: float) -> str:
    """``"yes"`` (interval above 0), ``"reversed"`` (below 0), else ``"not resolved"``."""
    if math.isfinite(ci_low) and ci_low > 0:
        return "yes"
    if math.isfinite(ci_high) and ci_high < 0:
        return "reversed"
    return "not resolved"


def _pairs(table: Any, measure: str, a: Mapping[str, Any], b: Mapping[str, Any], keys: Sequence[str]) -> Any:
    """Rows of ``a`` and ``b`` joined on ``keys``: columns ``scene_id, a, b``."""
    pieces = []
    for where, name in ((a, "a"), (b, "b")):
        sub = table
        for k, v in where.items():
            sub = sub[sub[k] == v]
        pieces.append(sub[list(keys) + [measure]].rename(columns={measure: name}))
    return pieces[0].merge(pieces[1], on=list(keys), how="inner", validate="one_to_one")


def _effect(
    question: str,
    measure: str,
    label_a: str,
    label_b: str,
    pairs: Any,
    *,
    lower_is_better: bool,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    # signed so that > 0 means A is better than B
    first, second = (pairs["b"], pairs["a"]) if lower_is_better else (pairs["a"], pairs["b"])
    d = paired_difference(first, second, pairs["scene_id"], n_boot=n_boot, seed=seed)
    mean_a, mean_b = (d["mean_b"], d["mean_a"]) if lower_is_better else (d["mean_a"], d["mean_b"])
    return {
        "question": question,
        "measure": measure,
        "a": label_a,
        "b": label_b,
        "mean_a": mean_a,
        "mean_b": mean_b,
        "difference": d["difference"],
        "relative": d["difference"] / mean_b if lower_is_better and mean_b else math.nan,
        "ci_low": d["ci_low"],
        "ci_high": d["ci_high"],
        "n_scenes": d["n_units"],
        "n_pairs": d["n_pairs"],
        "verdict": verdict(d["ci_low"], d["ci_high"]),
    }


def _growth(table: Any, measure: str, lower: bool, *, n_boot: int, seed: int) -> dict[str, Any]:
    """Question 2 on ``measure``: the fovea's gain (both streams vs the periphery alone, paired)
    after 10 of the viewer's fixations against after 1, paired by scene, scanpath and hypothesis."""
    viewer = {"fixation_source": "viewer"}
    gains = []
    for n in (10, 1):
        g = _pairs(
            table,
            measure,
            {"condition": "both", "prefix": n, **viewer},
            {"condition": "peripheral", "prefix": n, **viewer},
            [*_PAIR, "fixation_source"],
        )
        gain = g["b"] - g["a"] if lower else g["a"] - g["b"]
        gains.append(g.assign(gain=gain)[[*_PAIR, "gain"]])
    pairs = gains[0].merge(gains[1], on=_PAIR, suffixes=("_10", "_1")).rename(columns={"gain_10": "a", "gain_1": "b"})
    return _effect(
        "2. the fovea's gain grows with fixations (N = 10 vs N = 1)",
        f"{measure} gain ({'peripheral - both' if lower else 'both - peripheral'})",
        "N = 10",
        "N = 1",
        pairs,
        lower_is_better=False,
        n_boot=n_boot,
        seed=seed,
    )


def demo_effects(table: Any, *, n_boot: int = 10000, seed: int = 0) -> list[dict[str, Any]]:
    """The four questions of the module docstring on a demo score table (with the region errors).

    Parameters
    ----------
    table
        pandas DataFrame: the demo's score table (``condition``, ``fixation_source``, ``prefix``,
        ``hypothesis``, ``fixated_object_mse``, ``layout_mse``, ``mse``...).

    Returns
    -------
    list of dict
        One row per (question, measure): the two means, the paired difference (> 0 = the paper's
        prediction), its scene-level bootstrap interval, counts and a verdict.
    """
    viewer = {"fixation_source": "viewer"}
    rows = []
    keys = [*_PAIR, "fixation_source", "prefix"]
    for k, measure in enumerate(m for m in FOVEA_MEASURES if m in table):
        lower = lower_is_better(measure)
        q1 = _pairs(table, measure, {"condition": "both", **viewer}, {"condition": "peripheral", **viewer}, keys)
        rows.append(
            _effect(
                "1. fixated objects: both streams beat the periphery alone",
                measure,
                "both",
                "peripheral",
                q1,
                lower_is_better=lower,
                n_boot=n_boot,
                seed=seed + 1 + 10 * k,
            )
        )
        rows.append(_growth(table, measure, lower, n_boot=n_boot, seed=seed + 2 + 10 * k))
    # more fixations bring more of the scene's objects into the fovea: the same gain over all of them
    if "objects_recovered" in table:
        rows.append(
            _growth(table, "objects_recovered", lower_is_better("objects_recovered"), n_boot=n_boot, seed=seed + 40)
        )
    # the whole image on two measures: pixels, and every object's colour in its place
    periphery = [("layout_mse", "peripheral", "foveal")]
    periphery += [(m, "both", other) for m in ("mse", "objects_recovered") for other in ("peripheral", "foveal")]
    for i, (measure, a, b) in enumerate(p for p in periphery if p[0] in table):
        pairs = _pairs(table, measure, {"condition": a, **viewer}, {"condition": b, **viewer}, keys)
        rows.append(
            _effect(
                f"3. {'layout' if measure == 'layout_mse' else 'whole image'}: {a} beats {b}",
                measure,
                a,
                b,
                pairs,
                lower_is_better=lower_is_better(measure),
                n_boot=n_boot,
                seed=seed + 30 + i,
            )
        )
    # whose fixations: on the whole image's pixels, and on the scene's objects recovered (a viewer
    # looks at objects, random fixations mostly at the background)
    for j, measure in enumerate(m for m in ("mse", "objects_recovered") if m in table):
        pairs = _pairs(
            table,
            measure,
            {"condition": "both", "fixation_source": "viewer"},
            {"condition": "both", "fixation_source": "random"},
            [*_PAIR, "prefix"],
        )
        rows.append(
            _effect(
                "4. the viewer's fixations vs matched random ones",
                measure,
                "viewer",
                "random",
                pairs,
                lower_is_better=lower_is_better(measure),
                n_boot=n_boot,
                seed=seed + 7 + 50 * j,
            )
        )
    rows.sort(key=lambda r: r["question"][:2])  # stable: question order, measures as listed
    return rows


def baseline_comparisons(
    table: Any, baselines: Any, measures: Sequence[str], *, n_boot: int = 10000, seed: int = 0
) -> list[dict[str, Any]]:
    """Renders with both streams and the viewer's fixations vs each baseline, per measure.

    ``measures`` are columns of both tables, each with a registered direction (:func:`lower_is_better`).
    A render's score is averaged per scene, then paired with the scene's baseline score; positive
    differences mean the renders are better.
    """
    condition, source = BASELINE_RENDERS
    renders = table[(table["condition"] == condition) & (table["fixation_source"] == source)]
    rows = []
    for k, measure in enumerate(measures):
        lower = lower_is_better(measure)
        per_scene = renders.groupby("scene_id")[measure].mean().rename("a").reset_index()
        for j, kind in enumerate(dict.fromkeys(baselines["baseline"])):
            base = baselines[baselines["baseline"] == kind].groupby("scene_id")[measure].mean().rename("b")
            pairs = per_scene.merge(base.reset_index(), on="scene_id")
            rows.append(
                _effect(
                    f"renders beat the {kind} baseline",
                    measure,
                    f"renders ({condition}, {source})",
                    kind,
                    pairs,
                    lower_is_better=lower,
                    n_boot=n_boot,
                    seed=seed + 100 + 10 * k + j,
                )
            )
    return rows


def effects_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """:func:`demo_effects` / :func:`baseline_comparisons` rows as a Markdown table (what the demo
    and the ablation print): the two means, the paired difference with its interval, and the verdict."""
    lines = [
        "| question | measure | A | B | A | B | difference [95 % CI] | pairs | holds? |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['question']} | {r['measure']} | {r['a']} | {r['b']} | {r['mean_a']:.4f} | {r['mean_b']:.4f} | "
            f"{r['difference']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] | {r['n_pairs']} | {r['verdict']} |"
        )
    return "\n".join(lines) + "\n"
