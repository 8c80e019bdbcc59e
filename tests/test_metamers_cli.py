"""``metamergen model-metamers``: the output folder, resuming after an interruption, the config, bad input."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

pytest.importorskip("plenoptic")

from metamergen.commands import main  # noqa: E402
from metamergen.metamers.run import MetamerRunConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--set", "images.size=16", "--set", "recipe.block_iterations=20", "--set", "recipe.n_blocks=3"]
QUICK += ["--set", "recipe.step_size=0.5", "--set", "synthesis.save_every=25", "--set", "recognition.n_boot=200"]


def _images(folder: Path, n: int, seed: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        low = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        Image.fromarray(low).resize((24, 24), Image.BILINEAR).save(folder / f"im{i}.png")
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mm")
    return {"images": _images(root / "images", 2, 0), "null": _images(root / "null", 5, 1), "root": root}


def _run(data, out: Path, *extra: str) -> int:
    argv = ["model-metamers", "--tiny", "--images", str(data["images"]), "--null-images", str(data["null"])]
    return main([*argv, "--layers", "3,5", "--out", str(out), *QUICK, *extra])


def test_the_command_writes_metamers_a_manifest_and_both_tests(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(data, out) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["image_id"], r["source_id"], r["layer"], r["steps"]) for r in rows] == [
        ("im0/3", "im0", "3", 60),
        ("im0/5", "im0", "5", 60),
        ("im1/3", "im1", "3", 60),
        ("im1/5", "im1", "5", 60),
    ]
    for r in rows:
        assert Image.open(out / r["path"]).size == (16, 16) and (out / r["checkpoint"]).is_file()
        assert r["scene"] == str((data["images"] / f"{r['source_id']}.png").resolve())
    null_rows = list(csv.DictReader((out / "null_test.csv").open()))
    assert list(null_rows[0])[:6] == ["image_id", "layer", "member", "spearman", "pearson", "snr_db"]
    assert len(null_rows) == 4 and {r["n_null_pairs"] for r in null_rows} == {"20"}  # 5 x 4 ordered pairs
    assert [r["member"] for r in null_rows] == ["tiny_cnn:3", "tiny_cnn:3", "tiny_cnn:5", "tiny_cnn:5"]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["layers"]) == {"3", "5"} and summary["n_images"] == 2
    assert 0 <= summary["layers"]["3"]["recognition"]["accuracy"] <= 1
    for layer, s in summary["layers"].items():  # the manifest carries each metamer's test outcomes
        mine = [r for r in rows if r["layer"] == layer]
        assert sum(r["recognized"] for r in mine) == round(s["recognition"]["accuracy"] * 2)
        passed = {r["image_id"] for r in null_rows if r["layer"] == layer and r["passed"] == "True"}
        assert [r["null_test_passed"] for r in mine] == [int(i in passed) for i in ("im0", "im1")]
        assert sum(r["null_test_passed"] for r in mine) == s["null_test_passed"]
    printed = capsys.readouterr().out
    assert "3: mean loss" in printed and printed.strip().splitlines()[-1] == str(out / "report" / "index.html")
    page = (out / "report" / "index.html").read_text()  # the shared report, from the manifest alone
    assert page.count('<tr><td class="k">tiny_cnn</td>') == 2 and "figures/recognized_by_layer.png" in page
    assert "Score vs number of fixations" not in page  # no scene metamers, no scene sections
    sheet = Image.open(out / "report" / "sheets" / "layers_tiny_cnn_1-2.png")
    assert sheet.height > 2 * 256 and sheet.width > 3 * 256  # 2 images x (natural + 2 layers)
    assert Image.open(out / "report" / "figures" / "null_test_passed_by_layer.png").size[0] > 300


def _interrupt_then_resume(run, tmp_path: Path, monkeypatch) -> tuple[Path, Path, list[int]]:
    """``run(out)`` whole, then into another folder stopped at its 5th checkpoint (the second one of the
    second metamer: its first one, step 25, stays) and run again; returns both folders and the steps
    each ``synthesize`` call of the rerun was asked for."""
    from metamergen.metamers.synthesis import ModelMetamer

    whole, part = tmp_path / "whole", tmp_path / "part"
    assert run(whole) == 0
    real_save, saves = ModelMetamer.save, []

    def save_then_stop(self, path):
        saves.append(path)
        if len(saves) == 5:
            raise KeyboardInterrupt
        real_save(self, path)

    monkeypatch.setattr(ModelMetamer, "save", save_then_stop)
    assert run(part) == 130
    assert not (part / "manifest.jsonl").exists()
    monkeypatch.setattr(ModelMetamer, "save", real_save)
    real_synthesize, steps = ModelMetamer.synthesize, []

    def counting(self, max_iter=None, *args, **kwargs):
        steps.append(max_iter)
        real_synthesize(self, max_iter, *args, **kwargs)

    monkeypatch.setattr(ModelMetamer, "synthesize", counting)
    assert run(part) == 0
    for name in ("manifest.jsonl", "null_test.csv", "recognition.csv", "summary.json"):
        assert (part / name).read_text() == (whole / name).read_text(), name
    for png in sorted((whole / "metamers").rglob("*.png")):
        assert (part / png.relative_to(whole)).read_bytes() == png.read_bytes(), png
    return whole, part, steps


def test_an_interrupted_run_resumes_to_the_same_metamers(data, tmp_path, monkeypatch):
    _, _, steps = _interrupt_then_resume(lambda out: _run(data, out), tmp_path, monkeypatch)
    assert sum(steps) == 0 + (60 - 25) + 60 + 60  # the first metamer is done, the second resumes at step 25


def test_a_folder_made_with_other_settings_is_refused(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(data, out) == 0
    capsys.readouterr()
    assert _run(data, out, "--set", "synthesis.seed=1") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the --tiny notice
    assert err.startswith("metamergen model-metamers: error:") and "seed differ" in err


def test_the_feather_config_file_is_the_built_in_default():
    assert MetamerRunConfig.from_yaml(REPO / "configs" / "metamers_feather.yaml") == MetamerRunConfig()
    adam = MetamerRunConfig.from_yaml(REPO / "configs" / "metamers_adam.yaml")
    assert adam.recipe_object.max_iter == 12000 and adam.recipe["penalty_lambda"] == 0.1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--layers", "3,nope"], "layer 'nope' is not a module path of Sequential (0, 1, 2, 3, 4, 5, 6, 7, 8)"),
        (["--set", "synthesis.steps=3"], "unknown key(s) ['steps'] in section 'synthesis'"),
        (["--set", "recipe.name=sgd"], "recipe name must be one of feather, adam, got 'sgd'"),
        (["--set", "images.transform=vit"], "images.transform must be one of imagenet, none"),
        (["--null-images", "missing_folder"], "--null-images missing_folder: no such file or folder"),
        (["--set", "ensemble.members=[{tiny: 0, layer: 3}, {tiny: 1, layer: 5}]"], "drop --tiny, --layers"),
        (["--set", "ensemble.members=[{tiny: 0, layer: 3}]"], "ensemble.members needs two or more members"),
        (
            ["--set", "ensemble.members=[{tiny: 0, model: 'a:b', layer: 3}, {tiny: 1, layer: 5}]"],
            "exactly one of model, pretrained, tiny",
        ),
        (["--set", "ensemble.members=[{tiny: 0, layer: 3}, {tiny: 0, layer: 3}]"], "lists ['tiny_cnn_0:3'] twice"),
        (
            ["--set", "ensemble.members=[{tiny: 0, layer: 3}, {tiny: 1, layer: 5}]", "--set", "ensemble.schedule=x"],
            "ensemble.schedule must be one of mean, switch, random, got 'x'",
        ),
    ],
)
def test_bad_input_gets_one_line_and_exit_2(data, tmp_path, capsys, extra, message):
    argv = ["model-metamers", "--tiny", "--images", str(data["images"]), "--layers", "3", "--out", str(tmp_path / "o")]
    assert main([*argv, *QUICK, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("metamergen model-metamers: error:") and message in err[-1], err


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ([], "give one of --model module:name, --pretrained source:name or --tiny"),
        (["--pretrained", "keras:resnet50"], "source one of torchvision, timm, transformers"),
        (["--model", "nocolon"], "--model takes module:name"),
        (["--model", "metamergen.metamers.toy:nope"], "metamergen.metamers.toy has no attribute 'nope'"),
        (["--model", "metamergen.metamers.toy:__doc__"], "is a str, not a torch.nn.Module or a function returning one"),
    ],
)
def test_the_model_must_be_named_as_module_colon_name(data, tmp_path, capsys, model, message):
    argv = ["model-metamers", *model, "--images", str(data["images"]), "--layers", "3", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_user_model_is_loaded_frozen_and_in_eval_mode(data, tmp_path):
    # tiny_cnn is already frozen; a factory returning a trainable model must be frozen by the command
    out = tmp_path / "user"
    argv = ["model-metamers", "--model", "tests.test_metamers_cli:trainable", "--images", str(data["images"])]
    assert main([*argv, "--layers", "1", "--out", str(out), *QUICK]) == 0
    assert (out / "metamers" / "im0" / "1.png").is_file()


def trainable():
    """A trainable, training-mode model (as a user's factory might return)."""
    from metamergen.metamers.toy import tiny_cnn

    model = tiny_cnn(3).train()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def test_a_pretrained_transformers_classifier_loads_with_its_own_normalisation(data, tmp_path, capsys):
    """A local folder in the hub layout stands in for a download (no network in tests)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from metamergen.metamers.pretrained import load_pretrained

    folder = tmp_path / "vit"
    config = ViTConfig(
        image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16
    )
    ViTForImageClassification(config).save_pretrained(folder)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=mean, image_std=std).save_pretrained(folder)

    loaded = load_pretrained(f"transformers:{folder}")
    assert loaded.input_size == 16 and loaded.name == f"transformers:{folder}"
    assert loaded.normalize.mean.flatten().tolist() == pytest.approx(mean)
    assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())
    x = torch.rand(2, 3, 16, 16)
    assert loaded.model(x).shape == (2, 2)  # logits, not the library's output object

    out = tmp_path / "run"
    argv = ["model-metamers", "--pretrained", f"transformers:{folder}", "--images", str(data["images"])]
    assert main([*argv, "--layers", "net.vit.layernorm", "--out", str(out), *QUICK]) == 0
    assert json.loads((out / "run.json").read_text())["transform"]["std"] == pytest.approx(std)


def test_a_pretrained_source_whose_package_is_missing_says_which_pip_install(data, tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm":
            raise ImportError("No module named 'timm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    argv = ["model-metamers", "--pretrained", "timm:resnet50", "--images", str(data["images"]), "--layers", "x"]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert "needs the timm package: pip install timm" in capsys.readouterr().err


def test_metamergen_score_scores_the_metamers_against_their_originals(data, tmp_path, capsys):
    """The run's manifest is a score manifest: the scene metamers' metrics apply unchanged."""
    from metamergen.evaluation.metrics import build_metrics

    out = tmp_path / "run"
    assert _run(data, out) == 0
    table = tmp_path / "scores.csv"
    assert main(["score", "--manifest", str(out / "manifest.jsonl"), "--metrics", "mse,ssim", "--out", str(table)]) == 0
    scored = list(csv.DictReader(table.open()))
    assert [r["image_id"] for r in scored] == ["im0/3", "im0/5", "im1/3", "im1/5"]
    mse = build_metrics(["mse"])[0]
    for r in scored:
        original = Image.open(data["images"] / f"{r['source_id']}.png").convert("RGB")
        metamer = Image.open(tmp_path / r["path"]).convert("RGB")  # the table names files from its own folder
        assert float(r["mse"]) == pytest.approx(float(mse([original], [metamer])[0]), rel=1e-6)
    baselines = list(csv.DictReader((tmp_path / "baselines.csv").open()))  # what no optimisation gives
    assert {(b["baseline"], b["scene_id"]) for b in baselines} >= {("flat", "im0"), ("flat", "im1")}


def test_report_on_a_scored_run_has_one_row_per_layer_with_the_image_metrics(data, tmp_path, capsys):
    """`score`, then `report` on the run folder: the one report page, the run's tests beside the image metrics."""
    out = tmp_path / "run"
    assert _run(data, out) == 0
    assert main(["score", "--manifest", str(out / "manifest.jsonl"), "--metrics", "mse,ssim", "--no-progress"]) == 0
    assert main(["report", "--scores", str(out / "scores.csv"), "--out", str(out / "report"), "--n-boot", "200"]) == 0
    assert "layers_summary.csv and index.html" in capsys.readouterr().out
    cells = pd.read_csv(out / "report" / "layers_summary.csv", dtype={"layer": str}).set_index(["metric", "layer"])
    order = [(m, layer) for m in ("recognized", "null_test_passed", "loss", "ssim", "mse") for layer in ("3", "5")]
    assert cells.index.tolist() == order and set(cells["model"]) == {"tiny_cnn"} and set(cells["n_units"]) == {2}
    summary = json.loads((out / "summary.json").read_text())
    scores = pd.read_csv(out / "scores.csv", dtype={"layer": str})
    for layer, s in summary["layers"].items():
        assert cells.loc[("recognized", layer), "mean"] == s["recognition"]["accuracy"]
        assert cells.loc[("null_test_passed", layer), "mean"] == s["null_test_passed"] / 2
        assert cells.loc[("loss", layer), "mean"] == pytest.approx(s["mean_loss"])
        assert cells.loc[("ssim", layer), "mean"] == pytest.approx(scores.loc[scores["layer"] == layer, "ssim"].mean())
    page = (out / "report" / "index.html").read_text()
    assert page.count('<tr><td class="k">tiny_cnn</td>') == 2 and page.count('<tr class="baseline">') == 2
    assert (
        "<th>SSIM<br>" in page
        and "<th>Rec<br>" in page
        and (out / "report" / "figures" / "ssim_by_layer.png").is_file()
    )
    assert not (out / "report" / "summary.csv").exists()  # no scene metamers in this table


ENSEMBLE_CONFIG = """\
ensemble:
  schedule: switch
  switch_every: 7
  members:
    - {tiny: 0, layer: 3}
    - {tiny: 1, layer: 5, weight: 2.0}
images: {transform: none}
"""
TARGET = "tiny_cnn_0:3+tiny_cnn_1:5"


def _run_ensemble(data, out: Path, *extra: str) -> int:
    config = data["root"] / "ensemble.yaml"
    config.write_text(ENSEMBLE_CONFIG)
    argv = [
        "model-metamers",
        "--config",
        str(config),
        "--images",
        str(data["images"]),
        "--null-images",
        str(data["null"]),
    ]
    return main([*argv, "--out", str(out), *QUICK, *extra])


def test_an_ensemble_run_from_the_config_writes_one_metamer_per_image_with_its_tests(data, tmp_path):
    from metamergen.metamers import Ensemble, LayerActivations, ModelMetamer, recipe_from_dict, tiny_cnn
    from metamergen.metamers.run import load_images

    out = tmp_path / "ens"
    assert _run_ensemble(data, out) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["image_id"], r["layer"], r["model"], r["steps"]) for r in rows] == [
        ("im0/ensemble", TARGET, "ensemble/switch", 60),
        ("im1/ensemble", TARGET, "ensemble/switch", 60),
    ]
    null_rows = list(csv.DictReader((out / "null_test.csv").open()))
    assert [(r["image_id"], r["member"]) for r in null_rows] == [
        ("im0", "tiny_cnn_0:3"),
        ("im1", "tiny_cnn_0:3"),
        ("im0", "tiny_cnn_1:5"),
        ("im1", "tiny_cnn_1:5"),
    ]
    for r in rows:  # passes only where every member's layer passes
        member_passes = [n["passed"] == "True" for n in null_rows if n["image_id"] == r["source_id"]]
        assert r["null_test_passed"] == int(all(member_passes))
    summary = json.loads((out / "summary.json").read_text())["layers"][TARGET]
    assert set(summary["recognition_by_model"]) == {"tiny_cnn_0", "tiny_cnn_1"}
    assert summary["recognition"]["accuracy"] == sum(r["recognized"] for r in rows) / 2
    assert [r["model"] for r in csv.DictReader((out / "recognition.csv").open())] == ["tiny_cnn_0", "tiny_cnn_1"]
    recorded = json.loads((out / "run.json").read_text())["ensemble"]
    assert (recorded["schedule"], recorded["switch_every"], [m["weight"] for m in recorded["members"]]) == (
        "switch",
        7,
        [1.0, 2.0],
    )
    assert '<td class="k">ensemble/switch</td>' in (out / "report" / "index.html").read_text()

    # the same metamer as the library makes from these settings (the config reached the Ensemble)
    run = json.loads((out / "run.json").read_text())
    members = [LayerActivations(tiny_cnn(0), "3"), LayerActivations(tiny_cnn(1), "5")]
    ensemble = Ensemble(members, schedule="switch", switch_every=7, weights=[1.0, 2.0])
    _, images = load_images([data["images"] / "im1.png"], 16)
    synth = ModelMetamer(images, ensemble, recipe=recipe_from_dict(run["recipe"]), seed=0)
    synth.synthesize()
    made = np.asarray(Image.open(out / "metamers" / "im1" / "ensemble.png"), dtype=np.float64) / 255
    assert np.abs(made - synth.metamer[0].detach().permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6


def test_an_interrupted_ensemble_run_resumes_to_the_same_metamers(data, tmp_path, monkeypatch):
    whole, _, steps = _interrupt_then_resume(lambda out: _run_ensemble(data, out), tmp_path, monkeypatch)
    assert sum(steps) == 0 + (60 - 25)  # the first metamer is done, the second resumes at step 25
    assert len(list((whole / "metamers").rglob("*.png"))) == 2


def test_an_ensemble_folder_made_with_other_settings_is_refused(data, tmp_path, capsys):
    out = tmp_path / "ens"
    assert _run_ensemble(data, out) == 0
    before = (out / "metamers" / "im0" / "ensemble.png").read_bytes()
    capsys.readouterr()
    assert _run_ensemble(data, out, "--set", "ensemble.schedule=mean") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("metamergen model-metamers: error:") and "(ensemble, model differ)" in err
    assert (out / "metamers" / "im0" / "ensemble.png").read_bytes() == before
    assert _run_ensemble(data, tmp_path / "mean", "--set", "ensemble.schedule=mean") == 0  # elsewhere it runs,
    assert (tmp_path / "mean" / "metamers" / "im0" / "ensemble.png").read_bytes() != before  # to other metamers


def test_the_ensemble_config_file_keeps_feathers_recipe_and_the_papers_ensemble_settings():
    config = MetamerRunConfig.from_yaml(REPO / "configs" / "metamers_ensemble.yaml")
    ensemble = config.ensemble_config
    assert ensemble.schedule == "switch" and all(m.normalize for m in ensemble.members)
    assert [m.pretrained for m in ensemble.members] == ["torchvision:resnet50", "torchvision:vit_b_16"]
    assert dataclasses.replace(config, ensemble=None) == MetamerRunConfig()  # the rest is Feather's
