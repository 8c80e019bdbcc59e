"""Feather et al. 2023 and Boehm et al. 2025 in miniature: model metamers of small toy-object classifiers.

    python inference/model_metamers_miniature.py                      # the study (shipped models): ~5 min
    python inference/model_metamers_miniature.py --train              # retrain the models first: +~17 min
    python inference/model_metamers_miniature.py --quick --out /tmp/mm   # CI size: ~15 s

(times: one thread of a 2-core EPYC shared with other jobs, ``OMP_NUM_THREADS=1``.)

Models (:mod:`metamergen.demo.metamer_models`, shipped in ``metamergen/assets/metamer_models``): a
small CNN, the same CNN adversarially trained (L2 PGD), a small ViT, and a second CNN (other widths
and seed) that no ensemble contains. Images: held-out 32 px toy-object crops that every model
classifies correctly, balanced over the 7 shapes, so a metamer is "recognised" when a model gives it
the natural image's true shape (chance 1/7).

Metamers: one per (image, layer) from the same noise, with Feather's step (normalised gradient,
clamp to [0, 1]) on a shortened schedule (``--blocks`` x ``--block-steps`` steps, step length
``--step-size`` halved after each block; default 6 x 100 = 600 steps from 1.0; the paper: 8 x 3000
from 1.0 on 224 px images), fake
ReLU on the CNNs' ReLU layers; ensembles of two models' last layers with the ``switch`` (members in
turn, ``--switch-every`` steps each) and ``mean`` schedules.

Questions (each difference paired over images, same noise; 95 % percentile bootstrap over images;
signed so that > 0 is what the papers report):

(a) recognition by the other models (mean of the other three) falls with depth: first layer minus
    last, per generating model;
(b) the adversarially trained CNN's last-layer metamers are recognised by other models more often
    than the standard CNN's (judged by the models that made neither);
(c) ensemble metamers are recognised by the held-out CNN more often than the members' own
    single-model metamers; the CNN ensemble's more often than the CNN + ViT ensemble's;
(d) the share of metamers passing Feather's null test per layer (null distribution: all ordered
    pairs of other held-out natural crops).

Writes ``results.json``, ``results.md`` (the table printed here), ``recognition_by_layer.png``
and ``metamers.png`` to ``--out``. Numbers are reported as they come out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from metamergen.demo.effects import verdict  # noqa: E402
from metamergen.demo.metamer_models import (  # noqa: E402
    CNN_LAYERS,
    MINIATURE_MODELS,
    MODELS_DIR,
    VIT_LAYERS,
    crop_dataset,
    load_miniature_models,
    train_miniature_models,
)
from metamergen.demo.toyworld import SHAPES  # noqa: E402
from metamergen.evaluation.statistics import bootstrap_ci, derive_cell_seed, paired_difference  # noqa: E402
from metamergen.metamers import (  # noqa: E402
    Classifier,
    Ensemble,
    FeatherRecipe,
    LayerActivations,
    ModelMetamer,
    layer_activations,
    layer_metamers,
    null_distribution,
    null_test,
    predict,
    recognition_table,
    similarity_shift,
)
from metamergen.utils.io import atomic_write  # noqa: E402

#: Generating models of single-model metamers and their layers, early to late.
GENERATORS: dict[str, tuple[str, ...]] = {"cnn": CNN_LAYERS, "cnn_adv": CNN_LAYERS, "vit": VIT_LAYERS}
#: Ensembles: name -> members as (model, layer); each member's last layer.
ENSEMBLES: dict[str, tuple[tuple[str, str], ...]] = {
    "cnn+cnn_adv": (("cnn", CNN_LAYERS[-1]), ("cnn_adv", CNN_LAYERS[-1])),
    "cnn+vit": (("cnn", CNN_LAYERS[-1]), ("vit", VIT_LAYERS[-1])),
}
SCHEDULES = ("switch", "mean")
#: The model in no ensemble: the judge of question (c), and whose last layer the similarity shift is read from.
HELD_OUT = "cnn_heldout"


def _fake_relu(model: str, layer: str) -> bool:
    """Fake ReLU on the CNNs' ReLU layers (Feather et al. use it where a layer ends in a ReLU)."""
    return model.startswith("cnn") and layer.startswith("relu")


def study_images(models: dict[str, nn.Module], n_images: int, n_null: int, seed: int) -> dict[str, Any]:
    """Held-out study crops every model classifies correctly, balanced over shapes; other crops for the null.

    Returns ``images`` ``(n_images, 3, 32, 32)`` in [0, 1], ``labels`` ``(n_images,)``, ``null_images``
    ``(n_null, 3, 32, 32)`` (crops of other scenes, not filtered), ``all_correct`` (``(n_images,)``
    bool: every model classifies the natural crop correctly; only barely trained ``--quick`` models
    leave some False, the remaining places being filled with other crops) and provenance.
    """
    per_class = math.ceil(n_images / len(SHAPES))
    n_scenes = max(40, 2 * n_images)
    while True:
        crops = crop_dataset("study", n_scenes, seed=seed)
        ok = torch.ones(len(crops), dtype=torch.bool)
        for m in models.values():
            ok &= predict(m, crops.images) == crops.labels
        chosen: list[int] = []
        taken = dict.fromkeys(range(len(SHAPES)), 0)
        for i in range(len(crops)):
            c = int(crops.labels[i])
            if ok[i] and taken[c] < per_class and len(chosen) < n_images:
                chosen.append(i)
                taken[c] += 1
        if len(chosen) == n_images or n_scenes >= 640:
            break
        n_scenes *= 2
    chosen += [i for i in range(len(crops)) if i not in chosen][: n_images - len(chosen)]
    # interleave the classes (round-robin), so that the first few images of the contact sheet differ in shape
    rank = {i: sum(1 for j in chosen if j < i and crops.labels[j] == crops.labels[i]) for i in chosen}
    chosen.sort(key=lambda i: (rank[i], int(crops.labels[i])))
    used_scenes = set(crops.scene_seeds[chosen].tolist())
    rest = [i for i in range(len(crops)) if int(crops.scene_seeds[i]) not in used_scenes][:n_null]
    if len(chosen) < n_images or len(rest) < 2:
        raise RuntimeError(f"{len(crops)} study crops are too few for {n_images} images and {n_null} null images.")
    study, null = crops.subset(chosen), crops.subset(rest)
    return {
        "images": study.images,
        "labels": study.labels,
        "all_correct": ok[chosen],
        "null_images": null.images,
        "scene_seeds": study.scene_seeds.tolist(),
        "object_index": study.object_index.tolist(),
        "null_scene_seeds": null.scene_seeds.tolist(),
    }


def synthesise(
    models: dict[str, nn.Module], images: Tensor, recipe: FeatherRecipe, *, seed: int, switch_every: int, log: Any
) -> dict[str, dict[str, Any]]:
    """Every condition's metamers: ``"<model>:<layer>"`` and ``"<ensemble>/<schedule>"`` -> metamers, loss, members."""
    out: dict[str, dict[str, Any]] = {}
    for gen, layers in GENERATORS.items():
        start = time.perf_counter()
        synths = layer_metamers(
            models[gen], images, layers, fake_relu=[_fake_relu(gen, la) for la in layers], recipe=recipe, seed=seed
        )
        for layer, s in synths.items():
            out[f"{gen}:{layer}"] = {
                "metamers": s.metamer.detach().clone(),
                "final_loss": float(s.losses[-1]),
                "members": [(gen, layer)],
                "ensemble": s.ensemble,
            }
        log(f"  {gen}: {len(layers)} layers in {time.perf_counter() - start:.0f} s")
    for ens_name, members in ENSEMBLES.items():
        for schedule in SCHEDULES:
            start = time.perf_counter()
            acts = [LayerActivations(models[m], la, fake_relu=_fake_relu(m, la), name=f"{m}:{la}") for m, la in members]
            ensemble = Ensemble(acts, schedule=schedule, switch_every=switch_every, seed=seed)
            s = ModelMetamer(images, ensemble, recipe=recipe, seed=seed)
            s.synthesize()
            ensemble.active = None
            out[f"{ens_name}/{schedule}"] = {
                "metamers": s.metamer.detach().clone(),
                "final_loss": float(s.losses[-1]),
                "members": list(members),
                "ensemble": ensemble,
            }
            log(f"  {ens_name}/{schedule}: {time.perf_counter() - start:.0f} s")
    return out


def null_tests(
    models: dict[str, nn.Module], conditions: dict[str, dict[str, Any]], images: Tensor, null_images: Tensor
) -> dict[str, dict[str, Any]]:
    """Feather's null test of every condition: per member layer, and ``passed`` = every member passes."""
    nulls: dict[tuple[str, str], Any] = {}
    out: dict[str, dict[str, Any]] = {}
    for cond, c in conditions.items():
        passed = np.ones(len(images), dtype=bool)
        per_member = {}
        for member, (m, layer) in zip(c["ensemble"].members, c["members"]):
            if (m, layer) not in nulls:
                nulls[(m, layer)] = null_distribution(layer_activations(member, null_images))
            test = null_test(
                layer_activations(member, c["metamers"]), layer_activations(member, images), nulls[(m, layer)]
            )
            passed &= test.passed
            per_member[f"{m}:{layer}"] = {
                "null_maxima": test.null_maxima,
                "n_null_pairs": len(nulls[(m, layer)]),
                "rows": test.rows(),
            }
        out[cond] = {"passed": passed, "members": per_member}
    return out


def _row(question: str, measure: str, a: str, b: str, va: np.ndarray, vb: np.ndarray, n_boot: int, seed: int) -> dict:
    d = paired_difference(va, vb, list(range(len(va))), n_boot=n_boot, seed=derive_cell_seed(seed, (question, a, b)))
    return {
        "question": question,
        "measure": measure,
        "a": a,
        "b": b,
        **d,
        "verdict": verdict(d["ci_low"], d["ci_high"]),
    }


def questions(
    correct: dict[str, dict[str, np.ndarray]], passed: dict[str, np.ndarray], n_boot: int, seed: int
) -> list[dict[str, Any]]:
    """The table's rows. ``correct[condition][model]``: ``(N,)`` 0/1 per image; ``passed[condition]``: ``(N,)`` bool."""
    rows: list[dict[str, Any]] = []

    def others(cond: str, exclude: set[str]) -> np.ndarray:
        judges = [m for m in correct[cond] if m not in exclude]
        return np.mean([correct[cond][m] for m in judges], axis=0)

    for gen, layers in GENERATORS.items():
        first, last = f"{gen}:{layers[0]}", f"{gen}:{layers[-1]}"
        judges = [m for m in MINIATURE_MODELS if m != gen]
        rows.append(
            _row(
                f"(a) {gen}: other models' recognition falls with depth",
                f"accuracy of {', '.join(judges)} (mean)",
                first,
                last,
                others(first, {gen}),
                others(last, {gen}),
                n_boot,
                seed,
            )
        )
    adv, std = f"cnn_adv:{CNN_LAYERS[-1]}", f"cnn:{CNN_LAYERS[-1]}"
    for judges in (["vit", HELD_OUT], ["vit"], [HELD_OUT]):
        a = np.mean([correct[adv][m] for m in judges], axis=0)
        b = np.mean([correct[std][m] for m in judges], axis=0)
        rows.append(
            _row(
                "(b) adversarial CNN's last-layer metamers more recognisable",
                f"accuracy of {', '.join(judges)}" + (" (mean)" if len(judges) > 1 else ""),
                adv,
                std,
                a,
                b,
                n_boot,
                seed,
            )
        )
    for ens, members in ENSEMBLES.items():
        singles = [f"{m}:{la}" for m, la in members]
        for schedule in SCHEDULES:
            cond = f"{ens}/{schedule}"
            rows.append(
                _row(
                    "(c) ensemble beats its members' single-model metamers",
                    f"accuracy of {HELD_OUT}",
                    cond,
                    " & ".join(singles) + " (mean)",
                    correct[cond][HELD_OUT],
                    np.mean([correct[s][HELD_OUT] for s in singles], axis=0),
                    n_boot,
                    seed,
                )
            )
    names = list(ENSEMBLES)
    for schedule in SCHEDULES:
        rows.append(
            _row(
                "(c) CNN ensemble beats the ViT-containing ensemble",
                f"accuracy of {HELD_OUT}",
                f"{names[0]}/{schedule}",
                f"{names[1]}/{schedule}",
                correct[f"{names[0]}/{schedule}"][HELD_OUT],
                correct[f"{names[1]}/{schedule}"][HELD_OUT],
                n_boot,
                seed,
            )
        )
    for cond, p in passed.items():
        mean, low, high = bootstrap_ci(p.astype(float), n_boot=n_boot, seed=derive_cell_seed(seed, ("null", cond)))
        rows.append(
            {
                "question": "(d) metamers passing the null test",
                "measure": "fraction passing (Spearman, Pearson, dB SNR > null max)",
                "a": cond,
                "b": "",
                "mean_a": mean,
                "mean_b": math.nan,
                "difference": mean,
                "ci_low": low,
                "ci_high": high,
                "n_units": len(p),
                "n_pairs": len(p),
                "verdict": f"{int(p.sum())}/{len(p)} pass",
            }
        )
    return rows


def _fmt(v: float, spec: str = ".3f") -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def markdown(rows: list[dict], recognition: list[dict], summary: dict) -> str:
    """The question table and the per-condition recognition / null-test table."""
    s = summary["settings"]
    lines = [
        f"Study images: {s['images']} held-out 32 px toy-object crops (7 shapes, balanced), "
        f"{summary['study']['all_correct']} of them classified correctly by all four models; null pool: {s['null_images']} other crops "
        f"(all {s['null_images'] * (s['null_images'] - 1)} ordered pairs).",
        f"Synthesis: Feather's step, {s['blocks']} blocks x {s['block_steps']} steps = {s['steps']} steps, "
        f"step length {s['step_size']} halved per block; ensembles switch every {s['switch_every']} steps. "
        f"Seed {s['seed']}; bootstrap {s['n_boot']} resamples over images. Wall clock {summary['seconds']:.0f} s.",
        "Models (held-out accuracy on clean crops / under L2 PGD eps 0.5 (3 steps)): "
        + "; ".join(
            f"{k} {v['test_accuracy']:.3f} / {v['test_accuracy_under_pgd']:.3f}" for k, v in summary["models"].items()
        )
        + ".",
        "",
        "Each difference is paired over images (same noise) and signed so that > 0 is what the papers report; "
        "95 % bootstrap interval over images. Chance recognition is 1/7 = 0.143.",
        "",
        "| question | measure | A | B | A | B | difference [95 % CI] | n | holds? |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["question"].startswith("(d)"):
            diff = f"{r['difference']:.3f} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
        else:
            diff = f"{r['difference']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
        lines.append(
            f"| {r['question']} | {r['measure']} | {r['a']} | {r['b']} | {_fmt(r['mean_a'])} | {_fmt(r['mean_b'])} | "
            f"{diff} | {r['n_pairs']} | {r['verdict']} |"
        )
    lines += [
        "",
        "Recognition of each condition's metamers by each model (accuracy [95 % CI]), final loss "
        "(normalised distance, mean over images), null-test passes, and the similarity shift: the "
        f"Jensen-Shannon divergence (bits) between the distributions of pairwise representational "
        f"similarity of the natural images and of the metamers at {HELD_OUT}'s last layer (0: geometry kept):",
        "",
        "| metamers | final loss | null test | similarity JSD | " + " | ".join(MINIATURE_MODELS) + " |",
        "|---|---|---|---|" + "---|" * len(MINIATURE_MODELS),
    ]
    by = {(r["layer"], r["model"]): r for r in recognition}
    for cond, info in summary["conditions"].items():
        cells = [
            f"{by[(cond, m)]['accuracy']:.2f} [{_fmt(by[(cond, m)]['ci_low'], '.2f')}, {_fmt(by[(cond, m)]['ci_high'], '.2f')}]"
            for m in MINIATURE_MODELS
        ]
        lines.append(
            f"| {cond} | {info['final_loss']:.3f} | {info['null_passed']}/{info['n']} | {info['similarity_jsd']:.3f} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def figure_recognition(recognition: list[dict], path: Path) -> None:
    """Recognition by layer, one panel per generating model (error bars: 95 % CI), and the ensembles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(r["layer"], r["model"]): r for r in recognition}
    colours = {"cnn": "tab:blue", "cnn_adv": "tab:red", "vit": "tab:green", HELD_OUT: "tab:purple"}
    fig, axes = plt.subplots(1, 4, figsize=(17, 5.2), gridspec_kw={"width_ratios": [4, 4, 3, 5]})
    for ax, (gen, layers) in zip(axes, GENERATORS.items()):
        x = np.arange(len(layers))
        for k, m in enumerate(MINIATURE_MODELS):
            rs = [by[(f"{gen}:{la}", m)] for la in layers]
            y = np.array([r["accuracy"] for r in rs])
            err = np.array([[r["accuracy"] - r["ci_low"], r["ci_high"] - r["accuracy"]] for r in rs]).T
            own = m == gen
            ax.errorbar(
                x + (k - 1.5) * 0.09,
                y,
                yerr=np.nan_to_num(err),
                marker="o",
                capsize=3,
                color=colours[m],
                linestyle="--" if own else "-",
                label=m,
            )
        ax.axhline(1 / len(SHAPES), color="grey", linestyle=":", linewidth=1)
        ax.set_xticks(x, layers)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"metamers of {gen}")
        ax.set_xlabel("layer (early -> late)")
    axes[0].set_ylabel("recognised (accuracy, 95 % CI)")
    handles = [
        plt.Line2D([], [], color=colours[m], marker="o", label=f"recognised by {m}") for m in MINIATURE_MODELS
    ] + [plt.Line2D([], [], color="black", linestyle="--", label="dashed: by the generating model")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    ax = axes[3]
    conds = [f"cnn:{CNN_LAYERS[-1]}", f"cnn_adv:{CNN_LAYERS[-1]}", f"vit:{VIT_LAYERS[-1]}"] + [
        f"{e}/{s}" for e in ENSEMBLES for s in SCHEDULES
    ]
    rs = [by[(c, HELD_OUT)] for c in conds]
    y = np.array([r["accuracy"] for r in rs])
    err = np.array([[r["accuracy"] - r["ci_low"], r["ci_high"] - r["accuracy"]] for r in rs]).T
    ax.bar(np.arange(len(conds)), y, yerr=np.nan_to_num(err), capsize=3, color=["tab:gray"] * 3 + ["tab:orange"] * 4)
    ax.axhline(1 / len(SHAPES), color="grey", linestyle=":", linewidth=1)
    ax.set_xticks(
        np.arange(len(conds)), [c.replace("+", "+\n").replace("/", "\n").replace(":", "\n") for c in conds], fontsize=8
    )
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(f"last layers (grey) and ensembles (orange),\nrecognised by {HELD_OUT}", fontsize=10)
    fig.suptitle("Miniature model metamers: recognition by each model (dotted: chance 1/7)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_contact_sheet(images: Tensor, conditions: dict[str, dict[str, Any]], path: Path, n_show: int = 6) -> None:
    """Originals (top row) and their metamers: one row per condition, one column per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = ["original", *conditions]
    n_show = min(n_show, len(images))
    fig, axes = plt.subplots(len(rows), n_show, figsize=(0.85 * n_show + 1.9, 0.85 * len(rows) + 0.6), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_show):
            img = images[j] if row == "original" else conditions[row]["metamers"][j]
            ax = axes[i, j]
            ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(row, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("Originals (top) and their metamers\nper model:layer and ensemble/schedule", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    log = print
    model_dir = Path(args.models)
    if args.quick and not (model_dir / "models.json").exists():
        model_dir = Path(args.out) / "models"  # quick models never overwrite the shipped ones
    if args.train or not (model_dir / "models.json").exists():
        log(f"training the miniature models into {model_dir}{' (quick)' if args.quick else ''} ...")
        train_miniature_models(model_dir, quick=args.quick, seed=args.data_seed, log=log)
    models = load_miniature_models(model_dir)
    record = json.loads((model_dir / "models.json").read_text())
    data = study_images(models, args.images, args.null_images, args.data_seed)
    images, labels = data["images"], data["labels"]
    recipe = FeatherRecipe(block_iterations=args.block_steps, n_blocks=args.blocks, step_size=args.step_size)
    log(f"synthesising ({recipe.max_iter} steps, {len(images)} images) ...")
    conditions = synthesise(models, images, recipe, seed=args.seed, switch_every=args.switch_every, log=log)
    classifiers = {m: Classifier(models[m]) for m in MINIATURE_MODELS}
    recognition = [
        r.to_dict()
        for r in recognition_table(
            classifiers, {c: v["metamers"] for c, v in conditions.items()}, labels, n_boot=args.n_boot, seed=args.seed
        )
    ]
    correct = {
        c: {m: (predict(classifiers[m], v["metamers"]) == labels).double().numpy() for m in MINIATURE_MODELS}
        for c, v in conditions.items()
    }
    nulls = null_tests(models, conditions, images, data["null_images"])
    # Boehm et al.'s geometry measure: do the metamers keep the held-out model's pairwise similarities?
    judge = LayerActivations(models[HELD_OUT], CNN_LAYERS[-1], name=f"{HELD_OUT}:{CNN_LAYERS[-1]}")
    natural_acts = layer_activations(judge, images)
    shifts = {c: similarity_shift(natural_acts, layer_activations(judge, v["metamers"])) for c, v in conditions.items()}
    passed = {c: v["passed"] for c, v in nulls.items()}
    rows = questions(correct, passed, args.n_boot, args.seed)
    seconds = time.perf_counter() - start
    summary = {
        "settings": {
            "quick": args.quick,
            "images": len(images),
            "null_images": len(data["null_images"]),
            "blocks": args.blocks,
            "block_steps": args.block_steps,
            "steps": recipe.max_iter,
            "step_size": args.step_size,
            "switch_every": args.switch_every,
            "seed": args.seed,
            "data_seed": args.data_seed,
            "n_boot": args.n_boot,
            "threads": args.threads,
            "recipe": recipe.record(),
            "models_dir": str(model_dir.resolve().relative_to(REPO))
            if model_dir.resolve().is_relative_to(REPO)
            else str(model_dir),
        },
        "models": {
            k: {kk: v[kk] for kk in ("test_accuracy", "test_accuracy_under_pgd", "steps", "adversary", "parameters")}
            for k, v in record["models"].items()
        },
        "study": {k: data[k] for k in ("scene_seeds", "object_index", "null_scene_seeds")}
        | {"labels": labels.tolist(), "all_correct": int(data["all_correct"].sum())},
        "conditions": {
            c: {
                "members": [f"{m}:{la}" for m, la in v["members"]],
                "final_loss": v["final_loss"],
                "null_passed": int(passed[c].sum()),
                "similarity_jsd": shifts[c].jsd,
                "n": len(images),
            }
            for c, v in conditions.items()
        },
        "seconds": seconds,
    }
    out = Path(args.out)
    md = markdown(rows, recognition, summary)
    result = {
        "summary": summary,
        "rows": rows,
        "recognition": recognition,
        "correct": {c: {m: v.tolist() for m, v in d.items()} for c, d in correct.items()},
        "null_test": {c: v["members"] for c, v in nulls.items()},
        "similarity_shift": {"layer": judge.name, **{c: v.to_dict() for c, v in shifts.items()}},
    }
    text = json.dumps(result, indent=1, allow_nan=True) + "\n"
    atomic_write(out / "results.json", lambda t: Path(t).write_text(text))
    atomic_write(out / "results.md", lambda t: Path(t).write_text(md))
    figure_recognition(recognition, out / "recognition_by_layer.png")
    figure_contact_sheet(images, conditions, out / "metamers.png")
    print(md)
    print(f"Written to {out} in {seconds:.0f} s.")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "inference" / "results" / "model_metamers"))
    p.add_argument("--models", default=str(MODELS_DIR), help="folder of the trained models (trained here if missing)")
    p.add_argument("--train", action="store_true", help="retrain the models into --models first")
    p.add_argument("--quick", action="store_true", help="CI size: 7 images, 2 x 5 steps, 200 resamples")
    p.add_argument("--images", type=int, default=28)
    p.add_argument("--null-images", type=int, default=48)
    p.add_argument("--blocks", type=int, default=6)
    p.add_argument("--block-steps", type=int, default=100)
    p.add_argument("--step-size", type=float, default=1.0)
    p.add_argument("--switch-every", type=int, default=5)
    p.add_argument("--n-boot", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0, help="noise and bootstrap seed")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the toy crops (training and study)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.null_images, args.blocks, args.block_steps, args.n_boot = 7, 6, 2, 5, 200
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
