"""Feature cache: VAE latents and DINOv2 tokens computed once per image, so training runs only the UNet.

Both encoders are frozen and their inputs do not depend on fixations (``docs/design.md``, "Encode once"), so a
pre-pass stores per image:

- ``latent_mean``, ``latent_std``: ``(4, R/8, R/8)`` parameters of the VAE posterior (a fresh latent
  is sampled from them at every step, as online training does);
- ``sharp``: ``(T, D)`` DINOv2 patch tokens of the sharp canvas;
- ``peripheral``: ``(L, T, D)`` tokens of the degraded canvas, one row per cached blur level;

in one safetensors file per image (fp16 by default; about 9 MB per image at paper size with all 5
blur levels, so about 1.1 TB for COCO's 118k: cache fewer levels to save disk). Masks are still
sampled on the fly. The pre-pass runs distributed (process *r* of *n* encodes images ``r, r+n, ...``),
skips files that exist (it can be interrupted and rerun) and writes each file atomically.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from metamergen.encoders.dinov2 import canvas_size, encoder_canvas, patch_tokens
from metamergen.foveation.frame import EncoderFrame
from metamergen.foveation.periphery import peripheral_image
from metamergen.training.data import BadSampleError, SampleSource, TrainingItem, vae_pixels
from metamergen.utils.io import atomic_write

CACHE_FORMAT = 1
INDEX_NAME = "cache.json"

__all__ = ["CachedFeatureDataset", "cache_features", "cache_settings", "check_cache", "weights_digest"]


def weights_digest(*modules: torch.nn.Module) -> str:
    """SHA-256 of the modules' state dicts (names, dtypes, shapes, bytes), in order.

    A folder path names a model but not its weights: a demo rebuilt into the same folder, or a
    fine-tuned encoder saved over the old one, must not train on the old one's cached features.
    """
    h = hashlib.sha256()
    for module in modules:
        for name, t in module.state_dict().items():
            t = t.detach().to("cpu").contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_settings(pipe: Any, resolution: int, blur_levels: Sequence[float], dtype: torch.dtype) -> dict[str, Any]:
    """What a cache depends on, the encoders' weights included; training refuses a cache built
    with different settings."""
    return {
        "format": CACHE_FORMAT,
        "resolution": int(resolution),
        "blur_levels": [float(s) for s in blur_levels],
        "encoder_resolution": canvas_size(pipe.feature_extractor),
        "patch_size": int(pipe.image_encoder.config.patch_size),
        "image_encoder": pipe.image_encoder.config._name_or_path or type(pipe.image_encoder).__name__,
        "vae_scaling_factor": float(pipe.vae.config.scaling_factor),
        "dtype": str(dtype).replace("torch.", ""),
        "weights": weights_digest(pipe.vae, pipe.image_encoder),
    }


def check_cache(cache_dir: str | Path, settings: dict[str, Any]) -> None:
    """Write the cache's settings on first use; raise if an existing cache was built differently."""
    index = Path(cache_dir) / INDEX_NAME
    if index.exists():
        found = json.loads(index.read_text())
        diff = {k: (found.get(k), v) for k, v in settings.items() if found.get(k) != v}
        if diff:
            raise ValueError(
                f"The feature cache in {cache_dir} was built with other settings or weights ({diff}, as cached vs now). "
                "Use a new data.feature_cache folder, or delete this one."
            )
    else:
        atomic_write(index, lambda p: Path(p).write_text(json.dumps(settings, indent=2)))


def _file(cache_dir: Path, index: int) -> Path:
    return cache_dir / f"{index:08d}.safetensors"


@torch.no_grad()
def cache_features(
    pipe: Any,
    items: Sequence[TrainingItem],
    cache_dir: str | Path,
    *,
    resolution: int,
    blur_levels: Sequence[float],
    batch_size: int = 8,
    process_index: int = 0,
    num_processes: int = 1,
    dtype: torch.dtype = torch.float16,
    progress: bool = True,
) -> Counter:
    """Encode this process's share of ``items`` into ``cache_dir``.

    Parameters
    ----------
    pipe
        A :class:`~metamergen.pipeline.MetamerGenPipeline` (its VAE, DINOv2 and processor are used,
        on their current device and dtype).
    items
        The training entries (index i is cached as ``{i:08d}.safetensors``).
    resolution
        VAE input side, pixels (the training resolution).
    blur_levels
        Peripheral down/up scales to cache.
    process_index, num_processes
        This process's shard: items ``process_index, process_index + num_processes, ...``.
    dtype
        Storage dtype of the tensors.

    Returns
    -------
    collections.Counter
        ``"encoded"``, ``"already cached"`` and bad-item reasons for this process's share.
    """
    from tqdm.auto import tqdm

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    patch = int(pipe.image_encoder.config.patch_size)
    levels = [float(s) for s in blur_levels]
    counts: Counter = Counter()
    todo = []
    for i in range(process_index, len(items), num_processes):
        if _file(cache_dir, i).exists():
            counts["already cached"] += 1
        else:
            todo.append(i)
    device, vae_dtype = pipe.vae.device, pipe.vae.dtype
    for start in tqdm(range(0, len(todo), batch_size), disable=not progress, desc="caching features"):
        chunk, images = [], []
        for i in todo[start : start + batch_size]:
            try:
                images.append(items[i].load())
                chunk.append(i)
            except Exception:  # decoding/IO errors of any library: the item is skipped and counted
                counts["unreadable image"] += 1
        if not chunk:
            continue
        canvas, _ = encoder_canvas(pipe.feature_extractor, images, patch_size=patch)
        canvas = canvas.to(pipe.image_encoder.device, pipe.image_encoder.dtype)
        sharp = patch_tokens(pipe.image_encoder, canvas)
        per = torch.stack([patch_tokens(pipe.image_encoder, peripheral_image(canvas, s)) for s in levels], dim=1)
        pixels = torch.stack([vae_pixels(im, resolution) for im in images]).to(device, vae_dtype)
        posterior = pipe.vae.encode(pixels).latent_dist
        for j, i in enumerate(chunk):
            tensors = {
                "latent_mean": posterior.mean[j],
                "latent_std": posterior.std[j],
                "sharp": sharp[j],
                "peripheral": per[j],
            }
            tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in tensors.items()}
            meta = {"key": items[i].key, "width": str(images[j].width), "height": str(images[j].height)}
            atomic_write(_file(cache_dir, i), lambda p, t=tensors, m=meta: save_file(t, p, metadata=m))
            counts["encoded"] += 1
    return counts


class CachedFeatureDataset(SampleSource):
    """Training samples read from a feature cache, with the same randomness as
    :class:`~metamergen.training.data.AdapterTrainingDataset` (masks and blur level from
    (seed, epoch, index)); the trainer samples latents from the cached posterior.

    Each sample: ``latent_mean``/``latent_std`` ``(4, h, w)``, ``sharp`` ``(T, D)``,
    ``peripheral`` ``(T, D)`` at the drawn level, ``foveal_mask`` ``(T,)``, ``blur``, ``index``, ``skipped``.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        items: Sequence[TrainingItem],
        *,
        fixation_counts: Sequence[int],
        blur_levels: Sequence[float],
        seed: int = 0,
        skip_bad_samples: bool = True,
    ) -> None:
        super().__init__(
            items,
            fixation_counts=fixation_counts,
            blur_levels=blur_levels,
            seed=seed,
            skip_bad_samples=skip_bad_samples,
        )
        self.cache_dir = Path(cache_dir)
        settings = json.loads((self.cache_dir / INDEX_NAME).read_text())
        cached = [float(s) for s in settings["blur_levels"]]
        missing = [s for s in self.blur_levels if s not in cached]
        if missing:
            raise ValueError(f"Blur levels {missing} are not in the feature cache (it holds {cached}).")
        self.level_index = {s: cached.index(s) for s in self.blur_levels}
        self.size, self.patch = int(settings["encoder_resolution"]), int(settings["patch_size"])

    def _make(self, index: int) -> dict[str, Any]:
        path = _file(self.cache_dir, index)
        if not path.exists():
            raise BadSampleError("not in the feature cache (unreadable when cached)")
        g, count, blur = self._draw(index)
        with safe_open(path, "pt") as f:
            meta = f.metadata()
            if meta.get("key") != self.items[index].key:
                raise ValueError(
                    f"Feature cache {path} holds {meta.get('key')!r} but training item {index} is "
                    f"{self.items[index].key!r}: the data changed since the cache was built. Use a new "
                    "data.feature_cache folder."
                )
            sample = {k: f.get_tensor(k) for k in ("latent_mean", "latent_std", "sharp")}
            sample["peripheral"] = f.get_slice("peripheral")[self.level_index[blur]]
        frame = EncoderFrame.fit(int(meta["width"]), int(meta["height"]), size=self.size, patch_size=self.patch)
        sample.update(foveal_mask=self._mask(self.items[index], frame, count, g), blur=blur)
        return sample
