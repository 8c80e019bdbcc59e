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
* :func:`foveal_localisation`: *where* the foveal stream changes the estimate: the size of
  ``x0(both) - x0(peripheral only)`` inside the fixated cells vs outside them. A fovea that says
  what it saw but not where paints its change everywhere (ratio near 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from metamergen.defaults import PERIPHERAL_BLUR
from metamergen.foveation.fovea import token_cells
from metamergen.training.data import vae_pixels

__all__ = ["conditioning_reconstruction", "foveal_localisation", "stream_contributions"]


@dataclass
class _NoisedScenes:
    """What both checks share: each scene's latent, its two token streams and fixed noise."""

    pipe: Any
    latents: torch.Tensor  # (n, C, h, w) scaled VAE latents of the scenes
    foveal: torch.Tensor  # (n, T, D) masked sharp tokens
    peripheral: torch.Tensor  # (n, T, D)
    masks: torch.Tensor  # (n, G, G) bool, the fixated patches
    text: torch.Tensor  # (n, L, D) empty-prompt embeddings
    timesteps: tuple[int, ...]
    noises: list[torch.Tensor]  # one (n, C, h, w) draw per timestep, shared by every variant

    @classmethod
    def prepare(
        cls,
        pipe: Any,
        images: Sequence[Image.Image],
        fixations: Sequence[Sequence[Sequence[float]]],
        *,
        timesteps: Sequence[int],
        peripheral_blur: float,
        resolution: int | None,
        seed: int,
    ) -> _NoisedScenes:
        n = len(images)
        res = resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
        device, dtype = pipe.unet.device, pipe.unet.dtype
        scene = pipe.encode_scene(list(images), peripheral_blur=peripheral_blur)
        masks, _, _ = pipe.foveal_masks(scene, [np.asarray(f, dtype=float).reshape(-1, 2) for f in fixations])
        sharp = scene.sharp.to(device=device, dtype=pipe.adapters.dtype)
        pixels = torch.stack([vae_pixels(im.convert("RGB"), res) for im in images])
        z = pipe.vae.encode(pixels.to(device=device, dtype=pipe.vae.dtype)).latent_dist.mean
        z = z * pipe.vae.config.scaling_factor
        generator = torch.Generator().manual_seed(seed)
        return cls(
            pipe=pipe,
            latents=z,
            foveal=sharp * masks.flatten(1)[..., None].to(sharp),
            peripheral=scene.peripheral.to(device=device, dtype=pipe.adapters.dtype),
            masks=masks.to(device),
            text=pipe.encode_prompt([""] * n, device).to(dtype),
            timesteps=tuple(int(t) for t in timesteps),
            noises=[torch.randn(z.shape, generator=generator).to(device=device, dtype=z.dtype) for _ in timesteps],
        )

    def estimates(self, foveal: torch.Tensor, peripheral: torch.Tensor) -> list[torch.Tensor]:
        """One ``(n, C, h, w)`` float32 one-step ``x0`` estimate from these tokens per timestep
        (adapters at scale 1, as trained)."""
        from diffusers import DDPMScheduler

        pipe, z = self.pipe, self.latents
        noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        hidden = (self.text, [h.to(self.text.dtype) for h in pipe.adapters.project(foveal, peripheral)])
        region = pipe.adapters.foveal_region(foveal)  # None unless the fovea is gated
        out = []
        for t, noise in zip(self.timesteps, self.noises):
            tt = torch.full((z.shape[0],), t, device=z.device, dtype=torch.long)
            noisy = noise_scheduler.add_noise(z, noise, tt)
            with (
                pipe.adapters.applied(pipe.unet, 1.0, 1.0),  # the scales the adapters were trained at
                pipe.adapters.gating(pipe.unet, region, tuple(z.shape[-2:])),
            ):
                eps = pipe.unet(noisy, tt, encoder_hidden_states=hidden).sample
            a = noise_scheduler.alphas_cumprod[t].to(z.device)
            out.append(((noisy - (1 - a).sqrt() * eps) / a.sqrt()).float())
        return out

    def squared_errors(self, foveal: torch.Tensor, peripheral: torch.Tensor) -> torch.Tensor:
        """``(n, C, h, w)`` float32: squared error of the one-step ``x0`` estimate from these
        tokens, averaged over the timesteps (adapters at scale 1, as trained)."""
        z = self.latents.float()
        return sum((x0 - z) ** 2 for x0 in self.estimates(foveal, peripheral)) / len(self.timesteps)


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
    n = len(images)
    if n < 2 or len(fixations) != n:
        raise ValueError(f"Need >= 2 images and one fixation list per image; got {n} images, {len(fixations)} lists.")
    noised = _NoisedScenes.prepare(
        pipe, images, fixations, timesteps=timesteps, peripheral_blur=peripheral_blur, resolution=resolution, seed=seed
    )
    errors = {}
    for name, perm in (("own", torch.arange(n)), ("other", torch.arange(n).roll(-1))):
        sq = noised.squared_errors(noised.foveal[perm], noised.peripheral[perm])
        errors[name] = sq.mean(dim=(1, 2, 3)).cpu().numpy()
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
    n = len(images)
    if n < 1 or len(fixations) != n:
        raise ValueError(f"Need >= 1 image and one fixation list per image; got {n} images, {len(fixations)} lists.")
    noised = _NoisedScenes.prepare(
        pipe, images, fixations, timesteps=timesteps, peripheral_blur=peripheral_blur, resolution=resolution, seed=seed
    )
    if not noised.masks.flatten(1).any(dim=1).all():
        raise ValueError("Every scene needs at least one fixation on the image: the fixated region is empty.")
    cells = token_cells(noised.masks, tuple(noised.latents.shape[-2:])).float()  # (n, 1, h, w)
    out: dict[str, Any] = {}
    for name, (keep_f, keep_p) in STREAM_CONDITIONS.items():
        sq = noised.squared_errors(noised.foveal * keep_f, noised.peripheral * keep_p)
        fixated = ((sq * cells).sum(dim=(1, 2, 3)) / (cells.sum(dim=(1, 2, 3)) * sq.shape[1])).cpu().numpy()
        out[name] = {
            "whole": float(sq.mean()),
            "fixated": float(fixated.mean()),
            "fixated_per_scene": fixated.tolist(),
        }
    gain = np.asarray(out["peripheral"]["fixated_per_scene"]) - np.asarray(out["both"]["fixated_per_scene"])
    out["foveal_gain"] = float(gain.mean())
    out["foveal_gain_per_scene"] = gain.tolist()
    out["foveal_gain_share"] = float((gain > 0).mean())
    return out


@torch.no_grad()
def foveal_localisation(
    pipe: Any,
    images: Sequence[Image.Image],
    fixations: Sequence[Sequence[Sequence[float]]],
    *,
    timesteps: Sequence[int] = (400, 600, 800),
    peripheral_blur: float = PERIPHERAL_BLUR,
    resolution: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Where the foveal stream changes the one-step ``x0`` estimate: inside the fixated cells or everywhere.

    The change is ``|x0(both streams) - x0(peripheral only)|`` (the fovea dropped by zero tokens,
    as in training; same noise, adapters at scale 1), averaged over channels and ``timesteps``,
    one value per latent cell. A fovea that places what it saw changes mostly the cells under the
    fixated patches (:func:`token_cells`); one that says *what* but not *where* changes every cell
    about equally.

    Parameters
    ----------
    pipe
        A :class:`~metamergen.pipeline.MetamerGenPipeline`.
    images
        The scenes (``n >= 1``).
    fixations
        One fixation list per scene, ``(x, y)`` in pixels of that scene's image; each needs at
        least one fixation on the image, and not every patch may be fixated (there must be an outside).
    timesteps, peripheral_blur, resolution, seed
        As in :func:`stream_contributions`.

    Returns
    -------
    dict
        ``inside`` / ``outside``: mean change per cell inside / outside the fixated cells,
        averaged over scenes, with ``*_per_scene`` lists; ``ratio_per_scene`` (inside / outside,
        1 = no localisation) and ``ratio`` (their geometric mean); ``share_inside_per_scene``:
        the fixated cells' share of the summed change, next to ``area_share_per_scene``, their
        share of the cells (equal = no localisation); ``change_map``: ``(n, h, w)`` numpy array of
        the per-cell change.
    """
    n = len(images)
    if n < 1 or len(fixations) != n:
        raise ValueError(f"Need >= 1 image and one fixation list per image; got {n} images, {len(fixations)} lists.")
    noised = _NoisedScenes.prepare(
        pipe, images, fixations, timesteps=timesteps, peripheral_blur=peripheral_blur, resolution=resolution, seed=seed
    )
    cells = token_cells(noised.masks, tuple(noised.latents.shape[-2:]))[:, 0].float()  # (n, h, w)
    area = cells.mean(dim=(1, 2))
    if not ((area > 0) & (area < 1)).all():
        raise ValueError("Every scene needs fixated and unfixated cells: at least one fixation, not on every patch.")
    both = noised.estimates(noised.foveal, noised.peripheral)
    periphery = noised.estimates(torch.zeros_like(noised.foveal), noised.peripheral)
    change = sum((b - p).abs().mean(dim=1) for b, p in zip(both, periphery)) / len(both)  # (n, h, w)
    inside = (change * cells).sum(dim=(1, 2)) / cells.sum(dim=(1, 2))
    outside = (change * (1 - cells)).sum(dim=(1, 2)) / (1 - cells).sum(dim=(1, 2))
    ratio = (inside / outside).cpu().numpy()
    return {
        "inside": float(inside.mean()),
        "outside": float(outside.mean()),
        "inside_per_scene": inside.cpu().tolist(),
        "outside_per_scene": outside.cpu().tolist(),
        "ratio": float(np.exp(np.log(ratio).mean())),
        "ratio_per_scene": ratio.tolist(),
        "share_inside_per_scene": ((change * cells).sum(dim=(1, 2)) / change.sum(dim=(1, 2))).cpu().tolist(),
        "area_share_per_scene": area.cpu().tolist(),
        "change_map": change.cpu().numpy(),
    }
