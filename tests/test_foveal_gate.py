"""The opt-in foveal gate (MetamerGenAdapters.foveal_gate): the foveal stream acts only under its patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metamergen.adapters.model import FovealGateAttnProcessor, MetamerGenAdapters
from metamergen.testing import masked_tokens as _tokens
from metamergen.testing import tiny_pipeline, tiny_unet


def _gate(pipe, dilation: int = 0):
    pipe.adapters.register_to_config(foveal_gate=True, foveal_gate_dilation=dilation)
    pipe.adapters.install(pipe.unet)
    return pipe


def _first_cross_attention_output(pipe, fov, per, region, scales=(1.2, 0.7)):
    """The output of the UNet's first cross-attention layer (8 x 8 cells), ``(2, 64, C)``."""
    attn = pipe.unet.get_submodule(pipe.adapters.config.layer_names[0][: -len(".processor")])
    seen = []
    handle = attn.register_forward_hook(lambda m, a, out: seen.append(out))
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    text = pipe.encode_prompt(["", ""], torch.device("cpu"))
    hidden = (text, pipe.adapters.project(fov, per))
    try:
        with pipe.adapters.applied(pipe.unet, *scales), pipe.adapters.gating(pipe.unet, region, (8, 8)):
            eps = pipe.unet(latents, 500, encoder_hidden_states=hidden).sample
    finally:
        handle.remove()
    return seen[0], eps


def test_foveal_region_is_the_shown_patches_widened_by_the_dilation():
    pipe = _gate(tiny_pipeline())
    region = pipe.adapters.foveal_region(_tokens([9]))
    assert region.shape == (2, 1, 8, 8)
    assert region.sum() == 2 and region[0, 0, 1, 1] == 1  # patch 9 = row 1, column 1
    wide = _gate(tiny_pipeline(), dilation=1).adapters.foveal_region(_tokens([9]))
    assert wide[0, 0, :3, :3].eq(1).all() and wide.sum() == 2 * 9
    assert _gate(tiny_pipeline()).adapters.foveal_region(torch.zeros(2, 64, 48)).sum() == 0  # dropped fovea
    assert tiny_pipeline().adapters.foveal_region(_tokens([9])) is None  # off by default (the paper's)


@torch.no_grad()
def test_the_gate_confines_the_foveal_stream_to_its_region_and_is_a_no_op_over_the_whole_grid():
    pipe = tiny_pipeline()
    fov, per = _tokens([9, 10, 17]), torch.randn(2, 64, 48, generator=torch.Generator().manual_seed(5))
    ungated, eps_ungated = _first_cross_attention_output(pipe, fov, per, None)
    _, eps_off = _first_cross_attention_output(pipe, fov, per, None, scales=(0.0, 0.7))
    _gate(pipe)
    assert all(
        isinstance(pipe.unet.attn_processors[n], FovealGateAttnProcessor) for n in pipe.adapters.config.layer_names
    )
    everywhere, eps_everywhere = _first_cross_attention_output(pipe, fov, per, torch.ones(2, 1, 8, 8))
    assert torch.allclose(everywhere, ungated, atol=1e-6) and torch.allclose(eps_everywhere, eps_ungated, atol=1e-6)
    _, eps_nowhere = _first_cross_attention_output(pipe, fov, per, torch.zeros(2, 1, 8, 8))
    assert torch.allclose(eps_nowhere, eps_off, atol=1e-6)  # an empty region is the stream off
    region = pipe.adapters.foveal_region(fov)
    gated, _ = _first_cross_attention_output(pipe, fov, per, region)
    nowhere, _ = _first_cross_attention_output(pipe, fov, per, torch.zeros(2, 1, 8, 8))
    changed = (gated - nowhere).abs().amax(dim=-1).reshape(2, 8, 8) > 0
    assert torch.equal(changed, region[:, 0].bool())  # the fovea changes exactly its own cells


def test_a_gated_model_refuses_to_run_ungated_and_with_xformers():
    pipe = _gate(tiny_pipeline())
    text = pipe.encode_prompt(["", ""], torch.device("cpu"))
    hidden = (text, pipe.adapters.project(_tokens([3]), torch.randn(2, 64, 48)))
    with pytest.raises(RuntimeError, match="gate the foveal stream"):
        pipe.unet(torch.randn(2, 4, 8, 8), 500, encoder_hidden_states=hidden)
    with pytest.raises(ValueError, match="pass foveal_region"):
        with pipe.adapters.gating(pipe.unet, None, (8, 8)):
            pass
    with pytest.raises(ValueError, match="SDPA"):
        pipe.adapters.install(pipe.unet, attention="xformers")


def test_the_gate_is_saved_and_loaded_with_the_adapters(tmp_path):
    adapters = MetamerGenAdapters.from_unet(
        tiny_unet(), image_embed_dim=48, resampler_hidden_dim=64, resampler_heads=1, foveal_gate=True
    )
    adapters.save_pretrained(tmp_path / "a")
    loaded = MetamerGenAdapters.from_pretrained(tmp_path / "a")
    assert loaded.config.foveal_gate is True and loaded.config.foveal_gate_dilation == 0
    from metamergen.adapters import save_ip_adapter

    with pytest.warns(UserWarning, match="foveal_gate"):
        save_ip_adapter(adapters, tmp_path / "export")
    with pytest.raises(ValueError, match="foveal_gate_dilation"):
        MetamerGenAdapters.from_unet(tiny_unet(), image_embed_dim=48, foveal_gate=True, foveal_gate_dilation=-1)


@torch.no_grad()
def test_a_gated_pipeline_renders_and_a_dropped_fovea_equals_the_stream_off():
    pipe = _gate(tiny_pipeline())
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    kw = dict(image=image, num_inference_steps=2, output_type="np", height=16, width=16)
    lat = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    fixated = pipe(fixations=[[(20.0, 20.0)]], latents=lat, **kw).images
    dropped = pipe(fixations=[[(20.0, 20.0)]], latents=lat, drop_streams=["foveal"], **kw).images
    off = pipe(fixations=[[(20.0, 20.0)]], latents=lat, foveal_scale=0.0, **kw).images
    assert np.allclose(dropped, off, atol=1e-5)
    assert not np.allclose(fixated, dropped, atol=1e-4)


def test_the_training_model_runs_gated_and_trains_the_foveal_stream():
    from metamergen.training.trainer import AdapterTrainingModel

    pipe = _gate(tiny_pipeline())
    pipe.prepare_for_adapter_training()
    pipe.adapters.set_scale(pipe.unet, 1.0, 1.0)
    model = AdapterTrainingModel(pipe.unet, pipe.adapters)
    text = pipe.encode_prompt(["", ""], torch.device("cpu"))
    pred = model(torch.randn(2, 4, 8, 8), torch.tensor([500, 500]), text, _tokens([9]), torch.randn(2, 64, 48))
    pred.pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pipe.adapters.foveal_resampler.parameters())


def test_a_training_run_with_model_foveal_gate_exports_a_gated_pipeline(tmp_path):
    from accelerate.state import AcceleratorState
    from PIL import Image

    from metamergen.pipeline.pipeline_metamergen import MetamerGenPipeline
    from metamergen.training.config import TrainConfig
    from metamergen.training.trainer import train

    images = tmp_path / "img"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(images / f"{i}.png")
    tiny = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"
    cfg = TrainConfig.from_yaml(
        tiny, [f"data.images={images}", f"run.output_dir={tmp_path / 'run'}", "model.foveal_gate=true"]
    )
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        out = train(cfg)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    pipe = MetamerGenPipeline.from_pretrained(out / "pipeline")
    assert pipe.adapters.config.foveal_gate is True
    assert all(
        isinstance(pipe.unet.attn_processors[n], FovealGateAttnProcessor) for n in pipe.adapters.config.layer_names
    )
    pipe.set_progress_bar_config(disable=True)
    assert pipe(Image.open(images / "0.png"), [[5, 5]], num_inference_steps=2, output_type="np").images.shape[0] == 1
