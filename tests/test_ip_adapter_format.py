"""Tests for metamergen.adapters.ip_adapter_format: export to diffusers' IP-Adapter files and back."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0
from safetensors.torch import load_file

from metamergen.adapters.ip_adapter_format import (
    FOVEAL_WEIGHT_NAME,
    PERIPHERAL_WEIGHT_NAME,
    load_ip_adapter_state_dicts,
    save_ip_adapter,
    to_ip_adapter_state_dicts,
)
from metamergen.adapters.model import MetamerGenAdapters
from metamergen.testing import tiny_adapters, tiny_pipeline

TOKENS = (2, 64, 48)  # batch, DINOv2 tokens (8 x 8 grid), encoder width of the tiny pipeline


@pytest.fixture(scope="module")
def mg():
    """A private tiny pipeline (this module changes processor scales; the shared one must not change)."""
    p = tiny_pipeline(seed=0)
    # Make the resampler norms non-trivial (LayerNorms start at 1/0), so a swapped name would show.
    with torch.no_grad():
        for name, param in p.adapters.named_parameters():
            if "norm" in name or name.endswith(
                ("ln0.weight", "ln1.weight", "ln0.bias", "ln1.bias", "ff.0.weight", "ff.0.bias")
            ):
                param.add_(0.1 * torch.randn_like(param))
    return p


def _all_tensors(adapters: MetamerGenAdapters) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in adapters.state_dict().items()}


# ---------------------------------------------------------------- format and round trip


def test_file_keys_follow_ip_adapter_layout(mg) -> None:
    sd = to_ip_adapter_state_dicts(mg.adapters)
    assert set(sd) == {"foveal", "peripheral"}
    n_layers = len(mg.adapters.config.layer_names)
    for stream in sd.values():
        assert set(stream["ip_adapter"]) == {
            f"{2 * i + 1}.{kind}_ip.weight" for i in range(n_layers) for kind in ("to_k", "to_v")
        }
        proj = stream["image_proj"]
        assert {"latents", "proj_in.weight", "proj_out.weight", "norm_out.weight"} <= set(proj)
        for i in range(4):
            assert {
                f"layers.{i}.0.to_q.weight",
                f"layers.{i}.0.to_kv.weight",
                f"layers.{i}.0.norm1.weight",
                f"layers.{i}.0.norm2.bias",
                f"layers.{i}.0.to_out.weight",
                f"layers.{i}.1.0.weight",
                f"layers.{i}.1.1.weight",
                f"layers.{i}.1.3.weight",
            } <= set(proj)
        assert not any("attn" in k or "ln0" in k or ".ff." in k for k in proj)
    # K/V numbering follows attn_processors order: key 2i+1 is layer i of that stream.
    i = n_layers - 1
    assert torch.equal(
        sd["peripheral"]["ip_adapter"][f"{2 * i + 1}.to_v_ip.weight"], mg.adapters.to_v_peripheral[i].weight
    )
    assert torch.equal(sd["foveal"]["ip_adapter"]["1.to_k_ip.weight"], mg.adapters.to_k_foveal[0].weight)


def test_diffusers_converter_rebuilds_the_resamplers_exactly(mg) -> None:
    """diffusers' own converter (strict load) applied to the export gives the same resampler."""
    sd = to_ip_adapter_state_dicts(mg.adapters)
    x = torch.randn(*TOKENS, generator=torch.Generator().manual_seed(1))
    for stream, resampler in (
        ("foveal", mg.adapters.foveal_resampler),
        ("peripheral", mg.adapters.peripheral_resampler),
    ):
        rebuilt = mg.unet._convert_ip_adapter_image_proj_to_diffusers(sd[stream]["image_proj"], low_cpu_mem_usage=False)
        ours = resampler.state_dict()
        theirs = rebuilt.state_dict()
        assert set(ours) == set(theirs)
        for k in ours:
            assert torch.equal(ours[k], theirs[k]), k
        with torch.no_grad():
            assert torch.equal(rebuilt(x), resampler(x))


def test_round_trip_into_fresh_adapters(mg, tmp_path) -> None:
    torch.manual_seed(123)
    fresh = tiny_adapters(mg.unet)
    before = _all_tensors(fresh)
    target = _all_tensors(mg.adapters)
    assert any(not torch.equal(before[k], target[k]) for k in target)  # the test can see a change

    sd = to_ip_adapter_state_dicts(mg.adapters)
    load_ip_adapter_state_dicts(fresh, sd["foveal"], sd["peripheral"])
    after = _all_tensors(fresh)
    assert set(after) == set(target)
    for k in target:
        assert torch.equal(after[k], target[k]), k

    # The files, read back in the flat form, give the same result.
    torch.manual_seed(7)
    from_files = tiny_adapters(mg.unet)
    fov, per = save_ip_adapter(mg.adapters, tmp_path)
    load_ip_adapter_state_dicts(from_files, load_file(fov), load_file(per))
    for k, v in _all_tensors(from_files).items():
        assert torch.equal(v, target[k]), k


def test_load_rejects_mismatched_shapes_without_modifying(mg) -> None:
    sd = to_ip_adapter_state_dicts(mg.adapters)
    other = MetamerGenAdapters.from_unet(
        mg.unet, image_embed_dim=48, num_tokens=8, resampler_hidden_dim=64, resampler_heads=1, resampler_dim_head=64
    )
    before = _all_tensors(other)
    with pytest.raises(ValueError, match=r"latents has shape \(1, 4, 64\).*expect \(1, 8, 64\)"):
        load_ip_adapter_state_dicts(other, sd["foveal"], sd["peripheral"])
    for k, v in _all_tensors(other).items():
        assert torch.equal(v, before[k]), k

    broken = {"image_proj": sd["peripheral"]["image_proj"], "ip_adapter": dict(sd["peripheral"]["ip_adapter"])}
    del broken["ip_adapter"]["3.to_k_ip.weight"]
    torch.manual_seed(5)
    fresh = tiny_adapters(mg.unet)
    with pytest.raises(ValueError, match=r"peripheral.*missing \['ip_adapter\.3\.to_k_ip\.weight'\]"):
        load_ip_adapter_state_dicts(fresh, sd["foveal"], broken)


# ---------------------------------------------------------------- stock diffusers


def _stock_pipeline(mg, folder) -> StableDiffusionPipeline:
    unet = copy.deepcopy(mg.unet)
    unet.set_attn_processor(AttnProcessor2_0())
    stock = StableDiffusionPipeline(
        vae=mg.vae,
        text_encoder=mg.text_encoder,
        tokenizer=mg.tokenizer,
        unet=unet,
        scheduler=mg.scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    stock.load_ip_adapter(
        [str(folder), str(folder)],
        subfolder="",
        weight_name=[FOVEAL_WEIGHT_NAME, PERIPHERAL_WEIGHT_NAME],
        image_encoder_folder=None,
    )
    return stock


@pytest.mark.parametrize("scales", [(1.0, 1.0), (0.7, 0.3), (0.0, 1.0)])
def test_stock_diffusers_unet_matches_metamergen(mg, tmp_path, scales) -> None:
    save_ip_adapter(mg.adapters, tmp_path)
    stock = _stock_pipeline(mg, tmp_path)
    assert mg.unet.config.encoder_hid_dim_type is None  # the loader changed only the copy
    procs = [p for n, p in stock.unet.attn_processors.items() if n.endswith("attn2.processor")]
    assert len(procs) == len(mg.adapters.config.layer_names)
    assert all(isinstance(p, IPAdapterAttnProcessor2_0) and len(p.to_k_ip) == 2 for p in procs)

    g = torch.Generator().manual_seed(2)
    fov = torch.randn(*TOKENS, generator=g)
    per = torch.randn(*TOKENS, generator=g)
    fov[1] = 0.0  # MetamerGen's unconditional/dropped stream: zero tokens
    latents = torch.randn(2, 4, 16, 16, generator=g)
    text = torch.randn(2, 77, mg.unet.config.cross_attention_dim, generator=g)
    t = torch.tensor(500)

    a, b = scales
    stock.set_ip_adapter_scale([a, b])
    try:
        mg.adapters.set_scale(mg.unet, a, b)
        with torch.no_grad():
            ours = mg.unet(latents, t, encoder_hidden_states=(text, mg.adapters.project(fov, per))).sample
            theirs = stock.unet(
                latents, t, encoder_hidden_states=text, added_cond_kwargs={"image_embeds": [fov[:, None], per[:, None]]}
            ).sample
            plain = stock.unet(
                latents,
                t,
                encoder_hidden_states=text,
                added_cond_kwargs={"image_embeds": [torch.zeros_like(fov[:, None]), per[:, None]]},
            ).sample
    finally:
        mg.adapters.set_scale(mg.unet, 1.0, 1.0)
    max_diff = (ours - theirs).abs().max().item()
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0), f"max |diff| = {max_diff:.3e}"
    if a > 0:  # the foveal tokens of sample 0 matter, so the comparison is not vacuous
        assert (theirs[0] - plain[0]).abs().max() > 1e-3
        assert torch.allclose(theirs[1], plain[1], atol=1e-6)  # sample 1's foveal tokens were zero already


def test_stock_pipeline_runs_with_precomputed_tokens_and_cfg(mg, tmp_path) -> None:
    """The documented user path: ``ip_adapter_image_embeds`` = [negative (zeros); positive] per stream."""
    save_ip_adapter(mg.adapters, tmp_path)
    stock = _stock_pipeline(mg, tmp_path)
    stock.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(4)
    fov, per = torch.randn(1, 64, 48, generator=g), torch.randn(1, 64, 48, generator=g)

    def run(foveal: torch.Tensor) -> torch.Tensor:
        embeds = [torch.cat([torch.zeros_like(x), x])[:, None] for x in (foveal, per)]  # [2, 1, T, D]
        return stock(
            "",
            height=32,
            width=32,
            num_inference_steps=2,
            guidance_scale=3.0,
            output_type="pt",
            ip_adapter_image_embeds=embeds,
            generator=torch.Generator().manual_seed(0),
        ).images

    images = run(fov)
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()
    assert not torch.allclose(images, run(torch.zeros_like(fov)))


# ---------------------------------------------------------------- refusal and files


@pytest.mark.parametrize(
    "config, word",
    [
        ({"resampler_depth": 2}, r"resampler_depth=2 \(must be 4\)"),
        ({"resampler_dim_head": 32, "resampler_heads": 2}, r"resampler_dim_head=32 \(must be 64\)"),
        ({"resampler_ffn_ratio": 2.0}, r"resampler_ffn_ratio=2\.0 \(must be 4\)"),
    ],
)
def test_export_refuses_shapes_diffusers_cannot_rebuild(mg, tmp_path, config, word) -> None:
    base = dict(image_embed_dim=48, num_tokens=4, resampler_hidden_dim=64, resampler_heads=1, resampler_dim_head=64)
    adapters = MetamerGenAdapters.from_unet(mg.unet, **{**base, **config})
    with pytest.raises(ValueError, match=rf"cannot be exported to the IP-Adapter format.*{word}"):
        to_ip_adapter_state_dicts(adapters)
    with pytest.raises(ValueError, match=word):
        save_ip_adapter(adapters, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_export_allows_width_other_than_heads_times_64(mg) -> None:
    """diffusers reads the width from ``latents`` and heads from to_q rows // 64: width 96, 1 head loads exactly."""
    adapters = MetamerGenAdapters.from_unet(
        mg.unet, image_embed_dim=48, num_tokens=4, resampler_hidden_dim=96, resampler_heads=1, resampler_dim_head=64
    )
    proj = to_ip_adapter_state_dicts(adapters)["foveal"]["image_proj"]
    rebuilt = mg.unet._convert_ip_adapter_image_proj_to_diffusers(proj, low_cpu_mem_usage=False)
    x = torch.randn(*TOKENS, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), adapters.foveal_resampler(x))


def test_save_writes_exactly_two_files_atomically(mg, tmp_path) -> None:
    folder = tmp_path / "new" / "export"
    paths = save_ip_adapter(mg.adapters, folder)
    assert paths == [folder / FOVEAL_WEIGHT_NAME, folder / PERIPHERAL_WEIGHT_NAME]
    assert sorted(os.listdir(folder)) == sorted([FOVEAL_WEIGHT_NAME, PERIPHERAL_WEIGHT_NAME])
    first = {p: p.read_bytes() for p in paths}
    # Overwriting in place leaves no temporary files either, and the contents are deterministic.
    save_ip_adapter(mg.adapters, folder)
    assert sorted(os.listdir(folder)) == sorted([FOVEAL_WEIGHT_NAME, PERIPHERAL_WEIGHT_NAME])
    assert all(p.read_bytes() == first[p] for p in paths)
    flat = load_file(paths[0])
    assert all(k.startswith(("image_proj.", "ip_adapter.")) for k in flat)


def test_failed_write_keeps_old_files_and_leaves_no_temporary_file(mg, tmp_path, monkeypatch) -> None:
    paths = save_ip_adapter(mg.adapters, tmp_path)
    old = {p: p.read_bytes() for p in paths}
    torch.manual_seed(11)
    other = tiny_adapters(mg.unet)  # different weights: a completed write would change the bytes

    def boom(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)  # fails after the bytes went to the temporary file
    with pytest.raises(OSError, match="disk full"):
        save_ip_adapter(other, tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted([FOVEAL_WEIGHT_NAME, PERIPHERAL_WEIGHT_NAME])
    assert all(p.read_bytes() == old[p] for p in paths)

    monkeypatch.undo()
    empty = tmp_path / "empty"

    def no_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(OSError, match="disk full"):
        save_ip_adapter(mg.adapters, empty)
    assert os.listdir(empty) == []
