"""The opt-in local fovea (MetamerGenAdapters.foveal_local): each fixated patch's content stays at that patch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

from metamergen.adapters.model import LocalAttnProcessor, MetamerGenAdapters, _cell_patches
from metamergen.testing import masked_tokens as _tokens
from metamergen.testing import tiny_pipeline, tiny_unet


def _local(pipe, peripheral: bool = False):
    pipe.adapters.register_to_config(foveal_local=True, peripheral_local=peripheral)
    pipe.adapters.install(pipe.unet)
    return pipe


PERIPHERAL = torch.randn(2, 64, 48, generator=torch.Generator().manual_seed(5))


@torch.no_grad()
def _first_layer(pipe, fov, scales=(1.2, 0.7), per=PERIPHERAL):
    """The UNet's first cross-attention layer output (8 x 8 cells = the patch grid), ``(2, 64, C)``."""
    attn = pipe.unet.get_submodule(pipe.adapters.config.layer_names[0][: -len(".processor")])
    seen = []
    handle = attn.register_forward_hook(lambda m, a, out: seen.append(out))
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    text = pipe.encode_prompt(["", ""], torch.device("cpu"))
    hidden = (text, pipe.adapters.project(fov, per))
    region = pipe.adapters.foveal_region(fov)
    try:
        with pipe.adapters.applied(pipe.unet, *scales), pipe.adapters.gating(pipe.unet, region, (8, 8)):
            pipe.unet(latents, 500, encoder_hidden_states=hidden)
    finally:
        handle.remove()
    return seen[0]


def test_cells_map_to_the_patches_their_area_overlaps():
    index, valid = _cell_patches((16, 16), 8, torch.device("cpu"))  # finer than the patches: one each
    assert index.shape == (256, 1) and valid.all() and index[17, 0] == 0 and index[16 * 2 + 2, 0] == 9
    index, valid = _cell_patches((4, 4), 8, torch.device("cpu"))  # coarser: 2 x 2 patches each
    assert index[0].tolist() == [0, 1, 8, 9] and valid.all()
    index, valid = _cell_patches((3, 3), 8, torch.device("cpu"))  # not a divisor: overlaps, padded
    assert index[0][valid[0]].tolist() == [0, 1, 2, 8, 9, 10, 16, 17, 18]
    assert set(index[4][valid[4]].tolist()) == {r * 8 + c for r in (2, 3, 4, 5) for c in (2, 3, 4, 5)}


@torch.no_grad()
def test_each_shown_patch_is_resampled_alone():
    pipe = _local(tiny_pipeline())
    fov = _tokens([9, 30])
    out = pipe.adapters.project(fov, PERIPHERAL)[0]
    n = pipe.adapters.config.num_tokens
    assert out.shape == (2, 64 * n, pipe.adapters.config.cross_attention_dim)
    per_patch = out.reshape(2, 64, n, -1)
    alone = pipe.adapters.foveal_resampler(fov[:, 9:10])
    assert torch.allclose(per_patch[:, 9], alone, atol=1e-6)
    assert per_patch[:, [p for p in range(64) if p not in (9, 30)]].eq(0).all()


@torch.no_grad()
def test_with_the_fovea_off_it_is_diffusers_two_stream_processor():
    pipe = _local(tiny_pipeline())
    fov = _tokens([9, 10])
    local = _first_layer(pipe, fov, scales=(0.0, 0.7))
    pipe.adapters.register_to_config(foveal_local=False)
    pipe.adapters.install(pipe.unet)
    assert isinstance(pipe.unet.attn_processors[pipe.adapters.config.layer_names[0]], IPAdapterAttnProcessor2_0)
    stock = _first_layer(pipe, fov, scales=(0.0, 0.7))
    assert torch.allclose(local, stock, atol=1e-5)


@torch.no_grad()
def test_a_patch_changes_only_its_own_cells_and_other_fixated_patches_do_not_reach_them():
    pipe = _local(tiny_pipeline())
    off = _first_layer(pipe, _tokens([9, 30]), scales=(0.0, 0.7))
    both = _first_layer(pipe, _tokens([9, 30]))
    changed = (both - off).abs().amax(dim=-1).reshape(2, 8, 8) > 1e-6
    expected = torch.zeros(2, 8, 8, dtype=torch.bool)
    expected[:, 1, 1] = expected[:, 3, 6] = True  # patches 9 and 30
    assert torch.equal(changed, expected)  # cells over no shown patch get no foveal term
    other = _tokens([9, 30])
    other[:, 30] = torch.randn(2, 48, generator=torch.Generator().manual_seed(9))  # patch 30 shows something else
    moved = _first_layer(pipe, other)
    assert torch.allclose(moved[:, 9], both[:, 9], atol=1e-6)  # patch 9's cell holds patch 9's content only
    assert not torch.allclose(moved[:, 30], both[:, 30], atol=1e-4)


@torch.no_grad()
def test_a_local_periphery_binds_each_patch_of_the_blurred_scene_to_its_cells():
    pipe = _local(tiny_pipeline(), peripheral=True)
    fov = _tokens([9])
    both = _first_layer(pipe, fov)
    n = pipe.adapters.config.num_tokens
    per = pipe.adapters.project(fov, PERIPHERAL)[1]
    assert per.shape[1] == 64 * n and per.reshape(2, 64, n, -1).ne(0).any(dim=-1).all()  # every patch shown
    other = PERIPHERAL.clone()
    other[:, 30] += 1.0  # the periphery changes at patch 30 only
    moved = _first_layer(pipe, fov, per=other)
    changed = (moved - both).abs().amax(dim=-1).reshape(2, 8, 8) > 1e-6
    expected = torch.zeros(2, 8, 8, dtype=torch.bool)
    expected[:, 3, 6] = True
    assert torch.equal(changed, expected)
    off = _first_layer(pipe, fov, scales=(1.2, 0.0))
    zeros = pipe.adapters.project(fov, torch.zeros_like(PERIPHERAL))[1]
    assert zeros.eq(0).all()  # a dropped periphery shows no patch, so adds nothing (checked in the render test)
    assert not torch.allclose(off, both, atol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("peripheral", [False, True])
def test_a_local_pipeline_renders_and_a_dropped_stream_equals_the_stream_off(peripheral):
    pipe = _local(tiny_pipeline(), peripheral)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    kw = dict(image=image, num_inference_steps=2, output_type="np", height=16, width=16)
    lat = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    fixated = pipe(fixations=[[(20.0, 20.0)]], latents=lat, **kw).images
    dropped = pipe(fixations=[[(20.0, 20.0)]], latents=lat, drop_streams=["foveal"], **kw).images
    off = pipe(fixations=[[(20.0, 20.0)]], latents=lat, foveal_scale=0.0, **kw).images
    assert np.allclose(dropped, off, atol=1e-5)
    assert not np.allclose(fixated, dropped, atol=1e-4)
    no_periphery = pipe(fixations=[[(20.0, 20.0)]], latents=lat, drop_streams=["peripheral"], **kw).images
    periphery_off = pipe(fixations=[[(20.0, 20.0)]], latents=lat, peripheral_scale=0.0, **kw).images
    # a local periphery shows no patch when dropped; the paper's resampler turns zeros into tokens
    assert np.allclose(no_periphery, periphery_off, atol=1e-5) == peripheral


def test_the_local_fovea_trains_is_saved_and_refuses_what_it_cannot_do(tmp_path):
    from metamergen.adapters import save_ip_adapter
    from metamergen.training.trainer import AdapterTrainingModel

    pipe = _local(tiny_pipeline())
    assert all(isinstance(pipe.unet.attn_processors[n], LocalAttnProcessor) for n in pipe.adapters.config.layer_names)
    pipe.prepare_for_adapter_training()
    pipe.adapters.set_scale(pipe.unet, 1.0, 1.0)
    model = AdapterTrainingModel(pipe.unet, pipe.adapters)
    text = pipe.encode_prompt(["", ""], torch.device("cpu"))
    pred = model(torch.randn(2, 4, 8, 8), torch.tensor([500, 500]), text, _tokens([9]), PERIPHERAL)
    pred.pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pipe.adapters.foveal_resampler.parameters())

    adapters = MetamerGenAdapters.from_unet(
        tiny_unet(), image_embed_dim=48, resampler_hidden_dim=64, resampler_heads=1, foveal_local=True
    )
    adapters.save_pretrained(tmp_path / "a")
    assert MetamerGenAdapters.from_pretrained(tmp_path / "a").config.foveal_local is True
    with pytest.warns(UserWarning, match="foveal_local"):
        save_ip_adapter(adapters, tmp_path / "export")
    adapters.register_to_config(foveal_local=False, peripheral_local=True)
    with pytest.warns(UserWarning, match="peripheral_local"):  # a local periphery is no stock stream either
        save_ip_adapter(adapters, tmp_path / "export2")
    with pytest.raises(ValueError, match="SDPA"):
        adapters.install(tiny_unet(), attention="xformers")
    with pytest.raises(ValueError, match="foveal_gate_dilation"):
        MetamerGenAdapters.from_unet(tiny_unet(), image_embed_dim=48, foveal_local=True, foveal_gate_dilation=1)
    hidden = (text, pipe.adapters.project(_tokens([3]), PERIPHERAL))
    with pytest.raises(RuntimeError, match="foveal_local"):
        pipe.unet(torch.randn(2, 4, 8, 8), 500, encoder_hidden_states=hidden)
