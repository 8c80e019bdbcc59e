"""``metamergen demo``: the bundled toy-world model renders, scores and reports, offline, on a CPU.

The demo model (``metamergen/assets/demo_model``, built by ``training/build_demo_model.py``) was
trained on :mod:`metamergen.demo.toyworld` scenes. The demo

1. writes held-out scenes: the first ``n_scenes`` of the world's *test* split (split seed
   ``2 * seed + 1`` of the build seed, never seen in training), with toy-viewer scanpaths;
2. renders, with :mod:`metamergen.study`, every scene for fixation prefixes 1, 2, 3, 5, 10, for
   both streams / peripheral only / foveal only, from the viewer's fixations and from the matched
   random control;
3. scores every generation against its scene (weight-free metrics: no CLIP or DreamSim weights
   are needed) with the toy world's object measures (:func:`toy_scores`), scores the two
   baselines the same way (their fixated-object measures over the renders' fixation lists:
   :func:`fixation_averaged`), measures the paired effects (:mod:`metamergen.demo.effects`) and
   the own-versus-other-scene comparison (:func:`own_vs_other`);
4. writes the usual report (figures with scene-level bootstrap intervals, contact sheets, HTML).

The same functions serve the ablation (``inference/ablation.py``), with more scenes and samples.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metamergen import defaults
from metamergen.demo.measures import fixation_averaged, own_vs_other, shape_judge, toy_scores
from metamergen.utils.images import load_image
from metamergen.utils.io import atomic_write

if TYPE_CHECKING:
    from metamergen.pipeline.pipeline_metamergen import MetamerGenPipeline

__all__ = [
    "DEMO_MODEL",
    "DEMO_METRICS",
    "DEMO_PERIPHERAL_BLUR",
    "DemoResult",
    "default_peripheral_blur",
    "demo_model_info",
    "load_demo_pipeline",
    "write_demo_scenes",
    "run_demo",
]

#: The bundled demo model folder.
DEMO_MODEL = Path(__file__).resolve().parents[1] / "assets" / "demo_model"

#: The demo's peripheral down/up scale. The paper's 1/4 is relative to its 448-px canvas of
#: COCO photos (about 640 px wide): the periphery keeps about 0.17 of the photo's resolution. The
#: toy's 64-px scene sits on a 112-px canvas, where 1/4 keeps 28 / 64 = 0.44 of the scene's
#: resolution, enough to show a 10-px object's shape with no fovea at all. 1/8 (14 px, 0.22 of
#: the scene) is the paper's degradation at the toy's scale, and one of the paper's blur levels.
DEMO_PERIPHERAL_BLUR = 1 / 8

#: Scores of the demo: weight-free image metrics plus the object-level measures.
DEMO_METRICS: tuple[str, ...] = (
    "mse",
    "ssim",
    "fixated_object_mse",
    "layout_mse",
    "color_hist",
    "objects_recovered",
    "fixated_objects_recovered",
    "shapes_recognised",
    "fixated_shapes_recognised",
)


def _missing_model(path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"No demo model at {path}. The repository ships one in metamergen/assets/demo_model; "
        "rebuild it with `python training/build_demo_model.py` (about 45 minutes on 2 CPU cores)."
    )


def demo_model_info(model: str | Path = DEMO_MODEL) -> dict[str, Any]:
    """The ``build_info.json`` of a demo model (seeds, step counts, toy-world config, timings)."""
    path = Path(model) / "build_info.json"
    if not path.is_file():
        raise _missing_model(Path(model))
    return json.loads(path.read_text())


def default_peripheral_blur(model: str | Path | None) -> float:
    """The periphery's down/up scale a model renders at unless told otherwise.

    A demo model folder (one with the ``build_info.json`` of ``training/build_demo_model.py``) was
    trained at s = 1/16 and 1/8 and is measured at :data:`DEMO_PERIPHERAL_BLUR`; the paper's 1/4 lies
    outside its training. Any other model (a hub id, a trained pipeline, ``None``): the paper's
    :data:`metamergen.defaults.PERIPHERAL_BLUR`.
    """
    if model is not None and (Path(model) / "build_info.json").is_file():
        try:
            if "world" in demo_model_info(model):
                return DEMO_PERIPHERAL_BLUR
        except (OSError, ValueError):  # an unreadable record: not recognisably a demo model
            pass
    return defaults.PERIPHERAL_BLUR


def load_demo_pipeline(model: str | Path = DEMO_MODEL) -> MetamerGenPipeline:
    """Load the demo model as a :class:`~metamergen.pipeline.MetamerGenPipeline` (fp32, CPU).

    The tokenizer and the DINOv2 processor hold no trained state; they are rebuilt from the
    model's config instead of read from disk, so that the folder (written with transformers 5)
    also loads where transformers saves or names them differently.
    """
    from metamergen.demo.toymodel import DemoModelConfig, build_tokenizer
    from metamergen.encoders.dinov2 import dinov2_processor
    from metamergen.pipeline.pipeline_metamergen import MetamerGenPipeline

    if not (Path(model) / "model_index.json").is_file():
        raise _missing_model(Path(model))
    cfg = DemoModelConfig.from_dict(demo_model_info(model)["model"])
    pipe = MetamerGenPipeline.from_pretrained(
        model,
        tokenizer=build_tokenizer(cfg.text_max_length),
        feature_extractor=dinov2_processor(cfg.encoder_resolution),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_demo_scenes(out: str | Path, n_scenes: int, info: Mapping[str, Any]) -> Path:
    """Write held-out toy scenes for the demo; returns the viewer-only scanpath file.

    The scenes are the first ``n_scenes`` scenes of the model's *test* split (split seed
    ``2 * seed + 1`` of the build seed, the rule of :func:`metamergen.demo.toyworld.write_world`; the
    adapters never saw them). Only the viewer scanpaths are kept (``viewer_scanpaths.jsonl``): the
    study adds its own matched random control, so both sources go through one code path.
    """
    from metamergen.demo.toyworld import ToyWorldConfig, write_split
    from metamergen.fixations.io import read_info, read_scanpaths, write_scanpaths

    if n_scenes < 2:
        raise ValueError(f"The demo needs at least 2 scenes (own vs other scene), got {n_scenes}.")
    cfg = ToyWorldConfig.from_dict(info["world"])
    out = Path(out)
    summary = write_split(out, n_scenes, seed=2 * int(info["seed"]) + 1, config=cfg, name="demo-heldout")
    viewer = [s for s in read_scanpaths(summary["scanpaths"]) if s.condition == "viewer"]
    return write_scanpaths(out / "viewer_scanpaths.jsonl", viewer, read_info(summary["scanpaths"]))


def _remove_if_nothing_rendered(out: Path, made: Sequence[Path]) -> None:
    """After a failure: if no generation was finished, remove the folders this run created.

    A resume needs nothing from them (the scenes are rewritten identically); a study with finished
    generations is kept whole, to be resumed.
    """
    import shutil

    from metamergen.study.manifest import IMAGES_DIR, MANIFEST_NAME

    study = out / "study"
    if (study / MANIFEST_NAME).exists() or any((study / IMAGES_DIR).glob("*.png")):
        return
    for folder in made:  # outermost first: removing `out` removes the others
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class DemoResult:
    """What :func:`run_demo` wrote and measured."""

    out: Path
    report_index: Path
    scores: Path
    summary: dict[str, Any]


def _effect_notes(effects: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """One report paragraph per effect: means, paired difference with its interval, verdict."""
    out = []
    for e in effects:
        out.append(
            (
                e["question"],
                f"{e['measure']}: {e['a']} {e['mean_a']:.4f} vs {e['b']} {e['mean_b']:.4f}; paired difference "
                f"{e['difference']:+.4f} [95 % CI {e['ci_low']:+.4f}, {e['ci_high']:+.4f}] over {e['n_scenes']} scenes "
                f"({e['n_pairs']} pairs), > 0 = as the paper predicts: {e['verdict']}.",
            )
        )
    return out


_FIXATED_BASELINES_NOTE = (
    "A baseline image has no fixations of its own. Its fixated-object columns (fixated objects recovered, "
    "MSE inside the fixated boxes, fixated shapes named) are scored over the fixation lists of its scene's "
    "renders with both streams and the viewer's fixations, and averaged: the same objects the renders "
    "they are compared with were scored on. The lines in the figures are those averages over all prefixes."
)


def run_demo(
    out: str | Path = "outputs/demo",
    *,
    model: str | Path = DEMO_MODEL,
    n_scenes: int = 4,
    prefixes: Sequence[int] = defaults.PREFIXES,
    conditions: Sequence[str] = ("both", "peripheral", "foveal"),
    hypotheses: int = 1,
    steps: int = 20,
    peripheral_blur: float = DEMO_PERIPHERAL_BLUR,
    n_boot: int = 2000,
    sheets: bool = True,
    progress: bool = True,
    pipe: Any = None,
) -> DemoResult:
    """Render, score and report the demo (module docstring); everything lands in ``out``.

    Parameters
    ----------
    out
        Output folder.
    model
        A demo model folder (``build_info.json`` + pipeline); default the bundled one.
    n_scenes
        Held-out scenes (>= 2), the first of the model's test split.
    prefixes, conditions, hypotheses, steps
        What to render (:class:`metamergen.study.StudySettings`); the random control is always on.
    peripheral_blur
        The periphery's down/up scale (default :data:`DEMO_PERIPHERAL_BLUR`, why it is not the paper's 1/4).
    n_boot, sheets
        Bootstrap resamples of the report's intervals; whether to draw contact sheets.
    progress
        Progress bar while rendering.
    pipe
        An already loaded demo pipeline (else loaded from ``model``).

    ``out/scenes`` holds the held-out scenes and scanpaths, ``out/study`` the generations and
    manifest, ``out/scores.csv`` the scores, ``out/report/index.html`` the report and
    ``out/demo_summary.json`` the settings, timings and :func:`own_vs_other`. Re-running skips
    finished generations (the study is resumable).
    """
    from metamergen.demo.effects import BASELINE_MEASURES, BASELINE_RENDERS, baseline_comparisons, demo_effects
    from metamergen.demo.toyworld import read_objects
    from metamergen.evaluation.baselines import BASELINES_NAME, baseline_image, score_baselines
    from metamergen.evaluation.metrics import build_metrics
    from metamergen.evaluation.scoring import load_manifest_rows, score_manifest, write_score_table
    from metamergen.evaluation.tables import read_table
    from metamergen.study.plan import StudySettings, plan_study
    from metamergen.study.run import run_study
    from metamergen.study.scenes import load_scanpath_scenes
    from metamergen.viz.report import write_report

    t0 = time.time()
    out = Path(out)
    info = demo_model_info(model)
    if n_scenes < 2:
        raise ValueError(f"The demo needs at least 2 scenes (own vs other scene), got {n_scenes}.")
    settings = StudySettings(  # checked before anything is written
        prefixes=tuple(prefixes),
        hypotheses=hypotheses,
        conditions=tuple(conditions),
        random_control=True,
        seed=int(info["seed"]),
        steps=steps,
        peripheral_blur=peripheral_blur,
    )
    pipe = pipe if pipe is not None else load_demo_pipeline(model)
    made = [p for p in (out, out / "scenes", out / "study") if not p.exists()]  # what this call creates
    try:
        scan_file = write_demo_scenes(out / "scenes", n_scenes, info)
        scenes = load_scanpath_scenes(scan_file, image_root=out / "scenes" / "images")
        jobs = plan_study(scenes, settings, model=str(model), pipe=pipe)
        t_render = time.time()
        run_study(pipe, jobs, out / "study", batch_size=16, progress=progress)
        t_render = time.time() - t_render
    except BaseException:
        _remove_if_nothing_rendered(out, made)
        raise

    ids = {job.image_id for job in jobs}  # the folder may hold other runs' images: score this run's only
    metrics = build_metrics(["ssim", "mse", "color_hist"])
    rows = [r for r in score_manifest(out / "study" / "manifest.jsonl", metrics) if r["image_id"] in ids]
    records = read_objects(out / "scenes" / "objects.jsonl")
    judge = shape_judge()
    scene_images = {path: load_image(path) for path in dict.fromkeys(r["scene"] for r in rows)}  # once per scene
    for r in rows:
        rec = records[Path(r["scene"]).name]
        gen = load_image(out / "study" / r["path"])
        r.update(toy_scores(gen, scene_images[r["scene"]], rec["objects"], r["fixations"], judge=judge))
    scores = write_score_table(rows, out / "scores.csv")
    # the baselines a render must beat: the scene's mean colour, and the periphery input with no model;
    # their fixated-object columns over the fixation lists of the renders they are compared with
    manifest_rows = [r for r in load_manifest_rows(out / "study" / "manifest.jsonl") if r["image_id"] in ids]
    compared = [r for r in rows if (r["condition"], r["fixation_source"]) == BASELINE_RENDERS]
    base_rows = score_baselines(manifest_rows, metrics)
    for b in base_rows:
        scene = scene_images[b["scene"]]
        image = baseline_image(
            scene,
            b["baseline"],
            **{k: b[k] for k in ("peripheral_blur", "encoder_canvas", "encoder_patch") if b[k] is not None},
        )
        lists = [r["fixations"] for r in compared if r["scene"] == b["scene"]]
        b.update(fixation_averaged(image, scene, records[Path(b["scene"]).name]["objects"], lists, judge=judge))
    baselines = write_score_table(base_rows, out / BASELINES_NAME)
    effects = demo_effects(read_table(scores), n_boot=n_boot, seed=int(info["seed"]))
    versus_baselines = baseline_comparisons(
        read_table(scores),
        read_table(baselines),
        BASELINE_MEASURES,
        n_boot=n_boot,
        seed=int(info["seed"]),
    )
    ovo = own_vs_other(rows, out / "study")
    note = (
        f"A render is closer (pixel MSE) to its own scene than to each of the other {ovo['n_scenes'] - 1} scenes "
        f"for {ovo['own_closest']:.0%} of renders (chance {ovo['chance']:.0%}); MSE to the own scene is "
        f"{ovo['ratio']:.2f} of the MSE to the other scenes."
    )
    report = write_report(
        scores,
        out / "report",
        root=out / "study",
        metrics=list(DEMO_METRICS),
        n_boot=n_boot,
        sheets=sheets,
        baselines=baselines,
        notes=[
            ("Own scene vs other scenes", note),
            ("Baselines of the fixated-object measures", _FIXATED_BASELINES_NOTE),
            *((title, text) for title, text in _effect_notes(effects)),
        ],
    )
    summary = {
        "model": str(model),
        "n_scenes": n_scenes,
        "n_generations": len(rows),
        "settings": {
            "prefixes": list(prefixes),
            "conditions": list(conditions),
            "hypotheses": hypotheses,
            "steps": steps,
            "peripheral_blur": peripheral_blur,
        },
        "own_vs_other": ovo,
        "effects": effects,
        "versus_baselines": versus_baselines,
        "timings_s": {"render": round(t_render, 1), "total": round(time.time() - t0, 1)},
    }
    atomic_write(out / "demo_summary.json", lambda p: Path(p).write_text(json.dumps(summary, indent=2) + "\n"))
    return DemoResult(out=out, report_index=report.index, scores=scores, summary=summary)
