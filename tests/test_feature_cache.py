"""The feature cache: encode once, train from the cache with the same sampling as online training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metamergen.encoders.dinov2 import patch_tokens
from metamergen.foveation.periphery import peripheral_image
from metamergen.testing import tiny_pipeline
from metamergen.training.data import AdapterTrainingDataset, TrainingItem
from metamergen.training.feature_cache import CachedFeatureDataset, cache_features, cache_settings, check_cache

LEVELS = [0.25, 1.0]


def items_for(folder: Path, n: int, corrupt: bool = False) -> list[TrainingItem]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    if corrupt:
        paths[1].write_bytes(b"broken")
    return [TrainingItem(str(p), lambda p=p: Image.open(p).convert("RGB")) for p in paths]


class Counting:
    def __init__(self, module):
        self.n = 0
        module.register_forward_hook(lambda *_: setattr(self, "n", self.n + 1))


def test_shards_resume_and_bad_images(tmp_path: Path):
    pipe = tiny_pipeline()
    items = items_for(tmp_path / "img", 5, corrupt=True)
    cache = tmp_path / "cache"
    a = cache_features(
        pipe,
        items,
        cache,
        resolution=32,
        blur_levels=LEVELS,
        batch_size=2,
        process_index=0,
        num_processes=2,
        progress=False,
    )
    b = cache_features(
        pipe,
        items,
        cache,
        resolution=32,
        blur_levels=LEVELS,
        batch_size=2,
        process_index=1,
        num_processes=2,
        progress=False,
    )
    assert a == {"encoded": 3} and b == {"encoded": 1, "unreadable image": 1}
    assert sorted(p.name for p in cache.glob("*.safetensors")) == [f"{i:08d}.safetensors" for i in (0, 2, 3, 4)]
    calls = Counting(pipe.image_encoder)
    again = cache_features(pipe, items, cache, resolution=32, blur_levels=LEVELS, progress=False)
    assert again == {"already cached": 4, "unreadable image": 1}
    assert calls.n == 0  # nothing re-encoded (the unreadable image is retried but never reaches the encoder)
    assert not list(cache.glob(".*"))  # no temporary leftovers


def test_cached_features_equal_online_encoding_and_sampling(tmp_path: Path):
    pipe = tiny_pipeline()
    items = items_for(tmp_path / "img", 3)
    cache = tmp_path / "cache"
    check_cache(cache, cache_settings(pipe, 32, LEVELS, torch.float16))
    cache_features(pipe, items, cache, resolution=32, blur_levels=LEVELS, progress=False)
    kw = dict(fixation_counts=[1, 2, 5], blur_levels=LEVELS, seed=7)
    cached = CachedFeatureDataset(cache, items, **kw)
    online = AdapterTrainingDataset(items, processor=pipe.feature_extractor, patch_size=14, resolution=32, **kw)
    for epoch in (0, 3):
        cached.set_epoch(epoch)
        online.set_epoch(epoch)
        for i in range(3):
            c, o = cached[i], online[i]
            assert torch.equal(c["foveal_mask"], o["foveal_mask"]) and c["blur"] == o["blur"]
            with torch.no_grad():
                canvas = o["encoder_pixels"][None]
                sharp = patch_tokens(pipe.image_encoder, canvas)[0]
                per = patch_tokens(pipe.image_encoder, peripheral_image(canvas, c["blur"]))[0]
                posterior = pipe.vae.encode(o["pixel_values"][None]).latent_dist
            torch.testing.assert_close(c["sharp"].float(), sharp, atol=2e-2, rtol=1e-2)
            torch.testing.assert_close(c["peripheral"].float(), per, atol=2e-2, rtol=1e-2)
            torch.testing.assert_close(c["latent_mean"].float(), posterior.mean[0], atol=2e-2, rtol=1e-2)


def test_a_cache_built_differently_is_refused(tmp_path: Path):
    pipe = tiny_pipeline()
    check_cache(tmp_path, cache_settings(pipe, 32, LEVELS, torch.float16))
    with pytest.raises(ValueError, match="resolution"):
        check_cache(tmp_path, cache_settings(pipe, 64, LEVELS, torch.float16))
    with pytest.raises(ValueError, match="not in the feature cache"):
        CachedFeatureDataset(tmp_path, items_for(tmp_path / "i", 1), fixation_counts=[1], blur_levels=[0.5])


def test_a_cache_built_with_other_encoder_weights_is_refused(tmp_path: Path):
    """Same config and path, retrained weights (a rebuilt model saved into the same folder)."""
    pipe = tiny_pipeline()
    check_cache(tmp_path, cache_settings(pipe, 32, LEVELS, torch.float16))
    check_cache(tmp_path, cache_settings(pipe, 32, LEVELS, torch.float16))  # unchanged: accepted
    with torch.no_grad():
        next(pipe.image_encoder.parameters()).add_(1e-3)
    with pytest.raises(ValueError, match="weights"):
        check_cache(tmp_path, cache_settings(pipe, 32, LEVELS, torch.float16))


def test_training_from_the_cache(tmp_path: Path):
    from accelerate.state import AcceleratorState

    from metamergen.training.config import TrainConfig
    from metamergen.training.trainer import train

    AcceleratorState._reset_state(reset_partial_state=True)
    items_for(tmp_path / "img", 4)
    root = Path(__file__).resolve().parents[1]
    cfg = TrainConfig.from_yaml(
        root / "configs" / "tiny_cpu.yaml",
        [
            f"data.images={tmp_path / 'img'}",
            f"run.output_dir={tmp_path / 'run'}",
            f"data.feature_cache={tmp_path / 'cache'}",
            "data.blur_levels=[0.25, 1.0]",
            "run.checkpointing_steps=0",
        ],
    )
    out = train(cfg)
    AcceleratorState._reset_state(reset_partial_state=True)
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 4
    assert json.loads((tmp_path / "cache" / "cache.json").read_text())["resolution"] == 32
    assert (out / "pipeline" / "model_index.json").exists()
