"""The demo path: object-level scores, own-vs-other, the ablation table, the demo-model build
script (shortened), and the bundled model itself (it must have learned its scenes)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metamergen.demo.measures import object_scores, own_vs_other
from metamergen.demo.run import DEMO_MODEL
from metamergen.demo.toyworld import generate_scene

REPO = Path(__file__).resolve().parent.parent


def _load_script(rel: str):
    spec = importlib.util.spec_from_file_location(f"script_{Path(rel).stem}", REPO / rel)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------- measures


def test_object_scores_count_recovered_and_fixated_objects():
    scene = generate_scene(7)
    size = (scene.size, scene.size)
    first = scene.objects[0]
    perfect = object_scores(scene.image, scene.objects, [first.centre], scene_size=size)
    assert perfect == {"objects_recovered": 1.0, "fixated_objects_recovered": 1.0}
    grey = Image.new("RGB", size, (128, 128, 128))
    blank = object_scores(grey, scene.objects, [first.centre], scene_size=size)
    assert blank == {"objects_recovered": 0.0, "fixated_objects_recovered": 0.0}
    # only the first object painted back: all-objects share 1/n, fixated share 1 when fixating it
    partial = grey.copy()
    partial.paste(scene.image.crop(first.box), first.box[:2])
    on_first = object_scores(partial, scene.objects, [first.centre], scene_size=size)
    assert on_first["objects_recovered"] == pytest.approx(1 / len(scene.objects))
    assert on_first["fixated_objects_recovered"] == 1.0
    # no fixation on any object: the fixated share is undefined, not zero
    corners = [(0.5, 0.5), (63.5, 0.5), (0.5, 63.5), (63.5, 63.5)]
    far = [
        next(
            c
            for c in corners
            if not any(
                o.box[0] - 3 <= c[0] < o.box[2] + 3 and o.box[1] - 3 <= c[1] < o.box[3] + 3 for o in scene.objects
            )
        )
    ]
    assert math.isnan(object_scores(partial, scene.objects, far, scene_size=size)["fixated_objects_recovered"])
    # a generation at twice the size is scored in its own pixels (boxes scaled)
    big = scene.image.resize((2 * size[0], 2 * size[1]), Image.NEAREST)
    assert object_scores(big, scene.objects, [], scene_size=size)["objects_recovered"] == 1.0


def test_a_baseline_is_scored_over_the_renders_fixation_lists():
    """A baseline has no fixations: its fixated columns average over the renders' lists (lists that hit
    no object left out), its scene-wide columns ignore them, and toy_scores is the three measures."""
    from metamergen.demo.measures import fixation_averaged, shape_judge, toy_scores

    judge = shape_judge()
    scene = generate_scene(7)
    first, second = scene.objects[:2]
    grey = Image.new("RGB", scene.image.size, (128, 128, 128))
    only_first = grey.copy()
    only_first.paste(scene.image.crop(first.box), first.box[:2])
    nowhere = [(-50.0, -50.0)]
    lists = [[first.centre], [second.centre], [first.centre, second.centre], nowhere]
    got = fixation_averaged(only_first, scene.image, scene.objects, lists, judge=judge)
    each = [toy_scores(only_first, scene.image, scene.objects, f, judge=judge) for f in lists]
    assert each[0]["fixated_objects_recovered"] == 1.0 and each[1]["fixated_objects_recovered"] == 0.0
    assert math.isnan(each[3]["fixated_objects_recovered"])
    assert got["fixated_objects_recovered"] == pytest.approx((1.0 + 0.0 + 0.5) / 3)
    assert got["fixated_object_mse"] == pytest.approx(np.mean([e["fixated_object_mse"] for e in each[:3]]))
    assert got["objects_recovered"] == each[0]["objects_recovered"] == pytest.approx(1 / len(scene.objects))
    assert (
        set(got)
        == set(each[0])
        == {
            "objects_recovered",
            "fixated_objects_recovered",
            "fixated_object_mse",
            "layout_mse",
            "shapes_recognised",
            "fixated_shapes_recognised",
        }
    )
    assert math.isnan(
        fixation_averaged(only_first, scene.image, scene.objects, [nowhere], judge=judge)["fixated_object_mse"]
    )


def _write(path: Path, image: Image.Image) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path.name


def test_shape_scores_name_the_shapes_of_a_scene_and_not_of_a_blur():
    """The toy shape judge names every object of original scenes, a flat image's hardly any, and the
    fixated share counts only the fixated objects."""
    from PIL import ImageFilter

    from metamergen.demo.measures import shape_judge, shape_scores

    judge = shape_judge()
    scenes = [generate_scene(s) for s in range(7, 13)]
    size = (scenes[0].size, scenes[0].size)
    n_objects = sum(len(sc.objects) for sc in scenes)
    named = sum(
        shape_scores(sc.image, sc.objects, [], scene_size=size, judge=judge)["shapes_recognised"] * len(sc.objects)
        for sc in scenes
    )
    assert named / n_objects > 0.9
    blurred = sum(
        shape_scores(sc.image.filter(ImageFilter.GaussianBlur(6)), sc.objects, [], scene_size=size, judge=judge)[
            "shapes_recognised"
        ]
        * len(sc.objects)
        for sc in scenes
    )
    assert blurred / n_objects < 0.5
    scene = scenes[0]
    first = scene.objects[0]
    grey = Image.new("RGB", size, (128, 128, 128))
    only_first = grey.copy()
    only_first.paste(scene.image.crop(first.box), first.box[:2])
    s = shape_scores(only_first, scene.objects, [first.centre], scene_size=size, judge=judge)
    assert s["fixated_shapes_recognised"] == 1.0 and s["shapes_recognised"] < 1.0
    double = shape_scores(scene.image.resize((128, 128)), scene.objects, [], scene_size=size, judge=judge)
    assert double["shapes_recognised"] > 0.5  # a render at another size is scored in the scene's frame
    assert math.isnan(
        shape_scores(scene.image, scene.objects, [(-50.0, -50.0)], scene_size=size, judge=judge)[
            "fixated_shapes_recognised"
        ]
    )


def test_own_vs_other_finds_each_generation_s_scene(tmp_path):
    scenes = [generate_scene(s).image for s in (1, 2, 3)]
    rows = []
    for i, im in enumerate(scenes):
        scene = str(tmp_path / "scenes" / f"s{i}.png")
        _write(Path(scene), im)
        noisy = np.clip(np.asarray(im, float) + np.random.default_rng(i).normal(0, 10, (64, 64, 3)), 0, 255)
        _write(tmp_path / "gen" / f"g{i}.png", Image.fromarray(noisy.astype(np.uint8)))
        rows.append({"scene": scene, "path": f"gen/g{i}.png"})
    result = own_vs_other(rows, tmp_path)
    assert result["own_closest"] == 1.0 and result["chance"] == pytest.approx(1 / 3)
    assert result["ratio"] < 0.2
    # the same generations attributed to the wrong scenes: never closest
    shifted = [{"scene": rows[(i + 1) % 3]["scene"], "path": r["path"]} for i, r in enumerate(rows)]
    assert own_vs_other(shifted, tmp_path)["own_closest"] == 0.0
    with pytest.raises(ValueError, match="two scenes"):
        own_vs_other(rows[:1], tmp_path)


def test_paired_effects_recover_known_differences_with_their_signs():
    """demo_effects on a table with effects built in: the fovea lowers the fixated-object error by
    0.02 at N = 1 and 0.05 at N = 10, the periphery halves the layout error, no viewer effect."""
    pd = pytest.importorskip("pandas")
    from metamergen.demo.effects import baseline_comparisons, demo_effects, effects_markdown

    rng = np.random.default_rng(0)
    rows = []
    for s in range(12):
        for h in range(2):
            noise = rng.normal(0, 0.01)  # shared by the paired renders (common random numbers)
            for source in ("viewer", "random"):
                for prefix in (1, 10):
                    for cond in ("both", "peripheral", "foveal"):
                        fov_gain = (0.05 if prefix == 10 else 0.02) if cond != "peripheral" else 0.0
                        layout = 0.02 if cond != "foveal" else 0.04
                        rows.append(
                            dict(
                                scene_id=f"s{s}",
                                scanpath_id=f"s{s}-v",
                                hypothesis=h,
                                fixation_source=source,
                                prefix=prefix,
                                condition=cond,
                                fixated_object_mse=0.1 - fov_gain + noise,
                                layout_mse=layout + noise + rng.normal(0, 0.001),
                                mse=0.03 + layout + noise,
                                ssim=0.5,
                                # more of the scene recovered after 10 fixations: the gain grows 0.1 -> 0.3
                                objects_recovered=0.2 + noise + (0.0 if cond == "peripheral" else fov_gain * 6),
                            )
                        )
    table = pd.DataFrame(rows)
    out = {r["question"][:2]: r for r in demo_effects(table, n_boot=500)}
    assert out["1."]["verdict"] == "yes" and out["1."]["difference"] == pytest.approx(0.035, abs=1e-3)
    (growth,) = [r for r in demo_effects(table, n_boot=500) if r["measure"].startswith("fixated_object_mse gain")]
    assert growth["verdict"] == "yes" and growth["difference"] == pytest.approx(0.03, abs=1e-3)
    (scene_gain,) = [r for r in demo_effects(table, n_boot=200) if r["measure"].startswith("objects_recovered gain")]
    assert scene_gain["verdict"] == "yes" and scene_gain["difference"] == pytest.approx(0.18, abs=1e-3)
    layout = [r for r in demo_effects(table, n_boot=200) if r["measure"] == "layout_mse"][0]
    assert layout["verdict"] == "yes" and layout["difference"] == pytest.approx(0.02, abs=1e-3)
    rows = demo_effects(table, n_boot=200)
    by = {(r["question"][:2], r["measure"], r["b"]): r for r in rows}
    for measure in ("mse", "objects_recovered"):  # no viewer effect was built in, on either measure
        q4 = by[("4.", measure, "random")]
        assert q4["verdict"] == "not resolved" and q4["difference"] == pytest.approx(0.0, abs=1e-9)
    # the whole image: both streams beat the periphery alone on colour (the fovea's gain) and
    # the foveal stream alone on pixels (the layout)
    assert by[("3.", "objects_recovered", "peripheral")]["verdict"] == "yes"
    assert by[("3.", "mse", "foveal")]["verdict"] == "yes"
    base = pd.DataFrame([dict(baseline="flat", scene_id=f"s{s}", mse=0.2, ssim=0.6) for s in range(12)])
    (vs_flat_mse, vs_flat_ssim) = baseline_comparisons(table, base, ("mse", "ssim"), n_boot=200)
    with pytest.raises(KeyError, match="no registered direction"):
        baseline_comparisons(table.assign(unregistered=1.0), base.assign(unregistered=1.0), ("unregistered",))
    assert vs_flat_mse["verdict"] == "yes" and vs_flat_ssim["verdict"] == "reversed"  # 0.5 < 0.6
    table_md = effects_markdown([out["1."], vs_flat_ssim]).splitlines()  # what the demo and the ablation print
    assert len(table_md) == 4 and table_md[2].startswith("| 1. fixated objects")
    assert table_md[3].endswith("| 12 | reversed |") and "-0.1000 [-0.1000, -0.1000]" in table_md[3]


# ---------------------------------------------------------------------------------- build script


def test_build_script_quick_writes_a_loadable_model(tmp_path):
    from metamergen.pipeline.pipeline_metamergen import MetamerGenPipeline

    build = _load_script("training/build_demo_model.py")
    work = tmp_path / "work"
    out = build.build(tmp_path / "model", work=work, seed=3, quick=True, model_options={"text_max_length": 100})
    info = json.loads((out / "build_info.json").read_text())
    assert info["seed"] == 3 and info["steps"] == build.QUICK
    assert set(info["timings_s"]) == {"world", "vae", "base", "encoder", "adapters"}
    assert not (tmp_path / "model.partial").exists()
    pipe = MetamerGenPipeline.from_pretrained(out)
    assert pipe.unet.config.cross_attention_dim == info["model"]["cross_attention_dim"]
    assert pipe.vae.config.scaling_factor != 0.18215  # set from the trained VAE's latents
    # a resumed base keeps the config it was built with (before, build_info.json said the default
    # text length, and the demo then failed to load the model)
    again = build.build(tmp_path / "again", work=work, seed=3, quick=True, resume_stages=("world", "vae", "base"))
    assert json.loads((again / "build_info.json").read_text())["model"]["text_max_length"] == 100
    with pytest.raises(ValueError, match="reused base"):
        build.build(
            tmp_path / "c",
            work=work,
            seed=3,
            quick=True,
            resume_stages=("world", "vae", "base"),
            model_options={"text_max_length": 90},
        )
    (work / "base" / build.BASE_RECORD).unlink()  # a base from before the record: its config is unknown
    with pytest.raises(ValueError, match="built before the build recorded its config"):
        build.build(tmp_path / "d", work=work, seed=3, quick=True, resume_stages=("world", "vae", "base"))


def test_captions_say_where_each_object_and_region_is():
    from metamergen.demo.toymodel import scene_caption

    layout = {
        "horizon": 40,
        "regions": [
            {"name": "wall", "colour": "cream", "box": [0, 0, 64, 40]},
            {"name": "floor", "colour": "soil", "box": [0, 40, 64, 64]},
            {"name": "door", "colour": "tile", "box": [8, 16, 24, 40]},
        ],
    }
    objects = [
        {"colour": "blue", "shape": "cross", "box": [50, 2, 60, 12]},
        {"colour": "red", "shape": "ring", "box": [0, 56, 8, 64]},
    ]
    assert (
        scene_caption(layout, objects)
        == "horizon 5, cream wall, soil floor, tile door 2,3: blue cross 6,0, red ring 0,7"
    )
    assert scene_caption(layout, objects, grid=4).endswith("blue cross 3,0, red ring 0,3")


def test_encoder_training_teaches_tokens_their_patch_and_place_then_freezes():
    """A few dozen steps on 8 scenes: each token's place becomes readable (chance is 1/64) and
    its patch's pixels predictable, where the same random encoder scores near chance."""
    from metamergen.demo.toymodel import DemoModelConfig, build_image_encoder, train_image_encoder
    from metamergen.demo.toyworld import scene_seeds

    images = [generate_scene(s).image for s in scene_seeds(5, 8)]
    cfg = DemoModelConfig(encoder_width=32, encoder_layers=1)
    torch.manual_seed(0)
    before = train_image_encoder(build_image_encoder(cfg), images, steps=1, batch_size=8, learning_rate=0.0)
    torch.manual_seed(0)
    encoder = build_image_encoder(cfg)
    after = train_image_encoder(encoder, images, steps=80, batch_size=8, learning_rate=3e-3, position_weight=1.0)
    assert before["position_accuracy"] < 0.05
    assert after["position_accuracy"] > 0.5, after
    assert after["pixel_mse"] < 0.5 * before["pixel_mse"], (before, after)
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())


# ---------------------------------------------------------------------------------- the bundled model


@pytest.fixture(scope="module")
def demo_pipe():
    from metamergen.demo.run import load_demo_pipeline

    return load_demo_pipeline()


def _heldout(n: int, info: dict):
    from metamergen.demo.toyworld import ToyWorldConfig, scene_seeds

    cfg = ToyWorldConfig.from_dict(info["world"])
    return [generate_scene(s, cfg) for s in scene_seeds(2 * info["seed"] + 1, n)]


def test_every_bundled_model_file_is_package_data():
    import fnmatch

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["metamergen"]
    files = [f for f in DEMO_MODEL.rglob("*") if f.is_file()]
    assert files
    for f in files:  # setuptools globs are relative to the package folder; '*' does not cross '/'
        rel = f.relative_to(REPO / "metamergen").as_posix()
        assert any(fnmatch.fnmatch(rel, g) and rel.count("/") == g.count("/") for g in globs), rel


def test_bundled_model_is_complete_small_and_documented():
    from metamergen.demo.run import demo_model_info

    info = demo_model_info()
    index = json.loads((DEMO_MODEL / "model_index.json").read_text())
    for name, spec in index.items():
        if isinstance(spec, list) and spec[0] is not None:
            assert any((DEMO_MODEL / name).iterdir()), f"component {name} has no files"
    assert set(info["steps"]) == {"n_train", "n_test", "vae_steps", "base_steps", "encoder_steps", "adapter_steps"}
    assert {"world", "vae", "base", "encoder", "adapters"} <= set(info["timings_s"])
    # built with --base-from the model bundled at 286db22, with the recipe the README describes
    assert info["base_from"]["git_commit"].startswith("286db22")
    assert info["train_config"]["model"]["foveal_local"] is True
    size = sum(f.stat().st_size for f in DEMO_MODEL.rglob("*") if f.is_file())
    assert size < 25e6, f"the bundled model is {size / 1e6:.1f} MB; the aim is < 25 MB"


def test_bundled_model_reconstructs_held_out_scenes_from_their_own_tokens(demo_pipe):
    """The adapters carry the scene: one-step latent estimates of held-out scenes are closer from
    the scene's own foveal + peripheral tokens than from another scene's, at every noise level."""
    from metamergen.demo.run import demo_model_info
    from metamergen.evaluation.diagnostics import conditioning_reconstruction

    # VAE, UNet and adapters are stored in fp16 and must come back as fp32 for the CPU
    assert {m.dtype for m in demo_pipe.components.values() if isinstance(m, torch.nn.Module)} == {torch.float32}
    scenes = _heldout(16, demo_model_info())
    fixations = [[o.centre for o in s.objects] for s in scenes]
    for t in (300, 600, 900):
        r = conditioning_reconstruction(demo_pipe, [s.image for s in scenes], fixations, timesteps=(t,))
        assert r["own"] < 0.95 * r["other"], (t, r["own"], r["other"])
        assert r["own_better"] >= 0.75, (t, r["own_per_scene"], r["other_per_scene"])


@pytest.mark.slow
def test_bundled_model_s_fovea_brings_back_what_was_fixated(demo_pipe):
    """The effect the demo exists to show: with both streams the latent cells under the fixated
    patches are reconstructed far better than with the periphery alone, in most held-out scenes,
    and the fovea changes the fixated cells much more than the others (README, "What it learned")."""
    from metamergen.demo.run import DEMO_PERIPHERAL_BLUR, demo_model_info
    from metamergen.evaluation.diagnostics import foveal_localisation, stream_contributions

    scenes = _heldout(16, demo_model_info())
    images = [s.image for s in scenes]
    fixations = [[o.centre for o in s.objects] for s in scenes]
    r = stream_contributions(demo_pipe, images, fixations, peripheral_blur=DEMO_PERIPHERAL_BLUR)
    assert r["both"]["fixated"] < 0.7 * r["peripheral"]["fixated"], r
    assert r["foveal_gain_share"] >= 0.75, r["foveal_gain_per_scene"]
    loc = foveal_localisation(demo_pipe, images, fixations, timesteps=(500,), peripheral_blur=DEMO_PERIPHERAL_BLUR)
    assert loc["ratio"] > 3.0, loc


class _FailingPipe:
    """The demo pipeline, failing at its first render (an out-of-memory error, say)."""

    def __init__(self, pipe):
        self.pipe = pipe

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def __call__(self, **kw):
        raise RuntimeError("simulated failure at the first render")


def test_a_demo_that_fails_before_rendering_anything_leaves_nothing_behind(demo_pipe, tmp_path, capsys):
    """Before: scenes/ and an empty study/images/ were left behind."""
    from metamergen.commands import main
    from metamergen.demo.run import run_demo

    with pytest.raises(RuntimeError, match="simulated"):
        run_demo(tmp_path / "demo", n_scenes=2, prefixes=(1,), steps=1, progress=False, pipe=_FailingPipe(demo_pipe))
    assert not (tmp_path / "demo").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("kept")
    with pytest.raises(RuntimeError, match="simulated"):
        run_demo(tmp_path / "mine", n_scenes=2, prefixes=(1,), steps=1, progress=False, pipe=_FailingPipe(demo_pipe))
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    with pytest.raises(ValueError, match="steps"):  # bad settings: refused before anything is written
        run_demo(tmp_path / "bad", n_scenes=2, steps=0, progress=False, pipe=demo_pipe)
    assert not (tmp_path / "bad").exists()
    for flags, message in (
        (["--steps", "0"], "--steps"),
        (["--scenes", "1"], "--scenes"),
        (["--hypotheses", "0"], "--hypotheses"),
    ):
        assert main(["demo", "--out", str(tmp_path / "cli"), *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "cli").exists()


def test_demo_writes_the_report_and_generations_resemble_their_own_scene(demo_pipe, tmp_path):
    """The demo path end to end (fewer prefixes and steps than the command's defaults)."""
    from metamergen.demo.run import run_demo

    result = run_demo(
        tmp_path / "demo", n_scenes=4, prefixes=(1, 10), steps=10, n_boot=200, progress=False, pipe=demo_pipe
    )
    out = tmp_path / "demo"
    for rel in (
        "report/index.html",
        "report/summary.csv",
        "scores.csv",
        "demo_summary.json",
        "study/manifest.jsonl",
        "scenes/viewer_scanpaths.jsonl",
    ):
        assert (out / rel).is_file(), rel
    assert {p.name for p in (out / "report" / "figures").iterdir()} >= {
        f"{m}.png" for m in ("ssim", "mse", "objects_recovered")
    }
    assert len(list((out / "report" / "sheets").iterdir())) > 0
    assert result.summary["n_generations"] == 4 * 2 * 3 * 2
    ovo = result.summary["own_vs_other"]
    assert ovo["ratio"] < 0.9, ovo  # generations are closer to their own scene than to the others
    assert ovo["own_closest"] > ovo["chance"], ovo
    # every baseline is scored on the fixated objects too, so the fovea's measures have baselines
    import pandas as pd

    base = pd.read_csv(out / "baselines.csv")
    assert set(base["baseline"]) == {"flat", "periphery"}
    for column in ("fixated_objects_recovered", "fixated_object_mse", "fixated_shapes_recognised"):
        assert base[column].notna().all(), column
        compared = [r for r in result.summary["versus_baselines"] if r["measure"] == column]
        assert [r["b"] for r in compared] == ["flat", "periphery"], column
    assert "fixated_object_mse" in set(pd.read_csv(out / "report" / "baselines_summary.csv")["metric"])
