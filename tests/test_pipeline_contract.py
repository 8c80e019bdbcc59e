"""The parts of diffusers' pipeline contract a diffusers user relies on: step-end callbacks and
interruption, per-image negative prompts, precomputed text embeddings, optional components, and
attention-processor swaps (set_default_attn_processor, set_attn_processor, fuse_qkv_projections,
attention slicing) that must not change what is rendered. Tiny random model, offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import gens, make_scene
from diffusers.models.attention_processor import (
    AttnProcessor,
    AttnProcessor2_0,
    FusedAttnProcessor2_0,
    IPAdapterAttnProcessor2_0,
    SlicedAttnProcessor,
)

from metamergen import MetamerGenPipeline
from metamergen.testing import tiny_pipeline

STEPS = 3


def latents_of(pipe, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    kw.setdefault("generator", gens(0))
    kw.setdefault("fixations", [[10, 10], [50, 30]])
    return pipe(output_type="latent", **kw).images


@pytest.fixture(scope="module")
def scene(pipe):
    return pipe.encode_scene(make_scene())


@pytest.fixture()
def own_pipe():
    """A pipeline of its own (these tests change its processors), same weights as ``pipe``."""
    p = tiny_pipeline(seed=0)
    p.set_progress_bar_config(disable=True)
    return p


# --------------------------------------------------------------------------- callback_on_step_end


def test_callback_on_step_end_sees_every_step_and_what_it_returns_replaces_the_loop_state(pipe, scene):
    seen = []

    def record(p, i, t, kwargs):
        seen.append(
            (i, int(t), tuple(sorted(kwargs)), p.num_timesteps, p.guidance_scale, p.do_classifier_free_guidance)
        )
        return kwargs

    base = latents_of(pipe, scene=scene)
    same = latents_of(pipe, scene=scene, callback_on_step_end=record)
    assert torch.equal(base, same)  # a callback that returns its inputs changes nothing
    assert [s[:2] for s in seen] == [(i, int(t)) for i, t in enumerate(pipe.scheduler.timesteps)]
    assert {s[2:] for s in seen} == {(("latents",), STEPS, 0.6, True)}

    def zero_at_the_end(p, i, t, kwargs):
        return {"latents": torch.zeros_like(kwargs["latents"])} if i == p.num_timesteps - 1 else kwargs

    assert (latents_of(pipe, scene=scene, callback_on_step_end=zero_at_the_end) == 0).all()


def test_callback_embeddings_are_the_loop_s_own_and_can_be_replaced(pipe, scene):
    names = ["latents", "prompt_embeds", "negative_prompt_embeds", "foveal_embeds", "peripheral_embeds"]
    shapes = {}

    def identity(p, i, t, kwargs):
        shapes.update({k: tuple(v.shape) for k, v in kwargs.items()})
        return {k: v.clone() for k, v in kwargs.items()}  # returned: the conditioning is rebuilt

    base = latents_of(pipe, scene=scene)
    rebuilt = latents_of(pipe, scene=scene, callback_on_step_end=identity, callback_on_step_end_tensor_inputs=names)
    assert torch.equal(base, rebuilt)
    n_tok, width = pipe.adapters.config.num_tokens, pipe.unet.config.cross_attention_dim
    assert shapes["prompt_embeds"] == shapes["negative_prompt_embeds"] == (1, 77, width)
    assert shapes["foveal_embeds"] == shapes["peripheral_embeds"] == (1, n_tok, width)

    def blank_fovea(p, i, t, kwargs):
        return {"foveal_embeds": torch.zeros_like(kwargs["foveal_embeds"])} if i == 0 else kwargs

    changed = latents_of(
        pipe, scene=scene, callback_on_step_end=blank_fovea, callback_on_step_end_tensor_inputs=["foveal_embeds"]
    )
    assert not torch.allclose(base, changed, atol=1e-4)

    def wrong_shape(p, i, t, kwargs):
        return {"latents": kwargs["latents"][:, :2]}

    with pytest.raises(ValueError, match="must keep"):
        latents_of(pipe, scene=scene, callback_on_step_end=wrong_shape)
    with pytest.raises(TypeError, match="must return a dict"):
        latents_of(pipe, scene=scene, callback_on_step_end=lambda p, i, t, kw: None)
    with pytest.raises(ValueError, match="may name only"):
        latents_of(pipe, scene=scene, callback_on_step_end=identity, callback_on_step_end_tensor_inputs=["noise_pred"])


def test_interrupt_stops_the_loop_and_the_next_call_runs_in_full(pipe, scene):
    calls = []
    hook = pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    try:

        def stop(p, i, t, kwargs):
            p._interrupt = True
            return kwargs

        latents_of(pipe, scene=scene, callback_on_step_end=stop)
        assert len(calls) == 1 and pipe.interrupt
        latents_of(pipe, scene=scene)
        assert len(calls) == 1 + STEPS and not pipe.interrupt
    finally:
        hook.remove()


def test_a_diffusers_pipeline_callback_object_brings_its_own_tensor_inputs(pipe, scene):
    from diffusers.callbacks import PipelineCallback

    class Halve(PipelineCallback):
        tensor_inputs = ["peripheral_embeds"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            return {"peripheral_embeds": callback_kwargs["peripheral_embeds"] * 0.5}

    assert not torch.allclose(
        latents_of(pipe, scene=scene), latents_of(pipe, scene=scene, callback_on_step_end=Halve())
    )


# --------------------------------------------------------------------------- text


def test_negative_prompt_is_one_for_all_or_one_per_fixation_list(pipe, scene):
    lists = [[[10, 10]], [[60, 40]]]
    batch = latents_of(pipe, scene=scene, fixations=lists, negative_prompt=["blurry", "dark"], generator=gens(0, 1))
    for i, negative in enumerate(["blurry", "dark"]):
        single = latents_of(pipe, scene=scene, fixations=[lists[i]], negative_prompt=negative, generator=gens(i))
        torch.testing.assert_close(batch[i], single[0], atol=2e-5, rtol=0)
    with pytest.raises(ValueError, match="Got 3 negative_prompts for 2 fixation lists") as err:
        latents_of(pipe, scene=scene, fixations=lists, negative_prompt=["a", "b", "c"], generator=gens(0, 1))
    assert "\n" not in str(err.value)


def test_precomputed_text_embeddings_render_as_the_prompts_do(pipe, scene):
    by_text = latents_of(pipe, scene=scene, prompt="a kitchen", negative_prompt="blurry")
    embeds = latents_of(
        pipe,
        scene=scene,
        prompt_embeds=pipe.encode_prompt("a kitchen"),
        negative_prompt_embeds=pipe.encode_prompt(["blurry"]),
    )
    torch.testing.assert_close(by_text, embeds, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="not both"):
        latents_of(pipe, scene=scene, prompt="x", prompt_embeds=pipe.encode_prompt("x"))
    with pytest.raises(ValueError, match="prompt_embeds must be"):
        latents_of(pipe, scene=scene, prompt_embeds=torch.zeros(1, 77, 5))


def test_components_may_be_none_for_text_only_and_encoder_only_use(pipe, own_pipe, scene, tmp_path: Path):
    c = own_pipe.components  # pipelines built from them reinstall the adapters: not the shared pipe's
    text_only = MetamerGenPipeline(
        vae=None,
        text_encoder=c["text_encoder"],
        tokenizer=c["tokenizer"],
        unet=None,
        scheduler=None,
        image_encoder=None,
        feature_extractor=None,
        adapters=None,
    )
    assert torch.equal(text_only.encode_prompt(["", "a"]), pipe.encode_prompt(["", "a"]))
    with pytest.raises(ValueError, match="Rendering needs components .*unet, scheduler, adapters"):
        text_only(scene=scene, num_inference_steps=1)
    encoder_only = MetamerGenPipeline(
        **{**{k: None for k in c}, "image_encoder": c["image_encoder"], "feature_extractor": c["feature_extractor"]}
    )
    assert torch.equal(encoder_only.encode_scene(make_scene()).sharp, scene.sharp)

    # a renderer without text encoder or VAE: precomputed embeddings, latents out
    renderer = MetamerGenPipeline(**{**c, "text_encoder": None, "tokenizer": None, "vae": None})
    renderer.set_progress_bar_config(disable=True)
    empty = pipe.encode_prompt("")
    got = latents_of(renderer, scene=scene, prompt_embeds=empty, negative_prompt_embeds=empty)
    torch.testing.assert_close(got, latents_of(pipe, scene=scene), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="pass prompt_embeds"):
        latents_of(renderer, scene=scene)
    with pytest.raises(ValueError, match="output_type='latent'"):
        renderer(scene=scene, prompt_embeds=empty, negative_prompt_embeds=empty, num_inference_steps=1)
    with pytest.raises(ValueError, match="without an image encoder"):
        renderer.__class__(**{**c, "image_encoder": None}).encode_scene(make_scene())

    # optional components missing from a saved folder load as None; a component may be left out at load
    renderer.save_pretrained(tmp_path / "no_text")
    loaded = MetamerGenPipeline.from_pretrained(tmp_path / "no_text")
    assert loaded.text_encoder is None and loaded.vae is None and loaded.adapters.is_installed(loaded.unet)
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(
        latents_of(loaded, scene=scene, prompt_embeds=empty, negative_prompt_embeds=empty), got, atol=1e-6, rtol=0
    )
    pipe.save_pretrained(tmp_path / "full")
    partial = MetamerGenPipeline.from_pretrained(tmp_path / "full", unet=None, adapters=None, vae=None)
    assert partial.unet is None and torch.equal(partial.encode_prompt(""), empty)


# --------------------------------------------------------------------------- stream dropping


def test_drop_streams_zeroes_a_stream_s_tokens_as_training_does(pipe, scene):
    dropped_fovea = pipe(
        scene=scene,
        fixations=[[10, 10]],
        drop_streams=["foveal"],
        num_inference_steps=STEPS,
        generator=gens(0),
        output_type="latent",
    )
    assert dropped_fovea.foveal_masks.sum() == 0
    no_fixations = latents_of(pipe, scene=scene, fixations=None)
    torch.testing.assert_close(dropped_fovea.images, no_fixations, atol=1e-6, rtol=0)  # an empty fovea
    off = latents_of(pipe, scene=scene, fixations=[[10, 10]], foveal_scale=0.0)
    assert not torch.allclose(dropped_fovea.images, off, atol=1e-4)  # not the same as switching it off

    blank = scene.select([0])
    blank.peripheral.zero_()
    torch.testing.assert_close(
        latents_of(pipe, scene=scene, drop_streams=["peripheral"]), latents_of(pipe, scene=blank), atol=1e-6, rtol=0
    )
    with pytest.raises(ValueError, match="drop_streams must be"):
        latents_of(pipe, scene=scene, drop_streams=["fovea"])


# --------------------------------------------------------------------------- attention processors


def _swap(kind: str, unet) -> None:
    if kind == "default":
        unet.set_default_attn_processor()
    elif kind == "sdpa":
        unet.set_attn_processor(AttnProcessor2_0())
    elif kind == "fused":
        unet.fuse_qkv_projections()


@pytest.mark.parametrize(
    "kind,cls", [("default", AttnProcessor), ("sdpa", AttnProcessor2_0), ("fused", FusedAttnProcessor2_0)]
)
def test_swapping_attention_processors_does_not_change_the_render(own_pipe, scene, kind, cls):
    base = latents_of(own_pipe, scene=scene)
    _swap(kind, own_pipe.unet)
    assert not own_pipe.adapters.is_installed(own_pipe.unet)
    before = own_pipe.unet.attn_processors
    torch.testing.assert_close(latents_of(own_pipe, scene=scene), base, atol=1e-5, rtol=0)
    after = own_pipe.unet.attn_processors
    assert all(after[n] is before[n] for n in before)  # the user's processors are back, the very objects
    assert {type(p) for p in after.values()} == {cls}


def test_a_failed_render_still_restores_the_user_s_processors(own_pipe, scene):
    own_pipe.unet.set_default_attn_processor()
    before = own_pipe.unet.attn_processors

    def boom(p, i, t, kwargs):
        assert p.adapters.is_installed(p.unet)  # during the loop the adapters are in place
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        latents_of(own_pipe, scene=scene, callback_on_step_end=boom)
    assert all(own_pipe.unet.attn_processors[n] is p for n, p in before.items())


def test_attention_slicing_slices_self_attention_and_keeps_the_adapters(own_pipe, scene):
    base = latents_of(own_pipe, scene=scene)
    own_pipe.enable_attention_slicing()
    procs = own_pipe.unet.attn_processors
    cross = set(own_pipe.adapters.config.layer_names)
    assert own_pipe.adapters.is_installed(own_pipe.unet)
    assert all(isinstance(p, SlicedAttnProcessor) for n, p in procs.items() if n not in cross)
    assert all(isinstance(p, IPAdapterAttnProcessor2_0) for n, p in procs.items() if n in cross)
    torch.testing.assert_close(latents_of(own_pipe, scene=scene), base, atol=1e-5, rtol=0)
    own_pipe.disable_attention_slicing()
    assert own_pipe.adapters.is_installed(own_pipe.unet)
    assert not any(isinstance(p, SlicedAttnProcessor) for p in own_pipe.unet.attn_processors.values())
    torch.testing.assert_close(latents_of(own_pipe, scene=scene), base, atol=1e-5, rtol=0)


def test_sequential_cpu_offload_is_refused_before_it_touches_a_weight(own_pipe, scene):
    base = latents_of(own_pipe, scene=scene)
    with pytest.raises(NotImplementedError, match=r"enable_model_cpu_offload\(\) instead"):
        own_pipe.enable_sequential_cpu_offload()
    assert not any(p.is_meta for p in own_pipe.adapters.parameters())
    torch.testing.assert_close(latents_of(own_pipe, scene=scene), base, atol=0, rtol=0)


def test_saving_keeps_the_user_s_processors_and_writes_no_orphan_weights(own_pipe, tmp_path: Path):
    from safetensors import safe_open

    own_pipe.unet.set_attn_processor(AttnProcessor2_0())
    before = own_pipe.unet.attn_processors
    own_pipe.save_pretrained(tmp_path)
    assert all(own_pipe.unet.attn_processors[n] is p for n, p in before.items())
    with safe_open(tmp_path / "unet" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if "_ip" in k]
    loaded = MetamerGenPipeline.from_pretrained(tmp_path)
    assert loaded.adapters.is_installed(loaded.unet)
    np.testing.assert_array_equal(
        latents_of(loaded, scene=loaded.encode_scene(make_scene())).numpy(),
        latents_of(own_pipe, scene=own_pipe.encode_scene(make_scene())).numpy(),
    )
