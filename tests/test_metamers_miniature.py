"""The model-metamers miniature: toy object crops, the three model factories, PGD, training and the study script.

Offline and seeded; the script's ``--quick`` run uses the shipped models when present.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("plenoptic")
pytest.importorskip("safetensors")

from metamergen.demo.metamer_models import (  # noqa: E402
    CNN_LAYERS,
    CROP_SIZE,
    MINIATURE_MODELS,
    MODELS_DIR,
    VIT_LAYERS,
    TinyViT,
    crop_dataset,
    load_miniature_models,
    pgd_attack,
    small_cnn,
    split_seeds,
    tiny_vit,
    train_miniature_models,
)
from metamergen.demo.toyworld import SHAPES, ToyWorldConfig, generate_scene, object_attributes  # noqa: E402
from metamergen.metamers import LayerActivations, module_paths  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- data


def test_crops_are_deterministic_and_the_splits_share_no_scene():
    a, b = crop_dataset("test", 6, seed=3), crop_dataset("test", 6, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.shape == (len(a), 3, CROP_SIZE, CROP_SIZE) and a.images.dtype == torch.float32
    assert 0.0 <= a.images.min() and a.images.max() <= 1.0
    assert not torch.equal(crop_dataset("test", 6, seed=4).images[:3], a.images[:3])
    seeds = {s: set(split_seeds(s, 200)) for s in ("train", "test", "study")}
    assert not (seeds["train"] & seeds["test"]) and not (seeds["train"] & seeds["study"])
    assert not (seeds["test"] & seeds["study"])


def test_each_crop_is_centred_on_its_object_and_labelled_with_its_shape():
    crops = crop_dataset("train", 12)
    assert len(crops) >= 24
    for i in range(len(crops)):
        scene = generate_scene(int(crops.scene_seeds[i]), ToyWorldConfig(size=64))
        obj = scene.objects[int(crops.object_index[i])]
        assert SHAPES[int(crops.labels[i])] == obj.shape
        assert crops.colours[i] == obj.colour
        x0, y0, x1, y1 = crops.boxes[i].tolist()
        # the box is whole inside the crop and centred (to the pixel)
        assert 0 <= x0 < x1 <= CROP_SIZE and 0 <= y0 < y1 <= CROP_SIZE
        assert abs((x0 + x1) / 2 - CROP_SIZE / 2) <= 1 and abs((y0 + y1) / 2 - CROP_SIZE / 2) <= 1
        # the crop's pixels inside the box are the scene's, and show the object's colour
        crop = (crops.images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        scene_px = np.asarray(scene.image)[obj.box[1] : obj.box[3], obj.box[0] : obj.box[2]]
        assert np.array_equal(crop[y0:y1, x0:x1], scene_px)
        attrs = object_attributes(crop, (x0, y0, x1, y1))
        assert attrs.colour == obj.colour


def test_a_crop_at_the_scene_border_is_padded_by_replicating_the_border():
    crops = crop_dataset("train", 40)
    found = 0
    for i in range(len(crops)):
        scene = generate_scene(int(crops.scene_seeds[i]), ToyWorldConfig(size=64))
        obj = scene.objects[int(crops.object_index[i])]
        offset = int(crops.boxes[i, 0]) - obj.box[0]  # crop column of the scene's column 0
        if offset <= 0:
            continue
        found += 1
        img = crops.images[i]
        assert torch.equal(img[:, :, :offset], img[:, :, offset : offset + 1].expand(-1, -1, offset))
    assert found, "no object near the left border in these scenes"


# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize(
    "factory", [lambda: small_cnn(0), lambda: small_cnn(4, widths=(24, 48, 48), hidden=96)], ids=["cnn", "heldout"]
)
def test_the_cnn_has_named_distinct_relus_with_the_documented_shapes(factory):
    model = factory().eval()
    relus = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    assert tuple(relus) == CNN_LAYERS
    assert len({id(model.get_submodule(n)) for n in relus}) == len(relus)  # each ReLU its own module
    w1, w2, w3 = model.conv1.out_channels, model.conv2.out_channels, model.conv3.out_channels
    x = torch.rand(2, 3, CROP_SIZE, CROP_SIZE)
    assert model(x).shape == (2, len(SHAPES))
    for p in model.parameters():
        p.requires_grad_(False)
    expected = {"relu1": w1 * 32 * 32, "relu2": w2 * 16 * 16, "relu3": w3 * 8 * 8, "relu4": model.fc1.out_features}
    for layer, size in expected.items():
        acts = LayerActivations(model, layer, fake_relu=True)(x)
        assert acts.shape == (2, size) and (acts >= 0).all()


def test_the_vit_has_named_blocks_with_the_documented_shapes_and_seeded_weights():
    model = tiny_vit(3).eval()
    assert isinstance(model, TinyViT)
    assert all(layer in module_paths(model) for layer in VIT_LAYERS)
    x = torch.rand(2, 3, CROP_SIZE, CROP_SIZE)
    assert model(x).shape == (2, len(SHAPES))
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in VIT_LAYERS:
        assert LayerActivations(model, layer)(x).shape == (2, (1 + 64) * 64)
    assert torch.equal(tiny_vit(3).pos_embed, model.pos_embed)
    assert not torch.equal(tiny_vit(4).pos_embed, model.pos_embed)
    state = torch.random.get_rng_state()
    small_cnn(5), tiny_vit(5)
    assert torch.equal(torch.random.get_rng_state(), state), "factories must not touch the global random state"


# ----------------------------------------------------------------------------- PGD


def _linear_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))


def test_one_pgd_step_is_the_normalised_gradient_step_of_its_definition():
    model = _linear_model()
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.25
    y = torch.tensor([0, 1, 2, 3])
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
    # L2: x + a g / ||g||; with a < eps the projection does nothing; pixels stay inside (0, 1) here
    out = pgd_attack(model, x, y, eps=0.5, steps=1, step_size=0.1, norm="l2", random_start=False)
    expected = x + 0.1 * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert torch.allclose(out, expected.clamp(0, 1), atol=1e-6)
    assert torch.allclose((out - x).flatten(1).norm(dim=1), torch.full((4,), 0.1), atol=1e-5)
    # L-inf: x + a sign(g), clamped to the eps box
    out = pgd_attack(model, x, y, eps=0.03, steps=1, step_size=0.05, norm="linf", random_start=False)
    assert torch.allclose(out, (x + 0.03 * g.sign()).clamp(0, 1), atol=1e-6)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_stays_in_the_ball_and_the_unit_range_and_raises_the_loss(norm):
    model = _linear_model(2)
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    y = torch.arange(6) % 5
    eps = 0.7 if norm == "l2" else 0.05
    out = pgd_attack(
        model, x, y, eps=eps, steps=7, step_size=eps / 2, norm=norm, generator=torch.Generator().manual_seed(0)
    )
    delta = (out - x).flatten(1)
    size = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(dim=1)
    assert (size <= eps + 1e-5).all()
    assert size.max() > 0.9 * eps  # it goes to the edge of the ball (a linear model's loss has no interior maximum)
    assert 0.0 <= out.min() and out.max() <= 1.0
    with torch.no_grad():
        assert F.cross_entropy(model(out), y) > F.cross_entropy(model(x), y)
    assert all(p.grad is None for p in model.parameters())
    again = pgd_attack(
        model, x, y, eps=eps, steps=7, step_size=eps / 2, norm=norm, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(out, again)
    with pytest.raises(ValueError, match="norm must be"):
        pgd_attack(model, x, y, eps=eps, steps=1, step_size=0.1, norm="l1")


def test_the_l2_random_start_lies_inside_the_ball():
    model = _linear_model()
    x = torch.full((50, 3, 8, 8), 0.5)
    y = torch.zeros(50, dtype=torch.long)
    start = pgd_attack(model, x, y, eps=0.3, steps=0, step_size=0.1, generator=torch.Generator().manual_seed(0))
    norms = (start - x).flatten(1).norm(dim=1)
    assert (norms <= 0.3 + 1e-6).all() and norms.std() > 0.02  # radii spread over [0, eps]


# ----------------------------------------------------------------------------- training and loading


def test_quick_training_writes_small_loadable_models_with_their_record(tmp_path):
    record = train_miniature_models(tmp_path, quick=True, models=["cnn"], log=None)
    entry = record["models"]["cnn"]
    assert entry["steps"] == 20 and 0.0 <= entry["test_accuracy"] <= 1.0
    assert json.loads((tmp_path / "models.json").read_text()) == record
    model = load_miniature_models(tmp_path, ["cnn"])["cnn"]
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    again = train_miniature_models(tmp_path / "again", quick=True, models=["cnn"], log=None)
    assert again["models"]["cnn"]["sha256"] == entry["sha256"], "training is seeded"
    (tmp_path / "cnn.safetensors").write_bytes((tmp_path / "cnn.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ValueError, match="sha256"):
        load_miniature_models(tmp_path, ["cnn"])
    with pytest.raises(FileNotFoundError, match="no model 'vit'"):
        load_miniature_models(tmp_path, ["vit"])


@pytest.mark.skipif(not (MODELS_DIR / "models.json").exists(), reason="the miniature models are not shipped here")
def test_the_shipped_models_load_are_small_and_classify_held_out_crops():
    models = load_miniature_models()
    assert set(models) == set(MINIATURE_MODELS)
    total = sum(f.stat().st_size for f in MODELS_DIR.iterdir())
    assert total < 2_000_000
    crops = crop_dataset("test", 30)
    for name, model in models.items():
        with torch.no_grad():
            acc = (model(crops.images).argmax(1) == crops.labels).float().mean()
        assert acc > 0.6, f"{name}: held-out accuracy {acc:.2f}"


# ----------------------------------------------------------------------------- the study script


@pytest.mark.slow
def test_the_quick_study_runs_end_to_end_and_writes_its_files(tmp_path):
    sys.path.insert(0, str(REPO / "inference"))
    try:
        import model_metamers_miniature as study
    finally:
        sys.path.remove(str(REPO / "inference"))
    models = MODELS_DIR if (MODELS_DIR / "models.json").exists() else tmp_path / "none"
    assert study.main(["--quick", "--out", str(tmp_path / "out"), "--models", str(models)]) == 0
    out = tmp_path / "out"
    for name in ("results.json", "results.md", "recognition_by_layer.png", "metamers.png"):
        assert (out / name).stat().st_size > 0, name
    result = json.loads((out / "results.json").read_text())
    questions = {r["question"][:3] for r in result["rows"]}
    assert questions == {"(a)", "(b)", "(c)", "(d)"}
    n_conditions = sum(len(v) for v in study.GENERATORS.values()) + 2 * len(study.ENSEMBLES)
    assert len(result["recognition"]) == n_conditions * len(MINIATURE_MODELS)
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in result["recognition"])
    table = (out / "results.md").read_text()
    assert "| question | measure | A | B |" in table and "(d) metamers passing the null test" in table
