"""Model metamers: the Feather step and schedule, layers and fake ReLU, ensembles' schedules, resuming,
the null test and recognition. Tiny randomly initialised CNNs on 16 px images, offline, seeded."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("plenoptic")

from metamergen.metamers import (  # noqa: E402 - after the skip: these need plenoptic
    AdamRecipe,
    Classifier,
    Ensemble,
    FeatherRecipe,
    FeatherStep,
    LayerActivations,
    ModelMetamer,
    Normalize,
    initial_image,
    layer_activations,
    layer_metamers,
    module_paths,
    normalized_distance,
    null_distribution,
    null_test,
    predict,
    recipe_from_dict,
    recognition_accuracy,
    recognition_table,
    similarity,
)
from metamergen.metamers.toy import tiny_cnn  # noqa: E402


def natural(n: int, seed: int, size: int = 16) -> torch.Tensor:
    """Smooth random colour images (``(n, 3, size, size)`` in [0, 1]): bilinear blow-ups of 4 x 4 noise."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=size, mode="bilinear", align_corners=False).clamp(
        0, 1
    )


SHORT = FeatherRecipe(block_iterations=100, n_blocks=3, step_size=0.5)


# ----------------------------------------------------------------------------- the Feather step


def test_the_feather_step_moves_each_image_by_its_step_length_along_the_normalised_gradient():
    x = torch.full((3, 3, 8, 8), 0.5, requires_grad=True)
    g = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * torch.tensor([1e-4, 1.0, 50.0]).view(
        3, 1, 1, 1
    )
    x.grad = g.clone()
    FeatherStep([x], lr=0.3).step()
    delta = (x.detach() - 0.5).flatten(1)
    assert torch.allclose(delta.norm(dim=1), torch.full((3,), 0.3), atol=1e-6)  # the same length whatever |g|
    expected = 0.5 - 0.3 * g / g.flatten(1).norm(dim=1).view(3, 1, 1, 1)
    assert torch.allclose(x.detach(), expected, atol=1e-7)


def test_the_feather_step_clamps_to_the_unit_range():
    x = torch.tensor([[0.02, 0.5, 0.98, 0.6]], requires_grad=True)
    x.grad = torch.tensor([[1.0, 0.0, -1.0, 0.0]])
    FeatherStep([x], lr=1.0).step()
    assert torch.equal(x.detach(), torch.tensor([[0.0, 0.5, 1.0, 0.6]]))
    with pytest.raises(ValueError, match="lr must be > 0"):
        FeatherStep([x], lr=0)


def test_steps_have_the_recipes_length_and_it_halves_after_each_block():
    model = tiny_cnn()
    synth = ModelMetamer(
        natural(1, 2), LayerActivations(model, "3"), recipe=FeatherRecipe(block_iterations=4, n_blocks=3, step_size=0.1)
    )
    synth.synthesize()
    assert len(synth.pixel_change_norm) == 12
    # interior steps (no pixel clamped this early): the image moves by exactly eta, halved per block
    expected = torch.tensor([0.1] * 4 + [0.05] * 4 + [0.025] * 4)
    assert torch.allclose(synth.pixel_change_norm, expected, rtol=1e-4)
    big = ModelMetamer(
        natural(1, 2),
        LayerActivations(model, "3"),
        recipe=FeatherRecipe(block_iterations=20, n_blocks=1, step_size=8.0),
    )
    big.synthesize()
    assert 0.0 <= big.metamer.min() and big.metamer.max() <= 1.0
    assert (big.pixel_change_norm < 8.0 - 1e-3).any(), "a step of 8 on a 16 px image must hit the clamp"


def test_every_layer_starts_from_the_same_feather_noise():
    model = tiny_cnn()
    image = natural(1, 3)
    out = layer_metamers(model, image, ["1", "3", "5"], seed=7, max_iter=0)
    start = initial_image(image.shape, 7)
    for synth in out.values():
        assert torch.equal(synth.metamer.detach(), start)
    assert 0.0 <= start.min() and start.max() <= 1.0
    assert abs(start.mean().item() - 0.5) < 0.01 and abs(start.std().item() - 0.05) < 0.01
    assert not torch.equal(initial_image(image.shape, 8), start)


# ----------------------------------------------------------------------------- layers


def test_layers_are_read_by_module_path_and_a_wrong_name_lists_the_valid_ones():
    model = tiny_cnn()
    x = natural(2, 4)
    acts = LayerActivations(model, "3")(x)
    assert acts.shape == (2, 16 * 8 * 8)
    assert torch.equal(acts, model[:4](x).flatten(1))
    assert module_paths(model) == [str(i) for i in range(9)]
    with pytest.raises(ValueError, match=r"'conv9' is not a module path of Sequential \(0, 1, 2, 3, 4, 5, 6, 7, 8\)"):
        LayerActivations(model, "conv9")


def test_the_input_transform_runs_before_the_model():
    model = tiny_cnn()
    x = natural(2, 5)
    norm = Normalize((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    acts = LayerActivations(model, "1", transform=norm)(x)
    manual = (x - torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    assert torch.allclose(acts, model[:2](manual).flatten(1), atol=1e-6)


@pytest.mark.parametrize("inplace", [False, True])
def test_fake_relu_is_relu_forward_and_identity_backward(inplace):
    model = tiny_cnn(inplace=inplace)
    x = natural(1, 6).requires_grad_()
    real, fake = LayerActivations(model, "3"), LayerActivations(model, "3", fake_relu=True)
    assert torch.equal(real(x), fake(x))
    pre = model[:3](x.detach()).flatten(1)
    assert (pre < 0).any()
    g_real = torch.autograd.grad(real(x).sum(), x)[0]
    g_fake = torch.autograd.grad(fake(x).sum(), x)[0]
    g_identity = torch.autograd.grad(model[:3](x).sum(), x)[0]  # d(sum pre-activation)/dx
    assert torch.allclose(g_fake, g_identity, atol=1e-5)
    assert not torch.allclose(g_real, g_fake, atol=1e-3)
    with pytest.raises(ValueError, match="fake_relu needs the layer to be an nn.ReLU, but '2' is a Conv2d"):
        LayerActivations(model, "2", fake_relu=True)


def test_models_that_could_not_give_a_fixed_target_are_refused():
    model = tiny_cnn()
    model[0].weight.requires_grad_(True)
    with pytest.raises(ValueError, match=r"1 parameter\(s\) that require gradients \(0.weight\).*remove_grad"):
        LayerActivations(model, "1")
    model = tiny_cnn().train()
    with pytest.raises(ValueError, match=r"training mode.*\.eval\(\)"):
        LayerActivations(model, "1")

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu = nn.Conv2d(3, 3, 1), nn.ReLU()

        def forward(self, x):
            return self.relu(self.conv(self.relu(x)))

    shared = Shared().eval().requires_grad_(False)
    with pytest.raises(ValueError, match="'relu' is called 2 times in one forward pass"):
        LayerActivations(shared, "relu")(natural(1, 0))


def test_without_torchvision_node_names_are_reported_as_unavailable():
    try:
        import torchvision.models.feature_extraction  # noqa: F401
    except Exception:  # noqa: BLE001 - absent or broken against this torch: the option is off
        with pytest.raises(ValueError, match="torchvision is not installed here"):
            LayerActivations(tiny_cnn(), "relu_1")
        return
    pytest.skip("torchvision is importable here: see the node-name test")


def test_torchvision_node_names_read_functional_operations():
    pytest.importorskip("torchvision.models.feature_extraction")

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return torch.relu(self.conv(x)).mean((2, 3))

    model = Functional().eval().requires_grad_(False)
    x = natural(2, 1)
    assert torch.allclose(LayerActivations(model, "relu")(x), torch.relu(model.conv(x)).flatten(1))


def test_a_nan_loss_stops_synthesis_with_a_clear_error():
    class Sqrt(nn.Module):
        def forward(self, x):
            return torch.sqrt(x - 0.45)  # finite for the target (>= 0.5 everywhere), NaN for darker noise

    model = nn.Sequential(Sqrt(), nn.Identity()).eval()
    synth = ModelMetamer(torch.full((1, 3, 8, 8), 0.7), LayerActivations(model, "1"), recipe=SHORT)
    with pytest.raises(ValueError, match="the loss became nan at step 0: the model's activations are not finite"):
        synth.synthesize(5)


# ----------------------------------------------------------------------------- synthesis and the null test


@pytest.fixture(scope="module")
def made():
    """A 300-step Feather metamer of layer '3' of a tiny CNN, and a null distribution over 12 natural images."""
    model = tiny_cnn()
    member = LayerActivations(model, "3")
    image = natural(1, 2)
    synth = ModelMetamer(image, member, recipe=SHORT, seed=0)
    synth.synthesize()
    pool = natural(12, 1)
    null = null_distribution(layer_activations(member, pool))
    return {"model": model, "member": member, "image": image, "synth": synth, "pool": pool, "null": null}


def test_the_loss_falls_and_the_metamer_matches_the_target_layer(made):
    synth, member, image = made["synth"], made["member"], made["image"]
    losses = synth.losses
    assert len(losses) == SHORT.max_iter + 1
    assert losses[-1] < 0.1 * losses[0], f"{losses[0]:.3f} -> {losses[-1]:.3f}"
    final = normalized_distance(layer_activations(member, synth.metamer.detach()), layer_activations(member, image))
    assert math.isclose(final.item(), losses[-1].item(), rel_tol=1e-4)
    assert final.item() < 0.05
    assert 0.0 <= synth.metamer.min() and synth.metamer.max() <= 1.0


def test_the_null_test_accepts_the_metamer_and_the_target_and_rejects_the_noise_and_a_null_pair(made):
    member, null, image, pool = made["member"], made["null"], made["image"], made["pool"]
    target = layer_activations(member, image)
    assert len(null) == 12 * 11
    metamer = null_test(layer_activations(member, made["synth"].metamer.detach()), target, null)
    assert metamer.passed.tolist() == [True]
    itself = null_test(target, target, null)
    assert itself.passed.tolist() == [True] and itself.measures["snr_db"][0] == math.inf
    noise = null_test(layer_activations(member, initial_image(image.shape, 0)), target, null)
    assert noise.passed.tolist() == [False]
    # a pair from the null distribution itself can at best equal its maximum: never strictly above
    acts = layer_activations(member, pool)
    pairs = null_test(acts[null.pairs[:, 1]], acts[null.pairs[:, 0]], null)
    assert not pairs.passed.any()
    best = int(np.argmax(null.spearman))
    assert pairs.measures["spearman"][best] == null.maxima["spearman"] and not pairs.beats["spearman"][best]


def test_similarity_follows_feathers_definitions():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = np.maximum(rng.normal(size=(3, 50)), 0)  # ReLU-like: many tied zeros
    b = np.maximum(a + rng.normal(scale=0.5, size=a.shape), 0)
    s = similarity(a, b)
    for k in range(3):
        assert math.isclose(s["spearman"][k], scipy_stats.spearmanr(a[k], b[k])[0], rel_tol=1e-10)
        assert math.isclose(s["pearson"][k], scipy_stats.pearsonr(a[k], b[k])[0], rel_tol=1e-10)
        assert math.isclose(s["snr_db"][k], 10 * math.log10(np.linalg.norm(a[k]) / np.linalg.norm(a[k] - b[k])))
    zero = similarity(np.zeros(5), np.arange(5.0))
    assert [zero[m][0] for m in ("spearman", "pearson", "snr_db")] == [0.0, 0.0, 0.0]


def test_sampled_null_pairs_never_pair_an_image_with_itself_and_are_seeded():
    acts = torch.randn(5, 10)
    a, b = null_distribution(acts, n_pairs=400, seed=3), null_distribution(acts, n_pairs=400, seed=3)
    assert (a.pairs[:, 0] != a.pairs[:, 1]).all()
    assert np.array_equal(a.pairs, b.pairs) and set(a.pairs[:, 1]) == set(range(5))
    with pytest.raises(ValueError, match="at least 2 natural images"):
        null_distribution(acts[:1])


# ----------------------------------------------------------------------------- ensembles


def _ensemble(schedule: str, switch_every: int = 2, seed: int = 0) -> Ensemble:
    members = [
        LayerActivations(tiny_cnn(0), "3", name="a"),
        LayerActivations(tiny_cnn(1), "5", name="b"),
        LayerActivations(tiny_cnn(2), "1", transform=Normalize((0.5,) * 3, (0.25,) * 3), name="c"),
    ]
    return Ensemble(members, schedule=schedule, switch_every=switch_every, seed=seed)


def _computed_members(ensemble: Ensemble, synth: ModelMetamer, steps: int) -> list[tuple[str, ...]]:
    """Which members' models ran during each synthesis step."""
    calls: dict[int, set[str]] = {}
    handles = []
    for member in ensemble.members:

        def hook(_m, _i, name=member.name):
            if ensemble.active is not None:  # inside a synthesis step
                calls.setdefault(len(synth._losses), set()).add(name)

        handles.append(member.model.register_forward_pre_hook(hook))
    try:
        synth.synthesize(steps)
    finally:
        for h in handles:
            h.remove()
    return [tuple(sorted(calls.get(t, ()))) for t in range(steps)]


def test_the_switch_schedule_visits_members_in_turn_and_computes_only_the_active_one():
    ensemble = _ensemble("switch", switch_every=2)
    assert [ensemble.members_at(t) for t in range(8)] == [(0,), (0,), (1,), (1,), (2,), (2,), (0,), (0,)]
    synth = ModelMetamer(natural(1, 2), ensemble, recipe=SHORT)
    assert _computed_members(ensemble, synth, 7) == [("a",), ("a",), ("b",), ("b",), ("c",), ("c",), ("a",)]


def test_the_mean_and_random_schedules():
    mean = _ensemble("mean")
    synth = ModelMetamer(natural(1, 2), mean, recipe=SHORT)
    assert _computed_members(mean, synth, 2) == [("a", "b", "c")] * 2
    random = _ensemble("random", switch_every=3, seed=5)
    picks = [random.members_at(t) for t in range(300)]
    assert all(picks[t] == picks[t - t % 3] for t in range(300))  # one member per block of 3
    assert {p[0] for p in picks} == {0, 1, 2}
    assert picks != [_ensemble("random", switch_every=3, seed=6).members_at(t) for t in range(300)]


def test_the_ensemble_loss_normalises_each_member_and_weighs_them():
    ensemble = _ensemble("mean")
    x, y = natural(2, 3), natural(2, 4)
    target, rep = ensemble(x), ensemble(y)
    per_member = torch.stack([normalized_distance(m(y), m(x)) for m in ensemble.members])
    assert torch.allclose(ensemble.member_losses(rep, target), per_member)
    assert torch.allclose(ensemble.loss(rep, target), per_member.mean())
    weighted = Ensemble(list(ensemble.members), weights=[1, 2, 1])
    weighted(x)  # the members' sizes are learnt on a first full pass
    assert torch.allclose(weighted.loss(rep, target), (per_member.mean(1) * torch.tensor([1.0, 2, 1])).sum() / 4)
    ensemble.active = (1,)
    assert torch.allclose(ensemble.loss(rep, target), per_member[1].mean())


# ----------------------------------------------------------------------------- resuming


@pytest.mark.parametrize(
    "recipe",
    [FeatherRecipe(block_iterations=5, n_blocks=4, step_size=0.5), AdamRecipe(block_iterations=5, n_blocks=4)],
    ids=["feather", "adam"],
)
def test_save_load_and_continue_equals_an_uninterrupted_run(tmp_path, recipe):
    image = natural(2, 2)
    whole = ModelMetamer(image, _ensemble("random", switch_every=3, seed=1), recipe=recipe, seed=4)
    whole.synthesize(store_progress=2)  # the recipe's 20 steps

    first = ModelMetamer(image, _ensemble("random", switch_every=3, seed=1), recipe=recipe, seed=4)
    first.synthesize(8, store_progress=2)  # stops inside the second block (the step size has changed once)
    first.save(tmp_path / "synth.pt")
    resumed = ModelMetamer(image, _ensemble("random", switch_every=3, seed=1), recipe=recipe, seed=4)
    resumed.load(tmp_path / "synth.pt")
    resumed.synthesize(store_progress=2)  # the 12 steps left

    assert torch.equal(resumed.metamer, whole.metamer)
    assert torch.equal(resumed.losses, whole.losses)
    assert torch.equal(resumed.saved_metamer, whole.saved_metamer)
    assert resumed.optimizer.param_groups[0]["lr"] == whole.optimizer.param_groups[0]["lr"]


def test_load_refuses_a_synthesis_of_another_recipe_or_seed(tmp_path):
    image = natural(1, 2)
    synth = ModelMetamer(image, LayerActivations(tiny_cnn(), "3"), recipe=SHORT, seed=0)
    synth.synthesize(3)
    synth.save(tmp_path / "s.pt")
    with pytest.raises(ValueError, match="seed"):
        ModelMetamer(image, LayerActivations(tiny_cnn(), "3"), recipe=SHORT, seed=1).load(tmp_path / "s.pt")
    other = FeatherRecipe(block_iterations=7, n_blocks=3)
    with pytest.raises(ValueError, match="recipe"):
        ModelMetamer(image, LayerActivations(tiny_cnn(), "3"), recipe=other, seed=0).load(tmp_path / "s.pt")


def test_recipes_round_trip_through_their_record():
    for recipe in (FeatherRecipe(), AdamRecipe(lr=0.02), FeatherRecipe(n_blocks=2, step_size=0.25)):
        assert recipe_from_dict(recipe.record()) == recipe
    assert FeatherRecipe().max_iter == 24000 and AdamRecipe().max_iter == 12000
    with pytest.raises(ValueError, match=r"unknown feather recipe setting\(s\) \['lr'\]"):
        recipe_from_dict({"name": "feather", "lr": 1})


# ----------------------------------------------------------------------------- recognition


def test_recognition_by_the_generating_and_other_models_with_bootstrap_intervals(made):
    model, synth, image = made["model"], made["synth"], made["image"]
    label = predict(model, image)
    own = recognition_accuracy(model, synth.metamer.detach(), label, model_name="own", layer="3")
    assert own.n == 1 and own.accuracy in (0.0, 1.0)

    class Constant(nn.Module):
        def __init__(self, label: int):
            super().__init__()
            self.label = label

        def forward(self, x):
            return F.one_hot(torch.full((len(x),), self.label), 4).float()

    images = natural(8, 9)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3, 0])
    rows = recognition_table(
        {"zero": Constant(0), "two": Classifier(Constant(0), decide=lambda s: s.argmax(1) + 2)},
        {"x": images},
        labels,
        n_boot=2000,
    )
    zero, two = rows
    assert (zero.model, zero.layer, zero.accuracy, zero.n) == ("zero", "x", 0.5, 8)
    assert 0.0 <= zero.ci_low < 0.5 < zero.ci_high <= 1.0
    assert two.accuracy == 1 / 8
    again = recognition_accuracy(Constant(0), images, labels, model_name="zero", layer="x", n_boot=2000)
    assert (again.ci_low, again.ci_high) == (zero.ci_low, zero.ci_high)  # one seed per (model, layer) cell
