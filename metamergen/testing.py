"""Tiny, randomly initialised MetamerGen components for tests, benchmarks and users' own tests.

Everything is built from configs, offline, in a fraction of a second on a CPU. The shapes mirror
the real model at toy scale:

==================  ==========================  ==================================
component           real (paper)                tiny
==================  ==========================  ==================================
DINOv2              ViT-B/14-reg, 448 px        2 layers, width 48, 4 registers, 112 px
token grid          32 x 32 = 1024 tokens       8 x 8 = 64 tokens
UNet                SD1.5, cross-attn 768       2 blocks (32, 64), cross-attn 32
VAE                 SD1.5, factor 8             2 blocks, factor 2
text encoder        CLIP ViT-L/14 text          2 layers, width 32, byte-level vocab
resamplers          768 wide, depth 4, 32 tok   64 wide, depth 4, 1 head of 64, 4 tokens
==================  ==========================  ==================================

The resampler keeps depth 4 / dim_head 64 / ffn ratio 4 so that the diffusers IP-Adapter export
round-trips exactly. A generated image is noise-like: the weights are random.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from metamergen.adapters.model import MetamerGenAdapters
from metamergen.encoders.dinov2 import dinov2_processor
from metamergen.pipeline.pipeline_metamergen import MetamerGenPipeline

__all__ = [
    "byte_level_tokenizer",
    "masked_tokens",
    "sd15_ddim_scheduler",
    "tiny_adapters",
    "tiny_image_encoder",
    "tiny_pipeline",
    "tiny_scheduler",
    "tiny_text_stack",
    "tiny_unet",
    "tiny_vae",
    "TINY_ENCODER_RESOLUTION",
]

#: Encoder canvas of the tiny pipeline, pixels (8 x 8 patches of 14 px).
TINY_ENCODER_RESOLUTION = 112


def byte_level_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """A byte-level CLIP tokenizer (one token per character, no merges).

    Built from files in a temporary folder because ``CLIPTokenizer`` reads its vocabulary from disk;
    ``save_pretrained`` then writes ordinary tokenizer files.
    """
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=max_length)


def sd15_ddim_scheduler() -> DDIMScheduler:
    """DDIM with SD1.5's noise schedule (scaled-linear betas 0.00085-0.012, 1000 steps)."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def tiny_text_stack() -> tuple[CLIPTokenizer, CLIPTextModel]:
    """A byte-level CLIP tokenizer (:func:`byte_level_tokenizer`, 77 tokens) and a
    2-layer CLIP text encoder of width 32."""
    tokenizer = byte_level_tokenizer(77)
    vocab = tokenizer.get_vocab()
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    return tokenizer, CLIPTextModel(config).eval()


def tiny_unet() -> UNet2DConditionModel:
    """A 2-level text-conditioned UNet (cross-attention width 32), native latent 16 x 16."""
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()


def tiny_vae() -> AutoencoderKL:
    """A 2-level VAE (downsampling factor 2, 4 latent channels)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    ).eval()


def tiny_image_encoder() -> Dinov2WithRegistersModel:
    """A 2-layer DINOv2 with 4 registers, width 48, patch 14 (8 x 8 grid at 112 px)."""
    config = Dinov2WithRegistersConfig(
        image_size=TINY_ENCODER_RESOLUTION,
        patch_size=14,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_register_tokens=4,
    )
    return Dinov2WithRegistersModel(config).eval()


def tiny_scheduler() -> DDIMScheduler:
    """DDIM with SD1.5's noise schedule settings (:func:`sd15_ddim_scheduler`)."""
    return sd15_ddim_scheduler()


def tiny_adapters(unet: UNet2DConditionModel, image_embed_dim: int = 48) -> MetamerGenAdapters:
    """Adapters for ``unet``: 4 tokens per stream, resampler width 64 (1 head of 64), depth 4."""
    return MetamerGenAdapters.from_unet(
        unet,
        image_embed_dim=image_embed_dim,
        num_tokens=4,
        resampler_hidden_dim=64,
        resampler_depth=4,
        resampler_heads=1,
        resampler_dim_head=64,
    )


def tiny_pipeline(seed: int = 0) -> MetamerGenPipeline:
    """A complete, randomly initialised MetamerGen pipeline, seeded (same seed, same weights)."""
    torch.manual_seed(seed)
    tokenizer, text_encoder = tiny_text_stack()
    unet = tiny_unet()
    encoder = tiny_image_encoder()
    adapters = tiny_adapters(unet, image_embed_dim=encoder.config.hidden_size)
    return MetamerGenPipeline(
        vae=tiny_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=tiny_scheduler(),
        image_encoder=encoder,
        feature_extractor=dinov2_processor(TINY_ENCODER_RESOLUTION),
        adapters=adapters.eval(),
    )


def masked_tokens(patches: list[int], seed: int = 0, batch: int = 2) -> torch.Tensor:
    """``(batch, 64, 48)`` foveal tokens of the tiny pipeline's 8 x 8 grid, random on ``patches`` (flat
    indices), zero elsewhere: what the fovea's token mask gives for fixations on those patches."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, 64, 1)
    mask[:, patches] = 1
    return torch.randn(batch, 64, 48, generator=g) * mask
