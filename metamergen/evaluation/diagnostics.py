"""Does a trained model use its conditioning? One-step reconstructions from own vs other tokens.

A lower noise-prediction loss alone does not show that the adapters carry the scene: a base
UNet can predict the noise of simple scenes from the noisy latent itself. The check here noises
each scene's latent, predicts it back in one step from that scene's own foveal and peripheral
tokens, and again from another scene's tokens (a cyclic shift of the batch), with the same
noise. If the adapters carry the scene, the own-token estimate is closer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from metamergen.defaults import PERIPHERAL_BLUR
from metamergen.training.data import vae_pixels

__all__ = ["conditioning_reconstruction"]


@torch.no_grad()
def conditioning_reconstruction(
    pipe: Any,
    images: Sequence[Image.Image],
    fixations: Sequence[Sequence[Sequence[float]]],
    *,
    timesteps: Sequence[int] = (500, 700, 900),
    peripheral_blur: float = PERIPHERAL_BLUR,
    resolution: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Latent error of one-step ``x0`` estimates from each scene's own vs another scene's tokens.

    Parameters
    ----------
    pipe
        A :class:`~metamergen.pipeline.MetamerGenPipeline`.
    images
        ``n >= 2`` scenes; scene ``i`` is also conditioned on the tokens of scene ``(i + 1) % n``.
    fixations
        One fixation list per scene, ``(x, y)`` in pixels of that scene's image.
    timesteps
        Noise levels (DDPM steps of the 1000-step schedule); errors are averaged over them.
    peripheral_blur
        Down/up scale of the peripheral stream.
    resolution
        VAE input side in pixels (images squashed to a square, as in training); default the
        UNet's native ``sample_size * vae_scale_factor``.
    seed
        Seed of the noise (the same noise for own and other tokens).

    Returns
    -------
    dict
        ``own`` and ``other``: mean squared error between estimated and true scaled latents,
        averaged over scenes and ``timesteps``; ``own_per_scene`` / ``other_per_scene``: ``(n,)``
        lists; ``own_better``: share of scenes whose own-token error is lower.
    """
    from diffusers import DDPMScheduler

    n = len(images)
    if n < 2 or len(fixations) != n:
        raise ValueError(f"Need >= 2 images and one fixation list per image; got {n} images, {len(fixations)} lists.")
    res = resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    device, dtype = pipe.unet.device, pipe.unet.dtype
    scene = pipe.encode_scene(list(images), peripheral_blur=peripheral_blur)
    masks, _, _ = pipe.foveal_masks(scene, [np.asarray(f, dtype=float).reshape(-1, 2) for f in fixations])
    sharp = scene.sharp.to(device=device, dtype=pipe.adapters.dtype)
    foveal = sharp * masks.flatten(1)[..., None].to(sharp)
    peripheral = scene.peripheral.to(device=device, dtype=pipe.adapters.dtype)
    pixels = torch.stack([vae_pixels(im.convert("RGB"), res) for im in images]).to(device=device, dtype=pipe.vae.dtype)
    z = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
    text = pipe.encode_prompt([""] * n, device).to(dtype)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(seed)
    noises = [torch.randn(z.shape, generator=generator).to(device=device, dtype=z.dtype) for _ in timesteps]
    errors = {}
    for name, perm in (("own", torch.arange(n)), ("other", torch.arange(n).roll(-1))):
        hidden = (text, [h.to(dtype) for h in pipe.adapters.project(foveal[perm], peripheral[perm])])
        total = torch.zeros(n, device=device)
        for t, noise in zip(timesteps, noises):
            tt = torch.full((n,), int(t), device=device, dtype=torch.long)
            noisy = noise_scheduler.add_noise(z, noise, tt)
            with pipe.adapters.scaled(pipe.unet, 1.0, 1.0):  # the scales the adapters were trained at
                eps = pipe.unet(noisy, tt, encoder_hidden_states=hidden).sample
            a = noise_scheduler.alphas_cumprod[int(t)].to(device)
            x0 = (noisy - (1 - a).sqrt() * eps) / a.sqrt()
            total += ((x0 - z) ** 2).float().mean(dim=(1, 2, 3))
        errors[name] = (total / len(timesteps)).cpu().numpy()
    return {
        "own": float(errors["own"].mean()),
        "other": float(errors["other"].mean()),
        "own_per_scene": errors["own"].tolist(),
        "other_per_scene": errors["other"].tolist(),
        "own_better": float((errors["own"] < errors["other"]).mean()),
    }
