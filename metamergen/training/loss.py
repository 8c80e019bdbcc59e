"""The adapter training objective, in public pieces the loop assembles.

One micro-batch goes through three steps, each a function so that tests, benchmarks and users'
own loops can call them:

1. :func:`encode_batch`: the frozen parts: VAE latents and the sharp and peripheral DINOv2 tokens
   (computed now, or read from the feature cache);
2. :func:`drop_conditions`: the foveal mask applied (:func:`~metamergen.foveation.mask_tokens`) and
   each stream's condition dropped independently by **zeroing its tokens** (never by scale 0, so
   every trainable parameter is used in every step and DDP needs no ``find_unused_parameters``),
   optionally both together with an extra probability (``optim.joint_dropout``, off by default);
3. :func:`adapter_loss`: noise, timesteps, the prediction and the paper's epsilon-prediction MSE
   (fp32; optional min-SNR weighting and extra weight under the fixated patches).

Random draws come from one generator in a fixed order (latent sample, dropout, noise, timesteps),
so a step is a pure function of its seed: that is what makes resumed training equal an
uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metamergen.encoders.dinov2 import patch_tokens
from metamergen.foveation.fovea import mask_tokens, token_weight_map
from metamergen.foveation.periphery import peripheral_image
from metamergen.training.config import OptimConfig

__all__ = ["EncodedBatch", "adapter_loss", "drop_conditions", "encode_batch"]


@dataclass
class EncodedBatch:
    """A micro-batch after the frozen encoders.

    Attributes
    ----------
    latents
        ``(B, 4, h, w)`` VAE latents, already multiplied by the VAE's scaling factor.
    sharp, peripheral
        ``(B, T, D)`` DINOv2 patch tokens of the sharp and the degraded canvas.
    foveal_mask
        ``(B, T)`` bool: the patches the foveal stream keeps.
    """

    latents: torch.Tensor
    sharp: torch.Tensor
    peripheral: torch.Tensor
    foveal_mask: torch.Tensor


@torch.no_grad()
def encode_batch(
    pipe: Any, batch: Mapping[str, torch.Tensor], *, generator: torch.Generator, dtype: torch.dtype
) -> EncodedBatch:
    """Run (or read from the feature cache) the frozen VAE and DINOv2 for one collated micro-batch.

    Parameters
    ----------
    pipe
        The :class:`~metamergen.pipeline.MetamerGenPipeline` being trained (its VAE and encoder).
    batch
        From :func:`metamergen.training.data.collate`: ``pixel_values`` ``(B, 3, R, R)`` in [-1, 1],
        ``encoder_pixels`` ``(B, 3, S, S)`` normalised canvas, ``blur`` ``(B,)`` down/up scales,
        ``foveal_mask`` ``(B, T)``; or, from the feature cache, ``latent_mean`` / ``latent_std``
        (VAE posterior) and ``sharp`` / ``peripheral`` tokens instead of the pixels.
    generator
        Draws the VAE posterior sample.
    dtype
        The frozen models' dtype (the run's mixed precision).
    """
    device = pipe.unet.device
    blur = batch["blur"]
    if "latent_mean" in batch:  # feature cache: sample the cached posterior, tokens as stored
        mean, std = batch["latent_mean"].to(device, dtype), batch["latent_std"].to(device, dtype)
        latents = mean + std * torch.randn(mean.shape, generator=generator, device=device, dtype=mean.dtype)
        latents = latents * pipe.vae.config.scaling_factor
        sharp = batch["sharp"].to(device, dtype)
        peripheral = batch["peripheral"].to(device, dtype)
    else:
        pixels = batch["pixel_values"].to(device, dtype)
        canvas = batch["encoder_pixels"].to(device, dtype)
        latents = pipe.vae.encode(pixels).latent_dist.sample(generator=generator) * pipe.vae.config.scaling_factor
        sharp = patch_tokens(pipe.image_encoder, canvas)
        degraded = torch.empty_like(canvas)
        for s in blur.unique().tolist():  # one down/up per blur level present in the batch
            idx = (blur == s).nonzero().ravel().to(device)
            degraded[idx] = peripheral_image(canvas[idx], s)
        peripheral = patch_tokens(pipe.image_encoder, degraded)
    return EncodedBatch(
        latents=latents, sharp=sharp, peripheral=peripheral, foveal_mask=batch["foveal_mask"].to(device)
    )


def drop_conditions(
    encoded: EncodedBatch,
    *,
    foveal_dropout: float,
    peripheral_dropout: float,
    generator: torch.Generator,
    joint_dropout: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two streams' resampler inputs, each dropped independently by zeroing (fp32).

    Parameters
    ----------
    encoded
        From :func:`encode_batch`.
    foveal_dropout, peripheral_dropout
        Probability of zeroing a sample's foveal / peripheral stream, drawn independently (paper:
        0.05 / 0.10).
    generator
        Draws the decisions: foveal, then peripheral, then (only when ``joint_dropout > 0``) joint,
        so that the paper's recipe draws exactly what it drew before the joint option existed.
    joint_dropout
        Extra probability of zeroing both streams of a sample together, on top of the independent
        draws (not in the paper; 0 = off). Both streams dropped is the unconditional state CFG++
        renoises with; a sample reaches it with ``p_j + (1 - p_j) * p_f * p_p``.

    Returns
    -------
    foveal, peripheral
        ``(B, T, D)`` float32: masked sharp tokens and peripheral tokens, a sample's stream all zero
        when dropped.
    """
    for name, p in (
        ("foveal_dropout", foveal_dropout),
        ("peripheral_dropout", peripheral_dropout),
        ("joint_dropout", joint_dropout),
    ):
        if not 0 <= p <= 1:
            raise ValueError(f"optim.{name} is a probability and must be in [0, 1], got {p}.")
    b = encoded.latents.shape[0]
    device = encoded.latents.device
    foveal = mask_tokens(encoded.sharp, encoded.foveal_mask)
    keep_f = (torch.rand(b, generator=generator, device=device) >= foveal_dropout).view(b, 1, 1)
    keep_p = (torch.rand(b, generator=generator, device=device) >= peripheral_dropout).view(b, 1, 1)
    if joint_dropout > 0:  # drawn only when on: the paper's recipe keeps its random stream
        keep_both = (torch.rand(b, generator=generator, device=device) >= joint_dropout).view(b, 1, 1)
        keep_f, keep_p = keep_f & keep_both, keep_p & keep_both
    return (foveal * keep_f).float(), (encoded.peripheral * keep_p).float()


def adapter_loss(
    model: nn.Module,
    noise_scheduler: Any,
    encoded: EncodedBatch,
    text_embeds: torch.Tensor,
    optim: OptimConfig,
    *,
    generator: torch.Generator,
    compute_snr: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The training loss of one micro-batch: condition dropout, noising, prediction, MSE (fp32).

    Parameters
    ----------
    model
        Maps ``(noisy_latents, timesteps, text_embeds, foveal, peripheral)`` to a prediction
        (:class:`~metamergen.training.trainer.AdapterTrainingModel`).
    noise_scheduler
        The training noise scheduler (DDPM), epsilon or v-prediction.
    encoded
        From :func:`encode_batch`.
    text_embeds
        ``(1, L, D)`` text embeddings (the empty prompt's), expanded over the batch.
    optim
        Dropout probabilities (per stream and joint), timestep range, noise offset, min-SNR gamma
        and the weight under the foveal stream's patches (``foveal_loss_weight``; each sample's
        weighted MSE is divided by its mean weight, so the loss stays on the plain MSE's scale).
    generator
        Draws dropout, noise and timesteps, in that order.
    compute_snr
        diffusers' ``training_utils.compute_snr``; needed only with ``optim.snr_gamma``.

    Returns
    -------
    torch.Tensor
        Scalar float32 loss.
    """
    g = generator
    latents = encoded.latents
    b, device = latents.shape[0], latents.device
    foveal, peripheral = drop_conditions(
        encoded,
        foveal_dropout=optim.foveal_dropout,
        peripheral_dropout=optim.peripheral_dropout,
        joint_dropout=optim.joint_dropout,
        generator=g,
    )
    noise = torch.randn(latents.shape, generator=g, device=device, dtype=latents.dtype)
    if optim.noise_offset:
        noise = noise + optim.noise_offset * torch.randn(
            (b, latents.shape[1], 1, 1), generator=g, device=device, dtype=latents.dtype
        )
    t_max = optim.max_timestep or noise_scheduler.config.num_train_timesteps
    t = torch.randint(optim.min_timestep, t_max, (b,), generator=g, device=device).long()
    noisy = noise_scheduler.add_noise(latents, noise, t)
    v_prediction = noise_scheduler.config.prediction_type == "v_prediction"
    target = noise_scheduler.get_velocity(latents, noise, t) if v_prediction else noise
    pred = model(noisy, t, text_embeds.expand(b, -1, -1), foveal, peripheral)
    weighted = optim.foveal_loss_weight != 1.0
    if optim.snr_gamma is None and not weighted:
        return F.mse_loss(pred.float(), target.float())
    squared = F.mse_loss(pred.float(), target.float(), reduction="none")
    if weighted:
        # weigh the cells under the patches the foveal stream shows (not when the stream was dropped)
        shown = encoded.foveal_mask.reshape(b, -1).to(device) & foveal.ne(0).any(-1)
        cells = token_weight_map(shown, tuple(latents.shape[-2:]), optim.foveal_loss_weight)
        per_sample = (squared * cells).mean(dim=(1, 2, 3)) / cells.mean(dim=(1, 2, 3))
    else:
        per_sample = squared.mean(dim=(1, 2, 3))
    if optim.snr_gamma is None:
        return per_sample.mean()
    if compute_snr is None:
        from diffusers.training_utils import compute_snr
    snr = compute_snr(noise_scheduler, t)
    weights = torch.minimum(snr, torch.full_like(snr, optim.snr_gamma)) / snr
    if v_prediction:
        weights = weights * snr / (snr + 1)
    return (per_sample * weights).mean()
