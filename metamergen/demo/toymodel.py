"""The demo model's components and its two base stages, trained on :mod:`metamergen.demo.toyworld`.

The paper starts from Stable Diffusion 1.5: a VAE and a *text-conditioned* UNet, both trained
long before the adapters. The bundled demo model follows that recipe at toy scale:

1. :func:`train_vae` trains a small VAE (factor 4: a 64-px scene becomes a 16 x 16 x 4 latent) to
   reconstruct toy scenes; its ``scaling_factor`` is then set to ``1 / std`` of the training
   latents, as SD's was.
2. :func:`train_base_unet` trains a small UNet *with its text encoder* on scene captions
   (:func:`scene_caption`, e.g. ``"horizon 5, cream wall, soil floor, tile door 2,3: blue cross 6,1"``:
   what is in the scene and in which cell of an 8 x 8 grid), dropping the caption for 10 % of
   samples so that the empty prompt is the unconditional model. The caption is what makes the
   UNet *listen* through cross-attention, as SD's does; the adapters later speak to it through the
   same attention layers.
3. :func:`train_image_encoder` trains the small DINOv2 self-supervised on the same scenes, so that
   each patch token says what its patch shows and where it is (a pretrained DINOv2's two
   properties that a random one lacks), then freezes it.
4. The adapters are trained by the project's own ``training/train.py`` on the frozen result
   (``configs/demo_toyworld.yaml``); ``training/build_demo_model.py`` runs all the stages.

Why stage 2 needs captions: adapters trained on a UNet that only ever saw a constant context
learn to lower the noise-prediction loss, yet reconstruct a scene equally well from its own
tokens and from another scene's (what the project's first learning test found): such a UNet never
learned to take content from cross-attention, and the frozen layers after it cannot start to.
Why the captions say *where*: a base whose captions named objects but not places learned to put
them anywhere, and adapters trained on it carried the scene's colours but not its layout (renders
scored worse than a flat image of the scene's mean colour).

Everything is built from configs; every random draw is seeded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from PIL import Image
from tqdm.auto import tqdm
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
)

from metamergen.adapters.model import MetamerGenAdapters
from metamergen.defaults import BLUR_LEVELS
from metamergen.encoders.dinov2 import dinov2_processor
from metamergen.pipeline.pipeline_metamergen import MetamerGenPipeline
from metamergen.testing import byte_level_tokenizer, sd15_ddim_scheduler

__all__ = [
    "DemoModelConfig",
    "build_tokenizer",
    "build_text_encoder",
    "build_vae",
    "build_unet",
    "build_image_encoder",
    "build_scheduler",
    "fresh_adapters",
    "assemble_pipeline",
    "scene_caption",
    "images_to_tensor",
    "train_vae",
    "encode_latents",
    "train_base_unet",
    "train_image_encoder",
]


@dataclass
class DemoModelConfig:
    """Shapes of the demo model (all sizes in pixels of the 64-px toy scene unless stated).

    ==================  ==========================  ==================================
    component           real (paper)                demo
    ==================  ==========================  ==================================
    VAE                 SD1.5, factor 8             3 levels (32, 64, 64), factor 4
    UNet                SD1.5, cross-attn 768       2 levels (64, 128), cross-attn 64
    text encoder        CLIP ViT-L/14 text          byte-level, 2 layers, width 64
    DINOv2              ViT-B/14-reg, 448 px        toy-trained, 2 layers, width 96, 112 px
    token grid          32 x 32                     8 x 8 (8 scene px per patch)
    resamplers          32 tokens, 768 wide         16 tokens, 64 wide, depth 4
    ==================  ==========================  ==================================
    """

    image_size: int = 64
    vae_channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (64, 128)
    unet_layers_per_block: int = 1
    cross_attention_dim: int = 64
    text_layers: int = 2
    text_max_length: int = 192
    encoder_resolution: int = 112
    encoder_width: int = 96
    encoder_layers: int = 2
    #: Factor on the random encoder's patch position embeddings (1 = as initialised). A trained
    #: DINOv2's tokens say both what a patch shows and where it is; a random one's mostly what.
    encoder_position_scale: float = 1.0
    num_tokens: int = 16
    resampler_hidden_dim: int = 64
    #: Leave the fovea's zero tokens out of the resamplers' keys (MetamerGenAdapters.mask_empty_tokens):
    #: with them in, 2-5 fixated tokens among 64 moved the foveal resampler's output by 0.4 %.
    mask_empty_tokens: bool = True

    @property
    def latent_size(self) -> int:
        """Latent side: ``image_size / 2 ** (len(vae_channels) - 1)``."""
        return self.image_size // 2 ** (len(self.vae_channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.__dict__))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DemoModelConfig:
        d = dict(data)
        for k in ("vae_channels", "unet_channels"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


# ---------------------------------------------------------------------------------- components


def build_text_encoder(tokenizer: CLIPTokenizer, config: DemoModelConfig) -> CLIPTextModel:
    """A small CLIP text encoder whose width equals the UNet's cross-attention width."""
    vocab = tokenizer.get_vocab()
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=config.cross_attention_dim,
            intermediate_size=4 * config.cross_attention_dim,
            num_hidden_layers=config.text_layers,
            num_attention_heads=4,
            max_position_embeddings=config.text_max_length,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
    )


def build_vae(config: DemoModelConfig) -> AutoencoderKL:
    """The demo VAE: ``len(vae_channels)`` levels, ``latent_channels`` latent channels."""
    n = len(config.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(config.vae_channels),
        layers_per_block=1,
        latent_channels=config.latent_channels,
        norm_num_groups=16,
        sample_size=config.image_size,
    )


def build_unet(config: DemoModelConfig) -> UNet2DConditionModel:
    """The demo UNet: cross-attention at every level, native latent ``config.latent_size``."""
    n = len(config.unet_channels)
    return UNet2DConditionModel(
        sample_size=config.latent_size,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        block_out_channels=tuple(config.unet_channels),
        layers_per_block=config.unet_layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n,
        cross_attention_dim=config.cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def build_image_encoder(config: DemoModelConfig) -> Dinov2WithRegistersModel:
    """A random DINOv2 with registers (patch 14, ``encoder_resolution / 14`` tokens a side), its
    patch position embeddings multiplied by ``config.encoder_position_scale``."""
    encoder = Dinov2WithRegistersModel(
        Dinov2WithRegistersConfig(
            image_size=config.encoder_resolution,
            patch_size=14,
            hidden_size=config.encoder_width,
            num_hidden_layers=config.encoder_layers,
            num_attention_heads=4,
            intermediate_size=2 * config.encoder_width,
            num_register_tokens=4,
        )
    ).eval()
    if config.encoder_position_scale != 1.0:
        with torch.no_grad():  # index 0 is the CLS token's embedding; the rest are the patches'
            encoder.embeddings.position_embeddings[:, 1:] *= float(config.encoder_position_scale)
    return encoder


def fresh_adapters(unet: UNet2DConditionModel, config: DemoModelConfig) -> MetamerGenAdapters:
    """New demo adapters for ``unet`` (K/V copied from its text K/V, as the paper).

    The resampler keeps depth 4 and one 64-wide head so that the IP-Adapter export round-trips.
    """
    return MetamerGenAdapters.from_unet(
        unet,
        image_embed_dim=config.encoder_width,
        num_tokens=config.num_tokens,
        resampler_hidden_dim=config.resampler_hidden_dim,
        resampler_depth=4,
        resampler_heads=1,
        resampler_dim_head=64,
        mask_empty_tokens=config.mask_empty_tokens,
    )


def assemble_pipeline(
    *,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    unet: UNet2DConditionModel,
    image_encoder: Dinov2WithRegistersModel,
    config: DemoModelConfig,
) -> MetamerGenPipeline:
    """A :class:`~metamergen.pipeline.MetamerGenPipeline` of the given parts with fresh adapters.

    Processors installed on ``unet`` are replaced by plain ones first, so the frozen parts of a
    trained demo model can be given new, untrained adapters.
    """
    unet.set_attn_processor(AttnProcessor2_0())
    return MetamerGenPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_scheduler(),
        image_encoder=image_encoder,
        feature_extractor=dinov2_processor(config.encoder_resolution),
        adapters=fresh_adapters(unet, config),
    )


# ---------------------------------------------------------------------------------- captions


def _cell(box: Sequence[float], size: int, grid: int) -> str:
    """``"col,row"`` of a box's centre on a ``grid`` x ``grid`` partition of a ``size``-px scene."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return f"{min(grid - 1, int(cx * grid / size))},{min(grid - 1, int(cy * grid / size))}"


def scene_caption(layout: Mapping[str, Any], objects: Sequence[Any], *, size: int = 64, grid: int = 8) -> str:
    """A short caption: the horizon, the layout regions and each object, with where they are.

    ``objects`` are :class:`~metamergen.demo.toyworld.ToyObject` or their dicts (``objects.jsonl``).
    Places are ``col,row`` cells of a ``grid`` x ``grid`` partition of the ``size``-px scene
    (8 x 8 is the demo encoder's patch grid). Example:
    ``"horizon 5, cream wall, soil floor, tile door 2,3: blue cross 6,1, yellow circle 3,3"``.

    Why places: SD knows "on the left" from its captions, and that is what lets image adapters
    steer *where* things go; a base trained on captions without places learns to put objects
    anywhere, and the adapters trained on it cannot move them.
    """
    regions = []
    for r in layout["regions"]:
        big = r["name"] in ("wall", "floor", "sky", "ground")
        regions.append(f"{r['colour']} {r['name']}" + ("" if big else f" {_cell(r['box'], size, grid)}"))
    horizon = min(grid - 1, int(layout["horizon"] * grid / size))

    def field(o: Any, k: str) -> Any:
        return o[k] if isinstance(o, Mapping) else getattr(o, k)

    things = ", ".join(
        f"{field(o, 'colour')} {field(o, 'shape')} {_cell(field(o, 'box'), size, grid)}" for o in objects
    )
    return f"horizon {horizon}, " + ", ".join(regions) + f": {things}"


# ---------------------------------------------------------------------------------- training


def images_to_tensor(images: Sequence[Image.Image], resolution: int = 64) -> torch.Tensor:
    """RGB images -> ``(N, 3, R, R)`` float tensor in ``[-1, 1]``, exactly the trainer's VAE input
    (:func:`metamergen.training.data.vae_pixels`: squashed to ``resolution`` px, a no-op at 64)."""
    from metamergen.training.data import vae_pixels

    return torch.stack([vae_pixels(im.convert("RGB"), resolution) for im in images])


def _cosine_schedule(opt: torch.optim.Optimizer, steps: int, warmup: int = 50) -> torch.optim.lr_scheduler.LambdaLR:
    # Not diffusers' get_cosine_schedule_with_warmup: its warm-up starts at lr 0, this one at
    # lr / warmup, and the bundled model was trained with this one (rebuilds must match it).
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _crops(
    pixels: torch.Tensor, boxes: Sequence[Sequence[Sequence[float]]] | None, n: int, size: int, g: torch.Generator
) -> torch.Tensor:
    """``n`` random ``size``-px crops of ``pixels``; with ``boxes``, half of them centred on an object."""
    N, _, H, W = pixels.shape
    idx = torch.randint(0, N, (n,), generator=g).tolist()
    out = []
    for j, i in enumerate(idx):
        if boxes is not None and boxes[i] and j % 2 == 0:
            x0, y0, x1, y1 = boxes[i][int(torch.randint(0, len(boxes[i]), (1,), generator=g))]
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            jitter = torch.randint(-size // 4, size // 4 + 1, (2,), generator=g).tolist()
            left = int(min(max(cx - size / 2 + jitter[0], 0), W - size))
            top = int(min(max(cy - size / 2 + jitter[1], 0), H - size))
        else:
            left = int(torch.randint(0, W - size + 1, (1,), generator=g))
            top = int(torch.randint(0, H - size + 1, (1,), generator=g))
        out.append(pixels[i, :, top : top + size, left : left + size])
    return torch.stack(out)


def train_vae(
    vae: AutoencoderKL,
    pixels: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 32,
    crop: int = 32,
    boxes: Sequence[Sequence[Sequence[float]]] | None = None,
    learning_rate: float = 2e-3,
    kl_weight: float = 1e-6,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Train ``vae`` in place to reconstruct ``pixels`` ``(N, 3, H, W)`` in ``[-1, 1]``.

    The VAE is convolutional, so it trains on ``crop``-px crops (4x cheaper than whole 64-px
    scenes); with ``boxes`` (per image, object boxes ``(x0, y0, x1, y1)`` in its pixels) half the
    crops are centred near an object, because small objects are a few percent of the pixels but
    all of what the fovea is about. Loss: L1 + MSE on the reconstruction of a posterior sample,
    plus ``kl_weight`` times the KL to N(0, 1) (SD's VAE used a tiny KL weight too; no perceptual
    or adversarial term, which flat-coloured toy scenes do not need). Cosine learning rate with a
    50-step linear warm-up. ``progress`` shows a progress bar. Afterwards ``vae.config.scaling_factor`` is set to ``1 / std`` of the latent
    means of ``pixels`` (SD's 0.18215 was found the same way).

    Returns ``{"l1": mean L1 of the last 50 crops' steps, "l1_full": mean L1 on the first 128
    whole images, "scaling_factor": ...}``.
    """
    g = torch.Generator().manual_seed(seed)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=learning_rate, weight_decay=0.0)
    sched = _cosine_schedule(opt, steps)
    recent: list[float] = []
    bar = tqdm(range(steps), desc="vae", disable=not progress)
    for step in bar:
        x = _crops(pixels, boxes, batch_size, min(crop, pixels.shape[-1]), g)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        rec = vae.decode(z).sample
        l1 = (rec - x).abs().mean()
        loss = l1 + F.mse_loss(rec, x) + kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        recent = (recent + [l1.item()])[-50:]
        if step % 50 == 0:
            bar.set_postfix(l1=f"{np.mean(recent):.4f}")
    vae.eval()
    with torch.no_grad():
        means = torch.cat([vae.encode(pixels[i : i + 64]).latent_dist.mean for i in range(0, len(pixels), 64)])
        l1_full = (vae.decode(means[:128]).sample - pixels[:128]).abs().mean()
    scaling = float(1.0 / means.std())
    vae.register_to_config(scaling_factor=scaling)
    return {"l1": float(np.mean(recent)), "l1_full": float(l1_full), "scaling_factor": scaling}


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, pixels: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Scaled latent means ``(N, 4, h, w)`` of ``pixels`` (``vae.config.scaling_factor`` applied)."""
    out = [vae.encode(pixels[i : i + batch_size]).latent_dist.mean for i in range(0, len(pixels), batch_size)]
    return torch.cat(out) * vae.config.scaling_factor


def _tokenize(tokenizer: CLIPTokenizer, captions: Sequence[str]) -> torch.Tensor:
    return tokenizer(
        list(captions),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def train_base_unet(
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    latents: torch.Tensor,
    captions: Sequence[str],
    *,
    steps: int,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    caption_dropout: float = 0.1,
    ema_decay: float = 0.999,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Train ``unet`` and ``text_encoder`` in place: text-to-image ε-prediction on toy scenes.

    ``latents`` ``(N, 4, h, w)`` are scaled VAE latents (:func:`encode_latents`), ``captions`` the
    N matching captions. Timesteps uniform in [0, 1000) on SD1.5's schedule; a caption is replaced
    by ``""`` with probability ``caption_dropout`` (the unconditional model used by guidance and by
    the adapters' training). AdamW, cosine schedule with warm-up, gradient-norm clip 1. The weights left in
    the models are an exponential moving average (``ema_decay``, warmed up as ``min(decay,
    (1 + step) / (10 + step))``), which gives much cleaner samples than the last iterate, as in
    most diffusion training; ``ema_decay=0`` keeps the last iterate.

    Returns ``{"loss": mean loss over the last 50 steps}``.
    """
    if len(latents) != len(captions):
        raise ValueError(f"train_base_unet got {len(latents)} latents but {len(captions)} captions.")
    g = torch.Generator().manual_seed(seed)
    noise_scheduler = DDPMScheduler.from_config(build_scheduler().config)
    ids_all = _tokenize(tokenizer, captions)
    ids_empty = _tokenize(tokenizer, [""])[0]
    params = list(unet.parameters()) + list(text_encoder.parameters())
    unet.train()
    text_encoder.train()
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=1e-2)
    sched = _cosine_schedule(opt, steps)
    ema = [p.detach().clone() for p in params]
    recent: list[float] = []
    bar = tqdm(range(steps), desc="base unet", disable=not progress)
    for step in bar:
        idx = torch.randint(0, len(latents), (batch_size,), generator=g)
        z = latents[idx]
        ids = ids_all[idx].clone()
        drop = torch.rand(batch_size, generator=g) < caption_dropout
        ids[drop] = ids_empty
        noise = torch.randn(z.shape, generator=g)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch_size,), generator=g)
        text = text_encoder(ids)[0]
        pred = unet(noise_scheduler.add_noise(z, noise, t), t, encoder_hidden_states=text).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - min(ema_decay, (1 + step) / (10 + step)))
        recent = (recent + [loss.item()])[-50:]
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(recent):.4f}")
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    unet.eval()
    text_encoder.eval()
    return {"loss": float(np.mean(recent))}


def train_image_encoder(
    encoder: Dinov2WithRegistersModel,
    images: Sequence[Image.Image],
    *,
    steps: int,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    blur_levels: Sequence[float] = BLUR_LEVELS,
    position_weight: float = 0.1,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Train the demo's DINOv2 in place so that each patch token says what its patch shows and where.

    A pretrained DINOv2's patch tokens describe their patch and its surroundings and carry their
    place in the grid; a randomly initialised one's carry colour but hardly position (a linear
    probe finds the patch index of 7 % of sharp tokens), so foveal tokens could not tell the
    adapters *where* the fixated detail belongs. This self-supervised stand-in for DINOv2's
    pretraining gives the same two properties, and the encoder is frozen afterwards, as DINOv2 is.

    Each step takes ``batch_size`` scenes through the pipeline's own canvas path
    (:func:`~metamergen.encoders.dinov2.encoder_canvas`), degrades each canvas by a random level of
    ``blur_levels`` or keeps it sharp (half the samples: the foveal stream reads sharp tokens), and
    asks two linear heads on every patch token for (a) the canvas pixels of its patch (2x
    average-pooled) and of its 3 x 3 patch neighbourhood (6x pooled), MSE, and (b) its patch index,
    cross-entropy weighted by ``position_weight``. The heads are thrown away.

    Returns ``{"pixel_mse": ..., "position_accuracy": ...}`` over the last 50 steps.
    """
    from metamergen.encoders.dinov2 import encoder_canvas, patch_tokens
    from metamergen.foveation.periphery import peripheral_image

    patch = int(encoder.config.patch_size)
    processor = dinov2_processor(int(encoder.config.image_size))
    canvas, _ = encoder_canvas(processor, list(images), patch_size=patch)
    side = canvas.shape[-1] // patch
    n_tokens, width = side * side, int(encoder.config.hidden_size)
    own_dim = 3 * (patch // 2) ** 2
    heads = torch.nn.ModuleDict(
        {
            "own": torch.nn.Linear(width, own_dim),
            "near": torch.nn.Linear(width, own_dim),
            "pos": torch.nn.Linear(width, n_tokens),
        }
    )

    def targets(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (B, 3, S, S) canvas -> per patch, its own pixels and its 3 x 3 neighbourhood's, (B, T, own_dim) each
        half, B = patch // 2, x.shape[0]
        x2 = F.avg_pool2d(x, 2)
        own = F.unfold(x2, half, stride=half).transpose(1, 2)
        padded = F.pad(x2, (half,) * 4, mode="replicate")
        near = F.unfold(padded, 3 * half, stride=half)  # (B, 3 * (3 half)^2, T)
        near = near.view(B, 3, 3 * half, 3 * half, n_tokens).permute(0, 4, 1, 2, 3).flatten(0, 1)
        near = F.avg_pool2d(near, 3).reshape(B, n_tokens, own_dim)
        return own, near

    g = torch.Generator().manual_seed(seed)
    params = list(encoder.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=1e-2)
    sched = _cosine_schedule(opt, steps)
    encoder.train()
    positions = torch.arange(n_tokens).repeat(batch_size)
    recent: list[tuple[float, float]] = []
    bar = tqdm(range(steps), desc="image encoder", disable=not progress)
    for step in bar:
        idx = torch.randint(0, len(canvas), (batch_size,), generator=g)
        levels = torch.randint(0, len(blur_levels) * 2, (batch_size,), generator=g).tolist()
        x = torch.stack(
            [
                canvas[i] if lv >= len(blur_levels) else peripheral_image(canvas[i : i + 1], blur_levels[lv])[0]
                for i, lv in zip(idx.tolist(), levels)
            ]
        )
        tokens = patch_tokens(encoder, x)
        own, near = targets(x)
        pixel = F.mse_loss(heads["own"](tokens), own) + F.mse_loss(heads["near"](tokens), near)
        logits = heads["pos"](tokens).flatten(0, 1)
        loss = pixel + position_weight * F.cross_entropy(logits, positions)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        acc = (logits.argmax(-1) == positions).float().mean().item()
        recent = (recent + [(pixel.item(), acc)])[-50:]
        if step % 50 == 0:
            bar.set_postfix(
                pixel=f"{np.mean([r[0] for r in recent]):.4f}", pos=f"{np.mean([r[1] for r in recent]):.2f}"
            )
    encoder.eval().requires_grad_(False)
    return {
        "pixel_mse": float(np.mean([r[0] for r in recent])),
        "position_accuracy": float(np.mean([r[1] for r in recent])),
    }


def build_tokenizer(max_length: int = 128) -> CLIPTokenizer:
    """The demo's text tokenizer: byte-level CLIP (:func:`metamergen.testing.byte_level_tokenizer`), 128 tokens."""
    return byte_level_tokenizer(max_length)


def build_scheduler() -> DDIMScheduler:
    """The demo's scheduler: DDIM with SD1.5's noise schedule (:func:`metamergen.testing.sd15_ddim_scheduler`)."""
    return sd15_ddim_scheduler()
