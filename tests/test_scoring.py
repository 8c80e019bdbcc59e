"""Scoring (``metamergen score``): a study's generations against their scenes, joined with the
manifest. Offline: tiny pipeline, tiny CLIP built from a config, DreamSim through a stand-in."""

from __future__ import annotations

import csv
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel

import metamergen.evaluation.scoring as scoring
from metamergen.commands.score import main as score_main
from metamergen.evaluation.metrics import WEIGHT_FREE_METRICS
from metamergen.evaluation.scoring import score_manifest, write_score_table
from metamergen.fixations.io import DatasetInfo, write_scanpaths
from metamergen.fixations.records import Scanpath
from metamergen.study.manifest import MANIFEST_COLUMNS, MANIFEST_NAME, read_manifest
from metamergen.study.plan import StudySettings, plan_study
from metamergen.study.run import run_study
from metamergen.study.scenes import load_scanpath_scenes


def structured_scene(width: int, height: int, seed: int) -> Image.Image:
    """Ramps, a plaid and a rectangle: structure that scrambling destroys."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.stack([x / width, y / height, 0.5 + 0.25 * np.sin(2 * np.pi * x / 16) * np.cos(2 * np.pi * y / 12)], -1)
    img[4:16, 6:22] = rng.uniform(0, 1, 3)
    return Image.fromarray(np.round(img * 255).astype(np.uint8))


def scrambled(image: Image.Image, seed: int = 2) -> Image.Image:
    arr = np.asarray(image).ravel().copy()
    np.random.default_rng(seed).shuffle(arr)
    return Image.fromarray(arr.reshape(np.asarray(image).shape))


def tiny_clip() -> CLIPModel:
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=99,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
        ),
        projection_dim=8,
    )
    return CLIPModel(config).eval()


class StandInDreamSim:
    """dreamsim's model interface: model(a, b) -> (B,) distances (here mean absolute difference)."""

    def __init__(self):
        self.batches: list[int] = []

    def __call__(self, a, b):
        assert a.shape == b.shape and a.shape[1:] == (3, 224, 224)
        self.batches.append(a.shape[0])
        return (a - b).abs().mean(dim=(1, 2, 3))


def stand_in_preprocess(pil: Image.Image) -> torch.Tensor:
    arr = np.asarray(pil.convert("RGB").resize((224, 224), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def study(pipe, tmp_path_factory):
    """A small generated study (2 scenes, 4 generations) plus, on scene A, an identical copy and a
    scrambled copy of the scene added to the manifest as generations."""
    root = tmp_path_factory.mktemp("scored")
    (root / "images").mkdir()
    structured_scene(48, 32, 0).save(root / "images" / "A.png")
    structured_scene(40, 40, 1).save(root / "images" / "B.png")
    write_scanpaths(
        root / "scanpaths.jsonl",
        [
            Scanpath.from_points([[5, 5], [20, 10]], width=48, height=32, image="A.png", id="a"),
            Scanpath.from_points([[30, 20]], width=40, height=40, image="B.png", id="b"),
        ],
        DatasetInfo(image_root="images"),
    )
    out = root / "out"
    jobs = plan_study(
        load_scanpath_scenes(root / "scanpaths.jsonl"),
        StudySettings(prefixes=(1,), hypotheses=2, steps=1, height=16, width=16),
        model="tiny-random",
        pipe=pipe,
    )
    run_study(pipe, jobs, out, progress=False)
    rows = read_manifest(out / MANIFEST_NAME)
    template = next(r for r in rows if r["scene_id"] == "A.png")
    original = Image.open(root / "images" / "A.png").convert("RGB")
    extra = []
    for name, image in (("identical", original.copy()), ("scrambled", scrambled(original))):
        image.save(out / "images" / f"{name}.png")
        extra.append(dict(template, image_id=name, path=f"images/{name}.png"))
    with open(out / MANIFEST_NAME, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in extra)
    return dict(root=root, out=out, manifest=out / MANIFEST_NAME)


ALL_METRICS = [*WEIGHT_FREE_METRICS, "clip", "dreamsim", "dino"]


@pytest.fixture(scope="module")
def scored(study, pipe):
    stand_in = StandInDreamSim()
    rows = score_manifest(
        study["manifest"],
        ALL_METRICS,
        batch_size=4,
        clip_model=tiny_clip(),
        pipe=pipe,
        options={"dreamsim": {"model": stand_in, "preprocess": stand_in_preprocess}},
    )
    return dict(rows={r["image_id"]: r for r in rows}, ordered=rows, dreamsim=stand_in)


def test_identical_generation_scores_perfectly(scored):
    row = scored["rows"]["identical"]
    assert row["psnr"] == math.inf
    for name, value in {
        "mse": 0.0,
        "ssim": 1.0,
        "color_hist": 0.0,
        "gabor": 0.0,
        "sobel": 0.0,
        "dreamsim": 0.0,
    }.items():
        assert row[name] == pytest.approx(value, abs=1e-9), name
    assert row["clip"] == pytest.approx(1.0, abs=1e-5) and row["dino"] == pytest.approx(1.0, abs=1e-5)


def test_scrambled_generation_scores_worse(scored):
    ident, scram = scored["rows"]["identical"], scored["rows"]["scrambled"]
    higher_is_similar = {"psnr", "ssim", "clip", "dino"}
    for name in ALL_METRICS:
        if name in higher_is_similar:
            assert scram[name] < ident[name] - 1e-3, name
        else:
            assert scram[name] > ident[name] + 1e-3, name


def test_table_is_joined_with_the_manifest(study, scored):
    manifest = {r["image_id"]: r for r in read_manifest(study["manifest"])}
    ordered = scored["ordered"]
    assert [r["image_id"] for r in ordered] == list(manifest)  # manifest order, one row per image
    for row in ordered:
        assert {k: row[k] for k in manifest[row["image_id"]]} == manifest[row["image_id"]]
        assert list(row) == [*MANIFEST_COLUMNS, *ALL_METRICS, "score_resolution"]
        # the study's scenes are under 512 px: the weight-free metrics compare at the scene's own size
        scene_size = "48x32" if row["scene_id"] == "A.png" else "40x40"
        assert (
            row["score_resolution"]
            == f"psnr/mse/ssim/color_hist/gabor/sobel {scene_size}; clip 32x32; dreamsim 224x224; dino 112x112"
        )
        assert all(np.isfinite(row[m]) for m in ALL_METRICS if not (m == "psnr" and row["image_id"] == "identical"))
    assert sum(scored["dreamsim"].batches) == len(ordered) and max(scored["dreamsim"].batches) <= 4


def test_csv_and_parquet_tables(study, scored, tmp_path):
    rows = scored["ordered"]
    write_score_table(rows, tmp_path / "s.csv")
    with open(tmp_path / "s.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == [*MANIFEST_COLUMNS, *ALL_METRICS, "score_resolution"] and len(table) == len(rows)
    for written, row in zip(table, rows):
        assert json.loads(written["fixations"]) == row["fixations"]
        assert written["model_revision"] == "" and float(written["psnr"]) == row["psnr"]
    import pyarrow.parquet as pq

    write_score_table(rows, tmp_path / "s.parquet")
    back = pq.read_table(tmp_path / "s.parquet").to_pylist()
    assert back[0]["fixations"] == json.dumps(rows[0]["fixations"]) and back[0]["ssim"] == rows[0]["ssim"]
    assert [r["image_id"] for r in back] == [r["image_id"] for r in rows]
    assert not list(tmp_path.glob(".*tmp"))


def test_each_scene_is_read_once_and_duplicates_keep_the_last_row(study, tmp_path, monkeypatch):
    out = tmp_path / "out"
    import shutil

    shutil.copytree(study["out"], out)
    rows = read_manifest(out / MANIFEST_NAME)
    with open(out / MANIFEST_NAME, "a") as f:  # the same image listed again, with a changed field
        f.write(json.dumps(dict(rows[0], subject="relabelled")) + "\n")
    loads = []
    real = scoring._load_rgb
    monkeypatch.setattr(scoring, "_load_rgb", lambda p: loads.append(Path(p)) or real(p))
    scored = score_manifest(out / MANIFEST_NAME, ["psnr", "sobel"], batch_size=3)
    assert len(scored) == len(rows) and scored[-1]["image_id"] == rows[0]["image_id"]
    assert scored[-1]["subject"] == "relabelled"
    scenes = [p for p in loads if p.parent.name != "images" or p.parent.parent != out]
    assert sorted(p.name for p in scenes) == ["A.png", "B.png"]  # each original once, across batches


# --------------------------------------------------------------------------- command line


def _fake_dreamsim(monkeypatch, model: StandInDreamSim) -> None:
    module = types.ModuleType("dreamsim")
    module.dreamsim = lambda pretrained, device, cache_dir, dreamsim_type: (model, stand_in_preprocess)
    monkeypatch.setitem(sys.modules, "dreamsim", module)


def test_cli_scores_end_to_end(study, tmp_path, monkeypatch, capsys):
    clip_dir = tmp_path / "clip"
    tiny_clip().save_pretrained(clip_dir)
    _fake_dreamsim(monkeypatch, StandInDreamSim())
    hub_dir = torch.hub.get_dir()
    out = tmp_path / "scores.csv"
    assert (
        score_main(
            [
                "--manifest",
                str(study["manifest"]),
                "--out",
                str(out),
                "--clip-model",
                str(clip_dir),
                "--dreamsim-cache",
                str(tmp_path / "ds"),
                "--device",
                "cpu",
                "--batch-size",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    assert torch.hub.get_dir() == hub_dir
    with open(out, newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == [*MANIFEST_COLUMNS, *WEIGHT_FREE_METRICS, "clip", "dreamsim", "score_resolution"]
    assert len(table) == len(read_manifest(study["manifest"]))
    ident = next(r for r in table if r["image_id"] == "identical")
    assert ident["psnr"] == "inf" and float(ident["clip"]) == pytest.approx(1.0, abs=1e-5)
    assert "Scored 6 image(s)" in capsys.readouterr().out

    parquet = tmp_path / "t.parquet"
    score_main(
        [
            "--manifest",
            str(study["manifest"]),
            "--out",
            str(parquet),
            "--metrics",
            "ssim,dino",
            "--tiny",
            "--format",
            "parquet",
            "--no-progress",
        ]
    )
    import pyarrow.parquet as pq

    assert pq.read_table(parquet).column_names == [*MANIFEST_COLUMNS, "ssim", "dino", "score_resolution"]


def test_cli_errors_write_nothing(study, tmp_path, monkeypatch):
    out = tmp_path / "scores.csv"
    base = ["--manifest", str(study["manifest"]), "--out", str(out), "--no-progress"]
    with pytest.raises(SystemExit, match="lpips") as info:
        score_main([*base, "--metrics", "psnr,lpips"])
    assert "dreamsim" in str(info.value)  # lists the valid names
    with pytest.raises(SystemExit, match="--model"):
        score_main([*base, "--metrics", "dino"])
    monkeypatch.setitem(sys.modules, "dreamsim", None)  # package not installed
    with pytest.raises(SystemExit, match=r"Could not load metric 'dreamsim'.*pip install dreamsim"):
        score_main([*base, "--metrics", "psnr,dreamsim"])
    with pytest.raises(SystemExit, match="Could not load metric 'clip'.*openai/clip-vit-large-patch14"):
        score_main([*base, "--metrics", "clip", "--clip-model", str(tmp_path / "no-clip"), "--device", "cpu"])
    with pytest.raises(SystemExit, match="no manifest"):
        score_main(["--manifest", str(tmp_path / "none.jsonl"), "--out", str(out)])
    assert not out.exists() and not list(tmp_path.iterdir())


def test_missing_generation_is_reported(study, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(study["out"], out)
    (out / "images" / "scrambled.png").unlink()
    with pytest.raises(FileNotFoundError, match="scrambled.png.*re-run"):
        score_manifest(out / MANIFEST_NAME, ["psnr"])
    with pytest.raises(ValueError, match="Unknown metric"):
        score_manifest(study["manifest"], ["psnr", "lpips"])
