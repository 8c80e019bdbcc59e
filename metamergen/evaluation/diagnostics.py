"""Does a trained model use its conditioning? One-step reconstructions of noised scene latents.

A lower noise-prediction loss alone does not show that the adapters carry the scene: a base
UNet can predict the noise of simple scenes from the noisy latent itself. Both checks here noise
each scene's latent and predict it back in one step (the ``x0`` estimate), with the same noise
for every variant compared, so the differences are the conditioning's alone:

* :func:`conditioning_reconstruction`: the scene's own foveal and peripheral tokens vs another
  scene's (a cyclic shift of the batch). If the adapters carry the scene, own is closer.
* :func:`stream_contributions`: both streams, each alone, and neither, scored on the whole
  latent and on the latent cells under the fixated patches. If the foveal stream is used, the
  fixated cells are closer with both streams than with the periphery alone. It takes seconds
  where a rendered study takes minutes, which makes it the check to run during training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from metamergen.defaults import PERIPHERAL_BLUR
from metamergen.foveation.fovea import token_cells
from metamergen.training.data import vae_pixels

__all__ = ["conditioning_reconstruction", "stream_contributions"]


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


#: The conditions of :func:`stream_contributions`: which streams keep their tokens.
STREAM_CONDITIONS = {"both": (True, True), "foveal": (True, False), "peripheral": (False, True), "none": (False, False)}


@torch.no_grad()
def stream_contributions(
    pipe: Any,
    images: Sequence[Image.Image],
    fixations: Sequence[Sequence[Sequence[float]]],
    *,
    timesteps: Sequence[int] = (400, 600, 800),
    peripheral_blur: float = PERIPHERAL_BLUR,
    resolution: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """One-step ``x0`` errors with both streams, each alone and neither, overall and where fixated.

    A stream is left out by zeroing its tokens, the state condition dropout trains (not by scale
    0), and the adapters run at scale 1, as trained.

    Parameters
    ----------
    pipe
        A :class:`~metamergen.pipeline.MetamerGenPipeline`.
    images
        The scenes (``n >= 1``).
    fixations
        One fixation list per scene, ``(x, y)`` in pixels of that scene's image; each needs at
        least one fixation on the image.
    timesteps
        Noise levels (DDPM steps of the 1000-step schedule); errors are averaged over them.
    peripheral_blur
        Down/up scale of the peripheral stream.
    resolution
        VAE input side in pixels (images squashed to a square, as in training); default the
        UNet's native ``sample_size * vae_scale_factor``.
    seed
        Seed of the noise (the same noise for every condition).

    Returns
    -------
    dict
        For each condition in ``both``, ``foveal``, ``peripheral``, ``none``: ``{"whole": e,
        "fixated": e, "fixated_per_scene": [n]}``, mean squared error of the scaled latents over
        all cells and over the latent cells under the fixated patches (:func:`token_cells`).
        ``foveal_gain``: ``fixated`` error of ``peripheral`` minus ``both`` (> 0 = the fovea
        helps where it looked), with ``foveal_gain_per_scene`` and ``foveal_gain_share`` (the
        share of scenes where it is positive).
    """
    from diffusers import DDPMScheduler

    n = len(images)
    if n < 1 or len(fixations) != n:
        raise ValueError(f"Need >= 1 image and one fixation list per image; got {n} images, {len(fixations)} lists.")
    res = resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    device, dtype = pipe.unet.device, pipe.unet.dtype
    scene = pipe.encode_scene(list(images), peripheral_blur=peripheral_blur)
    masks, _, _ = pipe.foveal_masks(scene, [np.asarray(f, dtype=float).reshape(-1, 2) for f in fixations])
    if not masks.flatten(1).any(dim=1).all():
        raise ValueError("Every scene needs at least one fixation on the image: the fixated region is empty.")
    sharp = scene.sharp.to(device=device, dtype=pipe.adapters.dtype)
    foveal = sharp * masks.flatten(1)[..., None].to(sharp)
    peripheral = scene.peripheral.to(device=device, dtype=pipe.adapters.dtype)
    pixels = torch.stack([vae_pixels(im.convert("RGB"), res) for im in images]).to(device=device, dtype=pipe.vae.dtype)
    z = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
    cells = token_cells(masks.to(device), tuple(z.shape[-2:])).float()
    text = pipe.encode_prompt([""] * n, device).to(dtype)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(seed)
    noises = [torch.randn(z.shape, generator=generator).to(device=device, dtype=z.dtype) for _ in timesteps]
    out: dict[str, Any] = {}
    for name, (keep_f, keep_p) in STREAM_CONDITIONS.items():
        tokens = (foveal * keep_f, peripheral * keep_p)
        hidden = (text, [h.to(dtype) for h in pipe.adapters.project(*tokens)])
        whole = torch.zeros(n, device=device)
        fixated = torch.zeros(n, device=device)
        for t, noise in zip(timesteps, noises):
            tt = torch.full((n,), int(t), device=device, dtype=torch.long)
            noisy = noise_scheduler.add_noise(z, noise, tt)
            with pipe.adapters.scaled(pipe.unet, 1.0, 1.0):  # the scales the adapters were trained at
                eps = pipe.unet(noisy, tt, encoder_hidden_states=hidden).sample
            a = noise_scheduler.alphas_cumprod[int(t)].to(device)
            err = ((noisy - (1 - a).sqrt() * eps) / a.sqrt() - z).float() ** 2
            whole += err.mean(dim=(1, 2, 3))
            fixated += (err * cells).sum(dim=(1, 2, 3)) / (cells.sum(dim=(1, 2, 3)) * err.shape[1])
        per_scene = (fixated / len(timesteps)).cpu().numpy()
        out[name] = {
            "whole": float((whole / len(timesteps)).mean()),
            "fixated": float(per_scene.mean()),
            "fixated_per_scene": per_scene.tolist(),
        }
    gain = np.asarray(out["peripheral"]["fixated_per_scene"]) - np.asarray(out["both"]["fixated_per_scene"])
    out["foveal_gain"] = float(gain.mean())
    out["foveal_gain_per_scene"] = gain.tolist()
    out["foveal_gain_share"] = float((gain > 0).mean())
    return out
