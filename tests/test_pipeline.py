"""MetamerGenPipeline end to end on the tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import gens, make_scene
from diffusers import DiffusionPipeline
from safetensors import safe_open

from metamergen import MetamerGenPipeline, Scanpath
from metamergen.testing import tiny_pipeline

STEPS = 3


def render(pipe, *args, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    kw.setdefault("output_type", "np")
    return pipe(*args, **kw).images


class EncoderCalls:
    """Counts forward passes of the image encoder."""

    def __init__(self, pipe):
        self.n = 0
        self.handle = pipe.image_encoder.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.n += 1


# --------------------------------------------------------------------------- outputs


def test_output_types_and_aspect_following_size(pipe):
    scene = make_scene(90, 60)
    out = pipe(scene, [[10, 10]], num_inference_steps=STEPS, generator=gens(0))
    # tiny UNet native area 32x32 px; a 3:2 scene renders at 40x26 (multiples of the VAE factor 2)
    assert out.images[0].size == (40, 26) and out.foveal_masks.shape == (1, 8, 8)
    assert render(pipe, scene, [[10, 10]], generator=gens(0)).shape == (1, 26, 40, 3)
    pt = pipe(scene, [[10, 10]], num_inference_steps=STEPS, output_type="pt", height=16, width=24).images
    assert pt.shape == (1, 3, 16, 24)
    with pytest.raises(ValueError, match="multiples"):
        pipe(scene, [[10, 10]], num_inference_steps=1, height=15, width=24)


def test_a_render_leaves_the_stream_scales_as_they_were(pipe):
    pipe.adapters.set_scale(pipe.unet, 1.0, 1.0)
    render(pipe, make_scene(), [[10, 10]], foveal_scale=1.2, peripheral_scale=0.0, generator=gens(0))
    scales = {tuple(p.scale) for n, p in pipe.unet.attn_processors.items() if n in pipe.adapters.config.layer_names}
    assert scales == {(1.0, 1.0)}


def test_same_seed_same_bytes_different_seed_different_image(pipe):
    scene = make_scene()
    a = render(pipe, scene, [[10, 10]], generator=gens(7))
    b = render(pipe, scene, [[10, 10]], generator=gens(7))
    c = render(pipe, scene, [[10, 10]], generator=gens(8))
    assert np.array_equal(a, b) and not np.allclose(a, c)


def test_fixations_and_scene_both_condition_the_output(pipe):
    scene = make_scene()
    base = render(pipe, scene, [[10, 10]], generator=gens(0))
    assert not np.allclose(base, render(pipe, scene, [[80, 50]], generator=gens(0)), atol=1e-4)
    assert not np.allclose(base, render(pipe, make_scene(seed=1), [[10, 10]], generator=gens(0)), atol=1e-4)


# --------------------------------------------------------------------------- encoding reuse


def test_a_cached_scene_costs_two_encoder_passes_whatever_is_rendered(pipe):
    calls = EncoderCalls(pipe)
    try:
        scene = pipe.encode_scene(make_scene())
        assert calls.n == 2
        path = Scanpath.from_points([[5, 5], [40, 30], [80, 50]], width=90, height=60)
        for n in (1, 2, 3):  # prefixes
            for seed in (0, 1):
                for scales in ((1.2, 0.7), (0.0, 0.7), (1.2, 0.0)):
                    pipe(
                        scene=scene,
                        fixations=path.prefix(n),
                        foveal_scale=scales[0],
                        peripheral_scale=scales[1],
                        num_inference_steps=1,
                        generator=gens(seed),
                        output_type="latent",
                    )
        pipe(scene=scene, fixations=[path, path.prefix(1), None], num_inference_steps=1, output_type="latent")
        assert calls.n == 2
        pipe(make_scene(), [[1, 1]], num_inference_steps=1, output_type="latent")  # image= encodes anew
        assert calls.n == 4
    finally:
        calls.handle.remove()


def test_scene_tokens_drop_cls_and_registers(pipe):
    scene = pipe.encode_scene([make_scene(), make_scene(seed=1)])
    assert scene.sharp.shape == scene.peripheral.shape == (2, 64, 48)
    full = pipe.image_encoder(pixel_values=scene.pixel_values).last_hidden_state
    assert full.shape[1] == 1 + 4 + 64
    assert torch.allclose(scene.sharp, full[:, 5:], atol=1e-6)
    assert not torch.allclose(scene.sharp, scene.peripheral)


def test_foveal_stream_sees_only_the_fixated_patches(pipe):
    scene = pipe.encode_scene(make_scene(112, 112))
    fix = [[14 * 2 + 3, 14 * 5 + 3]]  # 1 image px = 1 canvas px: patch (row 5, col 2) = token 42
    base = render(pipe, scene=scene, fixations=fix, generator=gens(0))
    outside = scene.select([0])
    outside.sharp[0, 43] += 5.0
    assert np.array_equal(base, render(pipe, scene=outside, fixations=fix, generator=gens(0)))
    inside = scene.select([0])
    inside.sharp[0, 42] += 5.0
    assert not np.allclose(base, render(pipe, scene=inside, fixations=fix, generator=gens(0)), atol=1e-4)


# --------------------------------------------------------------------------- batching


def test_batch_equals_one_by_one(pipe):
    scene = pipe.encode_scene(make_scene())
    lists = [[[10, 10], [50, 40]], [], [[85, 5]]]
    batch = render(pipe, scene=scene, fixations=lists, num_images_per_prompt=2, generator=gens(*range(6)))
    assert batch.shape[0] == 6
    for i, fl in enumerate(lists):
        for j in range(2):
            single = render(pipe, scene=scene, fixations=[fl], generator=gens(2 * i + j))
            np.testing.assert_allclose(batch[2 * i + j], single[0], atol=2e-5)


def test_a_batch_may_mix_scenes(pipe):
    a, b = make_scene(seed=0), make_scene(seed=1)
    mixed = render(pipe, [a, b], [[[10, 10]], [[70, 20]]], generator=gens(0, 1))
    np.testing.assert_allclose(mixed[0], render(pipe, a, [[10, 10]], generator=gens(0))[0], atol=2e-5)
    np.testing.assert_allclose(mixed[1], render(pipe, b, [[70, 20]], generator=gens(1))[0], atol=2e-5)


def test_empty_fixation_list_is_peripheral_information_only(pipe):
    scene = pipe.encode_scene(make_scene())
    none = render(pipe, scene=scene, fixations=None, generator=gens(3))
    assert np.array_equal(none, render(pipe, scene=scene, fixations=[], generator=gens(3)))
    assert np.array_equal(
        none, render(pipe, scene=scene, fixations=Scanpath((), width=90, height=60), generator=gens(3))
    )
    # an empty fovea is the dropped foveal condition (zero tokens through the resampler), as in
    # training; it is not the same as foveal_scale=0, which removes the stream altogether
    assert pipe(scene=scene, fixations=None, num_inference_steps=1).foveal_masks.sum() == 0


# --------------------------------------------------------------------------- guidance


@pytest.mark.parametrize("guidance,scale", [("cfg", 0.0), ("cfg++", 0.0)])
def test_unconditional_branch_drops_both_streams(pipe, guidance, scale):
    # With guidance 0 only the unconditional prediction drives sampling: it must ignore the scene
    # and the fixations entirely (zero tokens in both streams, as training drops them).
    a = render(pipe, make_scene(seed=0), [[10, 10]], guidance=guidance, guidance_scale=scale, generator=gens(0))
    b = render(pipe, make_scene(seed=5), [[60, 40]], guidance=guidance, guidance_scale=scale, generator=gens(0))
    assert np.array_equal(a, b)


def test_cfg_and_cfgpp_differ_and_both_use_the_condition(pipe):
    scene = make_scene()
    cfg = render(pipe, scene, [[10, 10]], guidance="cfg", guidance_scale=3.0, generator=gens(0))
    cfgpp = render(pipe, scene, [[10, 10]], guidance="cfg++", guidance_scale=0.6, generator=gens(0))
    assert not np.allclose(cfg, cfgpp, atol=1e-4)


# --------------------------------------------------------------------------- save / load


def test_save_load_round_trip_is_bit_identical(tmp_path: Path):
    pipe = tiny_pipeline(seed=3)
    pipe.set_progress_bar_config(disable=True)
    scene = make_scene()
    before = render(pipe, scene, [[10, 10], [40, 20]], generator=gens(11))
    pipe.save_pretrained(tmp_path)
    assert pipe.adapters.is_installed(pipe.unet)  # saving does not unhook the live pipeline
    with safe_open(tmp_path / "unet" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if "to_k_ip" in k or "to_v_ip" in k], "orphan adapter weights in unet"
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["adapters"] == ["metamergen.adapters", "MetamerGenAdapters"]
    loaded = MetamerGenPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(before, render(loaded, scene, [[10, 10], [40, 20]], generator=gens(11)))
    # plain diffusers loads the same folder through the shim it holds
    generic = DiffusionPipeline.from_pretrained(tmp_path, custom_pipeline=str(tmp_path), trust_remote_code=True)
    assert type(generic).__name__ == "MetamerGenPipeline"
    generic.set_progress_bar_config(disable=True)
    assert np.array_equal(before, render(generic, scene, [[10, 10], [40, 20]], generator=gens(11)))


def test_from_base_models_reads_hub_layout_folders(tmp_path: Path, pipe):
    # The real loading path (hub ids) exercised on local folders laid out like the hub repos.
    sd = tmp_path / "sd"
    for name in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"):
        component = getattr(pipe, name)
        if name == "unet":
            pipe.adapters.uninstall(component)
        try:
            component.save_pretrained(sd / name)
        finally:
            pipe.adapters.install(pipe.unet)
    pipe.image_encoder.save_pretrained(tmp_path / "dinov2")
    pipe.adapters.save_pretrained(tmp_path / "adapters")
    loaded = MetamerGenPipeline.from_base_models(sd, tmp_path / "dinov2", tmp_path / "adapters", encoder_resolution=112)
    loaded.set_progress_bar_config(disable=True)
    scene = make_scene()
    assert np.array_equal(
        render(pipe, scene, [[3, 4]], generator=gens(1)), render(loaded, scene, [[3, 4]], generator=gens(1))
    )
    fresh = MetamerGenPipeline.from_base_models(
        sd, tmp_path / "dinov2", adapter_config={"num_tokens": 4, "resampler_hidden_dim": 64, "resampler_heads": 1}
    )
    assert fresh.adapters.config.image_embed_dim == 48 and fresh.grid_size == 32


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors(pipe):
    scene = make_scene(90, 60)
    with pytest.raises(ValueError, match="never rescales"):
        pipe(scene, Scanpath.from_points([[1, 1]], width=1680, height=1050), num_inference_steps=1)
    with pytest.raises(ValueError, match="finite"):
        pipe(scene, [[float("nan"), 3.0]], num_inference_steps=1)
    with pytest.raises(ValueError, match="off the image"):
        pipe(scene, [[500, 3]], off_image="error", num_inference_steps=1)
    with pytest.raises(ValueError, match="fixation lists for 2 scenes"):
        pipe([scene, scene], [[[1, 1]], [[2, 2]], [[3, 3]]], num_inference_steps=1)
    with pytest.raises(ValueError, match="needs a window radius"):
        pipe(scene, [[1, 1]], foveal_mode="crop", num_inference_steps=1)
    with pytest.raises(ValueError, match="generators"):
        pipe(scene, [[1, 1]], generator=gens(0, 1), num_inference_steps=1)
    with pytest.raises(ValueError, match="image=... .* scene="):
        pipe(fixations=[[1, 1]])
    with pytest.raises(ValueError, match="different aspect"):
        pipe([make_scene(90, 60), make_scene(60, 60)], [[[1, 1]], [[1, 1]]], num_inference_steps=1)


def test_off_image_fixations_are_dropped_with_a_count(pipe):
    scene = pipe.encode_scene(make_scene(90, 60))
    with pytest.warns(UserWarning, match="1 of 2"):
        out = pipe(scene=scene, fixations=[[10, 10], [95, 10]], num_inference_steps=1)
    assert out.foveal_masks.sum() == 1


def test_foveal_crop_mode_costs_one_more_pass(pipe):
    scene = pipe.encode_scene(make_scene(112, 112))
    calls = EncoderCalls(pipe)
    try:
        crop = render(
            pipe,
            scene=scene,
            fixations=[[[30, 30]], [[80, 80]]],
            foveal_mode="crop",
            foveal_radius_px=20,
            generator=gens(0, 1),
        )
        assert calls.n == 1
    finally:
        calls.handle.remove()
    tokens = render(pipe, scene=scene, fixations=[[[30, 30]], [[80, 80]]], foveal_radius_px=20, generator=gens(0, 1))
    assert crop.shape == tokens.shape and not np.allclose(crop, tokens, atol=1e-4)


def test_from_pretrained_downloads_a_hub_repo_first(tmp_path: Path, monkeypatch):
    # diffusers' own download step fails for the third-party adapters component, so a repo id is
    # snapshot-downloaded whole and loaded as a folder (the download itself is faked: no network)
    import huggingface_hub

    pipe = tiny_pipeline(seed=4)
    pipe.save_pretrained(tmp_path / "snapshot")
    asked = {}

    def fake_snapshot_download(repo_id, revision=None, **kw):
        asked.update(repo_id=repo_id, revision=revision)
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    loaded = MetamerGenPipeline.from_pretrained("someone/metamergen-sd15", revision="abc123")
    assert asked == {"repo_id": "someone/metamergen-sd15", "revision": "abc123"}
    assert loaded.adapters.is_installed(loaded.unet)


def test_more_bad_arguments(pipe):
    scene = pipe.encode_scene(make_scene())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pipe(scene=scene, fixations=[[1, 1]], guidance="cfg++", guidance_scale=7.5, num_inference_steps=1)
    with pytest.raises(ValueError, match=">= 0"):
        pipe(scene=scene, fixations=[[1, 1]], foveal_scale=-1.0, num_inference_steps=1)
    with pytest.raises(ValueError, match="fixed when a scene is encoded"):
        pipe(scene=scene, fixations=[[1, 1]], peripheral_blur=0.5, num_inference_steps=1)
    with pytest.raises(ValueError, match="scene indices"):
        pipe.foveal_masks(scene, [[[1, 1]], [[2, 2]]], scene_index=[0])


def test_a_step_of_the_call_can_be_overridden_in_a_subclass():
    """The call is a sequence of named steps: a subclass that changes one (here: the foveal tokens
    are zeroed, so fixations carry no information) changes the output, the others stay the same."""
    from metamergen.pipeline import MetamerGenPipeline

    class NoFovea(MetamerGenPipeline):
        def foveal_tokens(self, scene, masks, *args, **kwargs):
            return torch.zeros_like(super().foveal_tokens(scene, masks, *args, **kwargs))

    pipe = tiny_pipeline()
    blind = NoFovea(**pipe.components)
    for p in (pipe, blind):
        p.set_progress_bar_config(disable=True)
    image = torch.rand(3, 28, 28, generator=torch.Generator().manual_seed(1))
    kw = dict(image=image, num_inference_steps=2, output_type="latent")
    fixated = pipe(**kw, fixations=[[5.0, 5.0], [20.0, 9.0]], generator=torch.Generator().manual_seed(0)).images
    empty = pipe(**kw, fixations=[], generator=torch.Generator().manual_seed(0)).images
    blind_fixated = blind(**kw, fixations=[[5.0, 5.0], [20.0, 9.0]], generator=torch.Generator().manual_seed(0)).images
    assert not torch.allclose(fixated, empty)
    assert torch.allclose(blind_fixated, empty, atol=1e-6)  # zero foveal tokens = no fixations
