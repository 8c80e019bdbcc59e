"""Scoring metrics: identity, ordering (noise < scramble), monotonicity, batching, DreamSim wiring.

Everything here is offline: CLIP and DINOv2 are tiny random models, DreamSim is a stand-in. The
real DreamSim runs only when the package imports and its weights sit in $METAMERGEN_DREAMSIM_CACHE.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPConfig, CLIPModel

from metamergen.encoders.dinov2 import dinov2_processor
from metamergen.evaluation.metrics import (
    METRICS,
    MODEL_METRICS,
    WEIGHT_FREE_METRICS,
    CLIPSimilarity,
    ColorHistogramDistance,
    DinoCosine,
    DreamSimDistance,
    GaborEnergyDistance,
    Metric,
    build_metrics,
    dreamsim_missing_files,
)
from metamergen.testing import TINY_ENCODER_RESOLUTION, tiny_image_encoder

# --------------------------------------------------------------------------- images


def scene(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    """A structured scene: colour ramps, a plaid texture, a rectangle and a disc (not noise, so that
    scrambling it destroys structure that noise leaves intact)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.stack(
        [x / width, y / height, 0.5 + 0.25 * np.sin(2 * np.pi * x / 16) * np.cos(2 * np.pi * y / 12)], axis=-1
    )
    x0, y0 = rng.integers(4, width // 2), rng.integers(4, height // 2)
    img[y0 : y0 + 12, x0 : x0 + 16] = rng.uniform(0, 1, 3)
    cx, cy = rng.uniform(width / 2, width - 8), rng.uniform(height / 2, height - 8)
    img[(x - cx) ** 2 + (y - cy) ** 2 < 36] = rng.uniform(0, 1, 3)
    return Image.fromarray(np.round(img * 255).astype(np.uint8))


def noised(image: Image.Image, sigma: float, seed: int = 1) -> Image.Image:
    """Add Gaussian noise of std ``sigma`` (in [0, 1] units); the same noise pattern for every sigma."""
    arr = np.asarray(image) / 255.0
    z = np.random.default_rng(seed).standard_normal(arr.shape)
    return Image.fromarray(np.round(np.clip(arr + sigma * z, 0, 1) * 255).astype(np.uint8))


def scrambled(image: Image.Image, seed: int = 2) -> Image.Image:
    """Shuffle every value of the (H, W, 3) array: destroys structure, and colour (channels mix)."""
    arr = np.asarray(image).ravel().copy()
    np.random.default_rng(seed).shuffle(arr)
    return Image.fromarray(arr.reshape(np.asarray(image).shape))


def pixel_shuffled(image: Image.Image, seed: int = 2) -> Image.Image:
    """Shuffle whole pixels (each keeps its RGB triple)."""
    arr = np.asarray(image).reshape(-1, 3).copy()
    np.random.default_rng(seed).shuffle(arr, axis=0)
    return Image.fromarray(arr.reshape(np.asarray(image).shape))


def more_similar(metric: Metric, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise: does score ``a`` mean more similar than score ``b``?"""
    return a > b if metric.higher_is_similar else a < b


ORIGINALS = [scene(seed=s) for s in range(3)]


# --------------------------------------------------------------------------- tiny models


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


@pytest.fixture(scope="module")
def clip_metric() -> CLIPSimilarity:
    return CLIPSimilarity(tiny_clip(), batch_size=2)


@pytest.fixture(scope="module")
def dino_metric() -> DinoCosine:
    torch.manual_seed(0)
    return DinoCosine(tiny_image_encoder(), dinov2_processor(TINY_ENCODER_RESOLUTION), batch_size=2)


@pytest.fixture(scope="module")
def model_metrics(clip_metric, dino_metric) -> list[Metric]:
    return [clip_metric, dino_metric]


WEIGHT_FREE = build_metrics(WEIGHT_FREE_METRICS)


# --------------------------------------------------------------------------- identity and ordering


IDENTICAL_VALUE = {"psnr": np.inf, "mse": 0.0, "ssim": 1.0, "color_hist": 0.0, "gabor": 0.0, "sobel": 0.0}


@pytest.mark.parametrize("metric", WEIGHT_FREE, ids=lambda m: m.name)
def test_identical_images_score_as_identical(metric: Metric):
    scores = metric(ORIGINALS, [im.copy() for im in ORIGINALS])
    assert scores.shape == (3,) and scores.dtype == np.float64
    expected = IDENTICAL_VALUE[metric.name]
    if np.isinf(expected):
        assert np.all(scores == np.inf)
    else:
        np.testing.assert_allclose(scores, expected, atol=1e-12)


def test_model_metrics_give_cosine_one_for_identical_images(model_metrics):
    for metric in model_metrics:
        assert metric.higher_is_similar
        np.testing.assert_allclose(metric(ORIGINALS, [im.copy() for im in ORIGINALS]), 1.0, atol=1e-6)


@pytest.mark.parametrize("metric", WEIGHT_FREE, ids=lambda m: m.name)
def test_scrambled_scores_worse_than_lightly_noised(metric: Metric):
    light = metric(ORIGINALS, [noised(im, 0.02) for im in ORIGINALS])
    scram = metric(ORIGINALS, [scrambled(im) for im in ORIGINALS])
    ident = metric(ORIGINALS, ORIGINALS)
    assert np.all(more_similar(metric, light, scram)), (light, scram)
    assert np.all(more_similar(metric, ident, light)), (ident, light)


def test_model_metrics_score_scrambled_below_identical(model_metrics):
    for metric in model_metrics:
        scram = metric(ORIGINALS, [scrambled(im) for im in ORIGINALS])
        assert np.all(scram < 1 - 1e-3), (metric.name, scram)


def test_color_histogram_is_blind_to_pixel_positions():
    # Documented property: only the colour distribution counts.
    scores = ColorHistogramDistance()(ORIGINALS, [pixel_shuffled(im) for im in ORIGINALS])
    np.testing.assert_allclose(scores, 0.0, atol=1e-12)


@pytest.mark.parametrize("name", ["psnr", "mse", "ssim"])
def test_monotonic_in_noise_level(name: str):
    metric = METRICS[name]()
    sigmas = [0.01, 0.03, 0.1, 0.3]
    scores = np.stack([metric(ORIGINALS, [noised(im, s) for im in ORIGINALS]) for s in sigmas])  # (levels, N)
    steps = np.diff(scores, axis=0)
    assert np.all(steps < 0) if metric.higher_is_similar else np.all(steps > 0), scores


def test_psnr_and_mse_agree_with_the_formula():
    a = np.zeros((16, 16, 3), np.uint8)
    b = a.copy()
    b[:8] = 51  # half the pixels off by 0.2 -> MSE 0.02
    mse = METRICS["mse"]()([a], [b])[0]
    assert mse == pytest.approx(0.02, rel=1e-12)
    assert METRICS["psnr"]()([a], [b])[0] == pytest.approx(10 * np.log10(1 / 0.02), rel=1e-12)


def test_known_values_on_flat_images():
    dark, light = np.full((16, 16, 3), 51, np.uint8), np.full((16, 16, 3), 153, np.uint8)  # 0.2 and 0.6
    c1 = 0.01**2  # flat images: SSIM reduces to its luminance term
    assert METRICS["ssim"]()([dark], [light])[0] == pytest.approx(
        (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1), rel=1e-9
    )
    black, white = np.zeros_like(dark), np.full_like(dark, 255)
    assert METRICS["color_hist"]()([black], [white])[0] == pytest.approx(1.0)  # disjoint histograms: maximum
    edges = np.asarray(ORIGINALS[0])
    assert METRICS["sobel"]()([edges], [np.full_like(edges, 128)])[0] == pytest.approx(1.0)  # no edges vs edges


def test_generation_is_resized_to_the_original_with_bicubic():
    big = [im.resize((100, 70), Image.Resampling.BICUBIC) for im in ORIGINALS]
    resized = [g.resize(o.size, Image.Resampling.BICUBIC) for g, o in zip(big, ORIGINALS)]
    for metric in WEIGHT_FREE:
        np.testing.assert_array_equal(metric(ORIGINALS, big), metric(ORIGINALS, resized), err_msg=metric.name)


def test_gabor_fft_filtering_equals_spatial_convolution():
    from metamergen.evaluation.metrics import _luminance, _to_float

    arr = np.asarray(scene(40, 30))
    gabor = GaborEnergyDistance()
    lum = _luminance(_to_float(arr))
    expected = []
    for bank in gabor._banks:
        half = bank.shape[-1] // 2
        padded = F.pad(lum, (half, half, half, half), mode="replicate")
        flipped = torch.flip(bank, (-2, -1))[:, None]  # conv2d correlates; flip for a convolution
        re, im = F.conv2d(padded, flipped.real)[0], F.conv2d(padded, flipped.imag)[0]
        expected.append((re**2 + im**2).mean(dim=(1, 2)))
    np.testing.assert_allclose(gabor.energies(arr), torch.cat(expected).numpy(), rtol=1e-9, atol=1e-15)


def test_model_metrics_see_the_periphery(model_metrics):
    # A wide scene whose outer columns change: a centre crop would not see the change.
    wide = scene(160, 48, seed=5)
    edited = np.asarray(wide).copy()
    edited[:, :20] = 255 - edited[:, :20]
    for metric in model_metrics:
        assert metric([wide], [Image.fromarray(edited)])[0] < 1 - 1e-4, metric.name


def test_clip_accepts_tensor_or_output_object_from_get_image_features(clip_metric):
    legacy = tiny_clip()
    original = legacy.get_image_features
    legacy.get_image_features = lambda **kw: original(**kw).pooler_output  # transformers 4: a tensor
    gens = [noised(im, 0.1) for im in ORIGINALS]
    np.testing.assert_allclose(
        CLIPSimilarity(legacy, batch_size=2)(ORIGINALS, gens), clip_metric(ORIGINALS, gens), rtol=0, atol=1e-7
    )


def test_clip_missing_weights_says_how_to_get_them(tmp_path: Path):
    with pytest.raises(RuntimeError, match="openai/clip-vit-large-patch14") as info:
        CLIPSimilarity(str(tmp_path / "no-such-clip"))
    assert "local folder" in str(info.value)


# --------------------------------------------------------------------------- batching


def test_batch_equals_one_by_one(model_metrics):
    gens = [noised(ORIGINALS[0], 0.05), scrambled(ORIGINALS[1]), ORIGINALS[2].resize((80, 50))]
    for metric in WEIGHT_FREE + list(model_metrics):
        batch = metric(ORIGINALS, gens)
        single = np.array([metric([o], [g])[0] for o, g in zip(ORIGINALS, gens)])
        if metric.name in WEIGHT_FREE_METRICS:
            np.testing.assert_array_equal(batch, single, err_msg=metric.name)
        else:
            np.testing.assert_allclose(batch, single, rtol=0, atol=1e-6, err_msg=metric.name)


def test_repeated_original_is_embedded_once_with_the_same_scores(clip_metric):
    calls = []
    embed = clip_metric.embed

    def counting(images):
        calls.append(len(images))
        return embed(images)

    gens = [noised(ORIGINALS[0], s) for s in (0.02, 0.05, 0.1)]
    clip_metric.embed = counting
    try:
        shared = clip_metric([ORIGINALS[0]] * 3, gens)
    finally:
        del clip_metric.embed
    assert calls == [1, 3]
    np.testing.assert_allclose(shared, clip_metric([ORIGINALS[0].copy() for _ in gens], gens), atol=1e-7)


def test_mismatched_lengths_and_empty_inputs():
    with pytest.raises(ValueError, match="pairwise"):
        METRICS["mse"]()(ORIGINALS, ORIGINALS[:2])
    assert METRICS["ssim"]()([], []).shape == (0,)


# --------------------------------------------------------------------------- DreamSim


class StandInDreamSim:
    """Same interface as dreamsim's model: model(a, b) -> (B,) distances. Signed, so that swapping
    originals and generations would show."""

    def __init__(self):
        self.batches: list[int] = []

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        assert a.shape == b.shape and a.shape[1:] == (3, 224, 224)
        self.batches.append(a.shape[0])
        return (a - b).mean(dim=(1, 2, 3)) + 1.0


def stand_in_preprocess(pil: Image.Image) -> torch.Tensor:
    """Squash to 224 x 224, [0, 1], (1, 3, 224, 224), like dreamsim's preprocess."""
    arr = np.asarray(pil.convert("RGB").resize((224, 224), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


@pytest.fixture
def restore_hub_dir():
    before = torch.hub.get_dir()
    yield before
    torch.hub.set_dir(before)


def test_dreamsim_stand_in_batches_and_passes_distances_through():
    model = StandInDreamSim()
    metric = DreamSimDistance(model=model, preprocess=stand_in_preprocess, batch_size=2)
    originals = [scene(seed=s) for s in range(5)]
    gens = [noised(o, 0.1 * (i + 1), seed=i) for i, o in enumerate(originals)]
    scores = metric(originals, gens)
    assert model.batches == [2, 2, 1]
    expected = np.array(
        [float((stand_in_preprocess(o) - stand_in_preprocess(g)).mean()) + 1.0 for o, g in zip(originals, gens)]
    )
    assert scores.dtype == np.float64 and scores.shape == (5,)
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    assert not metric.higher_is_similar and metric.name == "dreamsim"


def _fake_dreamsim_module(factory) -> types.ModuleType:
    module = types.ModuleType("dreamsim")
    module.dreamsim = factory
    return module


def test_dreamsim_loader_restores_torch_hub_dir(monkeypatch, tmp_path: Path, restore_hub_dir):
    seen = {}

    def factory(pretrained, device, cache_dir, dreamsim_type):
        seen.update(pretrained=pretrained, device=device, cache_dir=cache_dir, dreamsim_type=dreamsim_type)
        torch.hub.set_dir(cache_dir)  # what dreamsim's extractor does
        return StandInDreamSim(), stand_in_preprocess

    monkeypatch.setitem(sys.modules, "dreamsim", _fake_dreamsim_module(factory))
    metric = DreamSimDistance(cache_dir=tmp_path / "ds")
    assert torch.hub.get_dir() == restore_hub_dir
    assert seen == dict(pretrained=True, device="cpu", cache_dir=str(tmp_path / "ds"), dreamsim_type="ensemble")
    assert metric(ORIGINALS[:1], ORIGINALS[:1])[0] == pytest.approx(1.0)


def test_dreamsim_loader_restores_hub_dir_and_names_cache_dir_when_loading_fails(
    monkeypatch, tmp_path, restore_hub_dir
):
    def factory(pretrained, device, cache_dir, dreamsim_type):
        torch.hub.set_dir(cache_dir)
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setitem(sys.modules, "dreamsim", _fake_dreamsim_module(factory))
    with pytest.raises(RuntimeError, match="cache_dir") as info:
        DreamSimDistance(cache_dir=tmp_path / "ds")
    assert torch.hub.get_dir() == restore_hub_dir
    message = str(info.value)
    assert str(tmp_path / "ds") in message and "ensemble_lora" in message and "METAMERGEN_DREAMSIM_CACHE" in message


def test_dreamsim_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dreamsim", None)  # makes `import dreamsim` raise ImportError
    with pytest.raises(ImportError, match="pip install dreamsim") as info:
        DreamSimDistance()
    assert "torchvision" in str(info.value)


def test_dreamsim_rejects_half_an_injection_and_unknown_types():
    with pytest.raises(ValueError, match="both"):
        DreamSimDistance(model=StandInDreamSim())
    with pytest.raises(ValueError, match="ensemble"):
        dreamsim_missing_files("/nonexistent", dreamsim_type="resnet")


def _real_dreamsim_skip_reason() -> str | None:
    try:
        importlib.import_module("dreamsim")
    except Exception as exc:  # ImportError, or a torch/torchvision mismatch
        return f"the dreamsim package does not import ({type(exc).__name__}: {exc}); pip install dreamsim==0.2.1"
    cache = os.environ.get("METAMERGEN_DREAMSIM_CACHE")
    if not cache:
        return "METAMERGEN_DREAMSIM_CACHE is not set (a folder holding DreamSim's unzipped ensemble weights)"
    missing = dreamsim_missing_files(cache, "ensemble")
    if missing:
        return f"DreamSim weights missing from METAMERGEN_DREAMSIM_CACHE={cache}: {', '.join(missing)}"
    return None


@pytest.mark.slow
def test_real_dreamsim_when_weights_are_present(restore_hub_dir):
    reason = _real_dreamsim_skip_reason()
    if reason:
        pytest.skip(reason)
    metric = DreamSimDistance(device="cpu", cache_dir=os.environ["METAMERGEN_DREAMSIM_CACHE"], batch_size=2)
    assert torch.hub.get_dir() == restore_hub_dir
    np.testing.assert_allclose(metric(ORIGINALS, [im.copy() for im in ORIGINALS]), 0.0, atol=1e-5)
    light = metric(ORIGINALS, [noised(im, 0.02) for im in ORIGINALS])
    scram = metric(ORIGINALS, [scrambled(im) for im in ORIGINALS])
    assert np.all(light < scram), (light, scram)


# --------------------------------------------------------------------------- registry


def test_registry_names():
    assert set(METRICS) == set(WEIGHT_FREE_METRICS) | set(MODEL_METRICS)
    assert [m.name for m in build_metrics(list(METRICS)[:6])] == list(WEIGHT_FREE_METRICS)
    for name in WEIGHT_FREE_METRICS:
        assert build_metrics([name])[0].name == name


def test_build_metrics_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="lpips") as info:
        build_metrics(["psnr", "lpips"])
    for name in METRICS:
        assert name in str(info.value)


def test_build_metrics_routes_options(dino_metric):
    pipe = types.SimpleNamespace(image_encoder=dino_metric.image_encoder, feature_extractor=dino_metric.processor)
    ssim, clip, dino = build_metrics(
        ["ssim", "clip", "dino"], pipe=pipe, batch_size=3, clip={"model": tiny_clip()}, ssim={"window_size": 7}
    )
    assert (ssim.window_size, clip.batch_size, dino.batch_size) == (7, 3, 3)
    assert dino.image_encoder is dino_metric.image_encoder
    with pytest.raises(TypeError, match="batch_size"):
        build_metrics(["psnr"], batch_size=4)  # no weight-free metric takes it: a typo must not pass silently
    with pytest.raises(TypeError, match="clip"):
        build_metrics(["psnr"], clip={"model": "x"})
    with pytest.raises(ValueError, match="pipe"):
        build_metrics(["dino"])
