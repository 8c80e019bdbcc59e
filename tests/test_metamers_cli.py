"""``metamergen model-metamers``: the output folder, resuming after an interruption, the config, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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
    null_rows = (out / "null_test.csv").read_text().splitlines()
    assert null_rows[0].startswith("image_id,layer,spearman,pearson,snr_db,null_max_spearman")
    assert len(null_rows) == 5 and all(line.split(",")[-1] == "20" for line in null_rows[1:])  # 5 x 4 ordered pairs
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["layers"]) == {"3", "5"} and summary["n_images"] == 2
    assert 0 <= summary["layers"]["3"]["recognition"]["accuracy"] <= 1
    printed = capsys.readouterr().out
    assert "3: mean loss" in printed and printed.strip().splitlines()[-1] == str(out / "report" / "index.html")
    page = (out / "report" / "index.html").read_text()
    assert page.count("<tr><td>") == 2 and "recognition_by_layer.png" in page and "metamers.png" in page
    sheet = Image.open(out / "report" / "metamers.png")
    assert sheet.height > 2 * 128 and sheet.width > 3 * 128  # 2 images x (natural + 2 layers)
    assert Image.open(out / "report" / "recognition_by_layer.png").size[0] > 300


def test_an_interrupted_run_resumes_to_the_same_metamers(data, tmp_path, monkeypatch):
    from metamergen.metamers.synthesis import ModelMetamer

    whole = tmp_path / "whole"
    assert _run(data, whole) == 0

    part = tmp_path / "part"
    real_save, saves = ModelMetamer.save, []

    def save_then_stop(self, path):
        saves.append(path)
        if len(saves) == 5:  # the second checkpoint of the second metamer: its first one (step 25) stays
            raise KeyboardInterrupt
        real_save(self, path)

    monkeypatch.setattr(ModelMetamer, "save", save_then_stop)
    assert _run(data, part) == 130
    assert not (part / "manifest.jsonl").exists()
    monkeypatch.setattr(ModelMetamer, "save", real_save)
    real_synthesize, steps = ModelMetamer.synthesize, []

    def counting(self, max_iter=None, *args, **kwargs):
        steps.append(max_iter)
        real_synthesize(self, max_iter, *args, **kwargs)

    monkeypatch.setattr(ModelMetamer, "synthesize", counting)
    assert _run(data, part) == 0
    assert sum(steps) == 0 + (60 - 25) + 60 + 60  # the first metamer is done, the second resumes at step 25
    assert (part / "manifest.jsonl").read_text() == (whole / "manifest.jsonl").read_text()
    for png in sorted((whole / "metamers").rglob("*.png")):
        assert (part / png.relative_to(whole)).read_bytes() == png.read_bytes(), png


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
    import csv

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
