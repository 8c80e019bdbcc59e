"""Scoring: how similar each generation is to its original scene (see ``docs/design.md``, "Scoring").

Every metric compares ``originals[i]`` with ``generations[i]`` and returns one float64 per pair::

    metric = SSIM()
    scores = metric(originals, generations)     # np.ndarray, shape (N,)
    metric.name, metric.higher_is_similar       # "ssim", True

Two families:

* **weight-free** (``psnr``, ``mse``, ``ssim``, ``color_hist``, ``gabor``, ``sobel``): each first
  brings both images to the **score resolution** (:func:`score_resolution`): the original's
  aspect ratio with its longer side at most ``score_size`` pixels (default :data:`SCORE_SIZE`,
  512, Stable Diffusion 1.5's native side; an original already within it keeps its size), with PIL
  bicubic resampling (when the sizes differ), then works on RGB values in [0, 1]; SSIM, Gabor and
  Sobel work on the luminance ``Y = 0.299 R + 0.587 G + 0.114 B``. Deterministic, CPU, no downloads.
  A COCO-FreeView original (1680 x 1050) and its 648 x 408 render are compared at 512 x 320, not
  at 1680 x 1050 (upsampling the render adds no information and made SSIM 20 times slower).
* **model-based** (``clip``, ``dreamsim``, ``dino``): each squashes the whole image to the model's
  square input (aspect ratio not kept, **no centre crop**, since cropping removes the periphery
  MetamerGen is about): 224 x 224 for DreamSim and ViT-L/14 CLIP, the encoder canvas for ``dino``.
  Models are loaded once, at construction, and run in batches.

Every metric says what it compares at with :meth:`Metric.input_size`; ``metamergen score`` records
it per row in the ``score_resolution`` column.

Images may be PIL images, ``(H, W, 3)`` uint8 arrays or ``(3, H, W)`` float tensors in [0, 1]
(see :func:`metamergen.encoders.to_pil`).

:func:`build_metrics` builds metrics by name from :data:`METRICS`.
"""

from __future__ import annotations

import inspect
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import PreTrainedModel

from metamergen.encoders.dinov2 import canvas_size, encoder_canvas, patch_tokens
from metamergen.evaluation.registry import MODEL_METRICS, WEIGHT_FREE_METRICS
from metamergen.utils.images import ImageInput, to_pil

try:  # transformers >= 5: the PIL backend (no torchvision needed)
    from transformers import CLIPImageProcessorPil as _CLIPImageProcessor
except ImportError:  # transformers 4.x: the slow processor is PIL-based already
    from transformers import CLIPImageProcessor as _CLIPImageProcessor

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "CLIPSimilarity",
    "ColorHistogramDistance",
    "DinoCosine",
    "DreamSimDistance",
    "GaborEnergyDistance",
    "METRICS",
    "MODEL_METRICS",
    "MSE",
    "Metric",
    "PSNR",
    "SCORE_SIZE",
    "SSIM",
    "SobelEnergyDistance",
    "WEIGHT_FREE_METRICS",
    "build_metrics",
    "dreamsim_missing_files",
    "score_resolution",
]

#: OpenAI CLIP's normalisation, used when no processor config is available.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Longer side, pixels, of the score resolution of the weight-free metrics (Stable Diffusion
#: 1.5's native 512; ``score_size=None`` compares at the original's full size).
SCORE_SIZE = 512

#: ITU-R BT.601 luma weights (R, G, B).
_LUMA = (0.299, 0.587, 0.114)


# --------------------------------------------------------------------------- base class


class Metric(ABC):
    """A pairwise image similarity or distance.

    Attributes
    ----------
    name
        Registry name (a key of :data:`METRICS`).
    higher_is_similar
        True when larger values mean the generation is more similar to the original
        (PSNR, SSIM, cosines); False for errors and distances.
    """

    name: str = ""
    higher_is_similar: bool = True

    def __call__(self, originals: Sequence[ImageInput], generations: Sequence[ImageInput]) -> np.ndarray:
        """Score each pair ``(originals[i], generations[i])``.

        Returns
        -------
        np.ndarray
            ``(N,)`` float64, one value per pair (empty for empty inputs).
        """
        originals, generations = list(originals), list(generations)
        if len(originals) != len(generations):
            raise ValueError(
                f"{self.name}: got {len(originals)} originals and {len(generations)} generations; "
                "metrics compare them pairwise, so repeat each original once per generation."
            )
        if not originals:
            return np.zeros(0, dtype=np.float64)
        scores = np.asarray(self._score(originals, generations), dtype=np.float64).reshape(-1)
        if scores.shape[0] != len(originals):  # pragma: no cover - a bug in a subclass
            raise RuntimeError(f"{self.name} returned {scores.shape[0]} scores for {len(originals)} pairs.")
        return scores

    @abstractmethod
    def _score(self, originals: list[ImageInput], generations: list[ImageInput]) -> np.ndarray: ...

    def input_size(self, original_size: tuple[int, int]) -> tuple[int, int] | None:
        """``(width, height)`` at which a pair with an original of ``original_size`` is compared.

        Parameters
        ----------
        original_size
            ``(width, height)`` of the original, pixels.

        Returns
        -------
        tuple of int, or None
            The comparison size; ``None`` when the metric does not say.
        """
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, higher_is_similar={self.higher_is_similar})"


# --------------------------------------------------------------------------- weight-free metrics


def score_resolution(width: int, height: int, score_size: int | None = SCORE_SIZE) -> tuple[int, int]:
    """``(width, height)`` at which the weight-free metrics compare a pair whose original is ``width`` x ``height``.

    Parameters
    ----------
    width, height
        The original's size, pixels.
    score_size
        Longest side of the comparison, pixels; ``None`` for the original's full size.

    Returns
    -------
    tuple of int
        The original's size if its longer side is at most ``score_size`` (never upsampled), else
        the original's aspect ratio with the longer side ``score_size`` (each side at least 1).
    """
    if score_size is None or max(width, height) <= score_size:
        return int(width), int(height)
    scale = score_size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _check_score_size(score_size: int | None) -> int | None:
    if score_size is None:
        return None
    if isinstance(score_size, bool) or int(score_size) != score_size or score_size < 1:
        raise ValueError(f"score_size must be a positive number of pixels (or None for full size), got {score_size!r}.")
    return int(score_size)


def _aligned_uint8(
    original: ImageInput, generation: ImageInput, score_size: int | None = SCORE_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Both images as ``(H, W, 3)`` uint8 RGB at the score resolution (:func:`score_resolution`, bicubic)."""
    o, g = to_pil(original), to_pil(generation)
    size = score_resolution(*o.size, score_size)
    if o.size != size:
        o = o.resize(size, Image.Resampling.BICUBIC)
    if g.size != size:
        g = g.resize(size, Image.Resampling.BICUBIC)
    return np.asarray(o), np.asarray(g)


def _to_float(arr: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float64 tensor in [0, 1]."""
    return torch.from_numpy(arr.astype(np.float64) / 255.0).permute(2, 0, 1).contiguous()


def _luminance(rgb: torch.Tensor) -> torch.Tensor:
    """``(3, H, W)`` RGB in [0, 1] -> ``(1, 1, H, W)`` luminance in [0, 1]."""
    w = torch.tensor(_LUMA, dtype=rgb.dtype).view(3, 1, 1)
    return (rgb * w).sum(0)[None, None]


class _PairwiseMetric(Metric):
    """A weight-free metric computed one pair at a time on aligned [0, 1] RGB tensors.

    ``score_size`` (default :data:`SCORE_SIZE`) is the longer side of the score resolution
    (:func:`score_resolution`); ``None`` compares at the original's full size.
    """

    def __init__(self, score_size: int | None = SCORE_SIZE) -> None:
        self.score_size = _check_score_size(score_size)

    def input_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """The score resolution for an original of ``original_size`` (:func:`score_resolution`)."""
        return score_resolution(*original_size, self.score_size)

    def _score(self, originals: list[ImageInput], generations: list[ImageInput]) -> np.ndarray:
        out = np.empty(len(originals), dtype=np.float64)
        for i, (o, g) in enumerate(zip(originals, generations)):
            a, b = _aligned_uint8(o, g, self.score_size)
            out[i] = self._pair(a, b)
        return out

    @abstractmethod
    def _pair(self, original: np.ndarray, generation: np.ndarray) -> float:
        """Score one pair of ``(H, W, 3)`` uint8 arrays of equal size."""


class MSE(_PairwiseMetric):
    """Mean squared error over all pixels and RGB channels, values in [0, 1].

    Range [0, 1]; 0 for identical images; lower is more similar. Both images are brought to
    the score resolution first (:func:`score_resolution`).
    """

    name = "mse"
    higher_is_similar = False

    def _pair(self, original: np.ndarray, generation: np.ndarray) -> float:
        return float(((_to_float(original) - _to_float(generation)) ** 2).mean())


class PSNR(_PairwiseMetric):
    """Peak signal-to-noise ratio in dB, ``10 log10(1 / MSE)`` with RGB values in [0, 1].

    Range (0, +inf] for 8-bit images (at least ~0 dB, typically 10-40 dB); ``+inf`` for identical
    images (MSE = 0), so average it with care (e.g. drop or cap infinities). Higher is more
    similar. Both images are brought to the score resolution first (:func:`score_resolution`).
    """

    name = "psnr"
    higher_is_similar = True

    def _pair(self, original: np.ndarray, generation: np.ndarray) -> float:
        mse = float(((_to_float(original) - _to_float(generation)) ** 2).mean())
        return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def _gaussian_1d(size: int, sigma: float) -> torch.Tensor:
    """A normalised 1-D Gaussian, ``(size,)`` float64."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


class SSIM(_PairwiseMetric):
    """Structural similarity (Wang et al. 2004) on luminance.

    Gaussian window of ``window_size`` px (default 11) and sigma ``sigma`` px (default 1.5),
    constants ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` with data range ``L = 1``; the SSIM map is
    computed where the window fits entirely inside the image ("valid") and averaged. Range
    [-1, 1]; 1 for identical images; higher is more similar. Both images are brought to the
    score resolution first (:func:`score_resolution`). A pair smaller than ``window_size`` px on a
    side there scores NaN (the window cannot fit), so one tiny image does not stop a whole study;
    ``metamergen score`` counts those NaNs and warns once.
    """

    name = "ssim"
    higher_is_similar = True

    def __init__(self, window_size: int = 11, sigma: float = 1.5, score_size: int | None = SCORE_SIZE) -> None:
        super().__init__(score_size)
        if window_size < 1 or window_size % 2 == 0:
            raise ValueError(f"window_size must be a positive odd number of pixels, got {window_size}.")
        self.window_size = int(window_size)
        self.sigma = float(sigma)
        g = _gaussian_1d(self.window_size, self.sigma)
        self._rows, self._cols = g.view(1, 1, 1, -1), g.view(1, 1, -1, 1)

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian filtering, "valid" region only."""
        return F.conv2d(F.conv2d(x, self._rows), self._cols)

    def _pair(self, original: np.ndarray, generation: np.ndarray) -> float:
        h, w = original.shape[:2]
        if min(h, w) < self.window_size:  # the window does not fit: no SSIM (score counts the NaNs)
            return math.nan
        x, y = _luminance(_to_float(original)), _luminance(_to_float(generation))
        c1, c2 = 0.01**2, 0.03**2
        mu_x, mu_y = self._blur(x), self._blur(y)
        sxx = self._blur(x * x) - mu_x * mu_x
        syy = self._blur(y * y) - mu_y * mu_y
        sxy = self._blur(x * y) - mu_x * mu_y
        ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2))
        return float(ssim_map.mean())


class ColorHistogramDistance(_PairwiseMetric):
    """Hellinger distance between per-channel colour histograms, averaged over R, G, B.

    Each channel's 8-bit values are binned into ``bins`` equal bins (default 32) and normalised
    to sum 1; per channel ``H = sqrt(0.5 * sum_k (sqrt(p_k) - sqrt(q_k))^2)``. Range [0, 1]; 0 for
    identical histograms; lower is more similar. Spatially blind: any rearrangement of the pixels
    scores 0. Both images are brought to the score resolution first (:func:`score_resolution`).
    """

    name = "color_hist"
    higher_is_similar = False

    def __init__(self, bins: int = 32, score_size: int | None = SCORE_SIZE) -> None:
        super().__init__(score_size)
        if not 1 <= bins <= 256:
            raise ValueError(f"bins must be in [1, 256], got {bins}.")
        self.bins = int(bins)

    def _histograms(self, arr: np.ndarray) -> np.ndarray:
        idx = arr.reshape(-1, 3).astype(np.int64) * self.bins // 256
        hist = np.stack([np.bincount(idx[:, c], minlength=self.bins) for c in range(3)]).astype(np.float64)
        return hist / hist.sum(axis=1, keepdims=True)

    def _pair(self, original: np.ndarray, generation: np.ndarray) -> float:
        p, q = self._histograms(original), self._histograms(generation)
        per_channel = np.sqrt(0.5 * ((np.sqrt(p) - np.sqrt(q)) ** 2).sum(axis=1))
        return float(np.clip(per_channel, 0.0, 1.0).mean())


def _fast_len(n: int) -> int:
    """The smallest integer >= ``n`` with no prime factor above 5 (a fast FFT length)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _filter_energy(lum: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Convolve ``(1, 1, H, W)`` with ``(K, 1, k, k)`` kernels (replicate padding, same size)."""
    half = kernels.shape[-1] // 2
    padded = F.pad(lum, (half, half, half, half), mode="replicate")
    return F.conv2d(padded, kernels)[0]


class GaborEnergyDistance(_PairwiseMetric):
    """Difference in oriented, band-pass texture energy, from a Gabor filter bank on luminance.

    The luminance is first area-downsampled so that its longer side is at most ``max_side`` px
    (default 512; never upsampled; ``None`` keeps full resolution), so the bank is tuned relative to
    the scene (4 px at 512 is 1/128 of its width) and a 1680 x 1050 pair takes well under a second.
    The bank has ``len(orientations)`` orientations (default 0, 45, 90, 135 degrees) x
    ``len(wavelengths)`` wavelengths (default 4, 8, 16 px of that analysis image); each filter is a
    quadrature pair (zero-mean cosine and sine carriers) under a Gaussian envelope with sigma
    ``0.56 * wavelength`` (about one octave) and aspect ratio 0.5, normalised to unit sum. Per
    band, the energy is the mean over pixels of ``even^2 + odd^2`` (phase-invariant), with
    replicate padding at the borders.

    Distance = mean over the bands of ``|log(E_orig + eps) - log(E_gen + eps)|`` (eps = 1e-6):
    the mean absolute log-ratio of band energies, symmetric in the two images (0.1 means the bands'
    energies differ by ~10 % on average). Range [0, inf); 0 for identical images; lower is more
    similar. Both images are brought to the score resolution first (:func:`score_resolution`).
    """

    name = "gabor"
    higher_is_similar = False

    def __init__(
        self,
        wavelengths: Sequence[float] = (4.0, 8.0, 16.0),
        orientations: Sequence[float] = (0.0, 45.0, 90.0, 135.0),
        eps: float = 1e-6,
        max_side: int | None = 512,
        score_size: int | None = SCORE_SIZE,
    ) -> None:
        super().__init__(score_size)
        if max_side is not None and max_side < 8:
            raise ValueError(f"max_side must be at least 8 px (or None), got {max_side}.")
        self.max_side = None if max_side is None else int(max_side)
        if not wavelengths or not orientations:
            raise ValueError("The Gabor bank needs at least one wavelength and one orientation.")
        if min(wavelengths) < 2:
            raise ValueError(f"Wavelengths must be at least 2 px (the Nyquist limit), got {tuple(wavelengths)}.")
        self.wavelengths = tuple(float(w) for w in wavelengths)
        self.orientations = tuple(float(o) for o in orientations)
        self.eps = float(eps)
        self._banks = [self._bank(w) for w in self.wavelengths]

    def _bank(self, wavelength: float) -> torch.Tensor:
        """``(n_orientations, k, k)`` complex128: even (real) + i odd (imaginary) kernel per orientation."""
        sigma, gamma = 0.56 * wavelength, 0.5
        half = int(math.ceil(3 * sigma))
        coords = torch.arange(-half, half + 1, dtype=torch.float64)
        y, x = torch.meshgrid(coords, coords, indexing="ij")
        kernels = []
        for deg in self.orientations:
            t = math.radians(deg)
            xr = x * math.cos(t) + y * math.sin(t)
            yr = -x * math.sin(t) + y * math.cos(t)
            env = torch.exp(-(xr**2 + (gamma * yr) ** 2) / (2 * sigma**2))
            env = env / env.sum()
            even = env * torch.cos(2 * math.pi * xr / wavelength)
            even = even - env * even.sum()  # remove the DC response (env sums to 1)
            odd = env * torch.sin(2 * math.pi * xr / wavelength)
            kernels.append(torch.complex(even, odd))
        return torch.stack(kernels)

    def energies(self, image: np.ndarray) -> np.ndarray:
        """Mean Gabor energy per band of an ``(H, W, 3)`` uint8 image, ``(n_wavelengths * n_orientations,)``,
        in squared luminance units (luminance in [0, 1]); wavelength-major order. The image is first
        downsampled to ``max_side`` (see the class docstring).

        Filtering is an FFT convolution of the replicate-padded image (same result as a spatial
        convolution, fast for the large kernels of long wavelengths)."""
        lum = _luminance(_to_float(image))
        h, w = lum.shape[-2:]
        if self.max_side is not None and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            h, w = max(1, round(h * scale)), max(1, round(w * scale))
            lum = F.interpolate(lum, size=(h, w), mode="area")
        lum = lum[0, 0]
        out = []
        for bank in self._banks:
            k = bank.shape[-1]
            half = k // 2
            padded = F.pad(lum[None, None], (half, half, half, half), mode="replicate")[0, 0]
            shape = (_fast_len(padded.shape[0] + k - 1), _fast_len(padded.shape[1] + k - 1))  # linear, not circular
            full = torch.fft.ifft2(torch.fft.fft2(padded, s=shape) * torch.fft.fft2(bank, s=shape))
            response = full[:, k - 1 : k - 1 + h, k - 1 : k - 1 + w]
            out.append((response.real**2 + response.imag**2).mean(dim=(1, 2)))
        return torch.cat(out).numpy()

    def _pair(self, original: np.ndarray, generation: np.ndarray) -> float:
        eo, eg = self.energies(original), self.energies(generation)
        return float(np.abs(np.log(eo + self.eps) - np.log(eg + self.eps)).mean())


class SobelEnergyDistance(_PairwiseMetric):
    """Relative difference in edge energy: the mean squared Sobel gradient magnitude of luminance.

    ``E = mean(gx^2 + gy^2)`` with the 3x3 Sobel kernels scaled by 1/8 (so ``gx`` is a per-pixel
    slope of luminance in [0, 1]) and replicate padding; distance
    ``|E_orig - E_gen| / (E_orig + E_gen)`` (0 when both are 0). Range [0, 1]; 0 for identical
    images; lower is more similar. Both images are brought to the score resolution
    first (:func:`score_resolution`).
    """

    name = "sobel"
    higher_is_similar = False

    def __init__(self, score_size: int | None = SCORE_SIZE) -> None:
        super().__init__(score_size)
        kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=torch.float64) / 8
        self._kernels = torch.stack([kx, kx.T])[:, None]

    def energy(self, image: np.ndarray) -> float:
        """Mean squared gradient magnitude of an ``(H, W, 3)`` uint8 image (luminance in [0, 1])."""
        g = _filter_energy(_luminance(_to_float(image)), self._kernels)
        return float((g[0] ** 2 + g[1] ** 2).mean())

    def _pair(self, original: np.ndarray, generation: np.ndarray) -> float:
        eo, eg = self.energy(original), self.energy(generation)
        total = eo + eg
        return 0.0 if total == 0.0 else abs(eo - eg) / total


# --------------------------------------------------------------------------- model-based metrics


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _check_batch_size(batch_size: int) -> int:
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    return int(batch_size)


class _EmbeddingCosine(Metric):
    """Cosine similarity of embeddings; subclasses provide :meth:`embed`.

    Originals passed as the same object several times (one scene, many generations) are embedded
    once.
    """

    higher_is_similar = True
    batch_size: int

    @abstractmethod
    def embed(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """``(N, D)`` embeddings, computed in batches of ``batch_size`` images."""

    def _score(self, originals: list[ImageInput], generations: list[ImageInput]) -> np.ndarray:
        first: dict[int, int] = {}
        unique: list[ImageInput] = []
        index = []
        for im in originals:
            if id(im) not in first:
                first[id(im)] = len(unique)
                unique.append(im)
            index.append(first[id(im)])
        eo = self.embed(unique).double().cpu()[index]
        eg = self.embed(generations).double().cpu()
        return F.cosine_similarity(eo, eg, dim=-1).numpy()


def _image_embeds(output: Any) -> torch.Tensor:
    """The projected image embedding from ``get_image_features``: a tensor (transformers 4) or an
    output object whose ``pooler_output`` holds it (transformers 5)."""
    if isinstance(output, torch.Tensor):
        return output
    for attr in ("image_embeds", "pooler_output"):
        value = getattr(output, attr, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"Cannot find image embeddings in get_image_features' output of type {type(output).__name__}.")


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class CLIPSimilarity(_EmbeddingCosine):
    """Image–image cosine similarity of CLIP image embeddings (``CLIPModel.get_image_features``).

    Each image is squashed to the model's square input (``vision_config.image_size``, bicubic),
    with **no centre crop**, and normalised with the CLIP mean/std of the model's processor config
    (OpenAI's values when there is none). Range [-1, 1]; 1 for identical images; higher is more
    similar.

    Parameters
    ----------
    model
        A hub id (default ``"openai/clip-vit-large-patch14"``), a local folder saved with
        ``save_pretrained``, or a ``CLIPModel`` instance (anything with ``get_image_features``).
    device
        Where to run. Default: the instance's own device, or CUDA when available for ids/folders.
    batch_size
        Images per forward pass.
    processor
        Optional image processor whose ``image_mean`` / ``image_std`` are used (its resizing and
        cropping settings are ignored).
    """

    name = "clip"

    def __init__(
        self,
        model: str | os.PathLike | PreTrainedModel = "openai/clip-vit-large-patch14",
        device: str | torch.device | None = None,
        batch_size: int = 16,
        processor: Any | None = None,
    ) -> None:
        self.batch_size = _check_batch_size(batch_size)
        mean, std = CLIP_MEAN, CLIP_STD
        if isinstance(model, (str, os.PathLike)):
            model_id = str(model)
            model = self._load(model_id)
            if processor is None:
                try:
                    processor = _CLIPImageProcessor.from_pretrained(model_id)
                except (OSError, ValueError):
                    processor = None  # no preprocessor_config.json: OpenAI's values
            if device is None:
                device = _default_device()
        if processor is not None:
            mean = tuple(processor.image_mean)
            std = tuple(processor.image_std)
        if device is not None:
            model = model.to(device)
        self.model = model.eval()
        vision = getattr(model.config, "vision_config", model.config)
        self.image_size = int(vision.image_size)
        self.processor = _CLIPImageProcessor(
            do_resize=True,
            size={"height": self.image_size, "width": self.image_size},
            resample=Image.Resampling.BICUBIC,
            do_center_crop=False,
            do_rescale=True,
            rescale_factor=1 / 255,
            do_normalize=True,
            image_mean=list(mean),
            image_std=list(std),
            do_convert_rgb=True,
        )

    @staticmethod
    def _load(model_id: str) -> PreTrainedModel:
        from transformers import CLIPModel

        try:
            return CLIPModel.from_pretrained(model_id)
        except (OSError, ValueError) as exc:
            raise RuntimeError(
                f"Could not load CLIP weights from {model_id!r} ({type(exc).__name__}: {exc}). Pass a Hugging Face "
                "hub id such as 'openai/clip-vit-large-patch14' (downloaded into the HF cache on first use; needs "
                "network, or a cache filled beforehand with `huggingface-cli download openai/clip-vit-large-patch14` "
                "and HF_HUB_OFFLINE=1), a local folder holding config.json and the model weights (e.g. written by "
                "CLIPModel.save_pretrained), or a CLIPModel instance."
            ) from exc

    def input_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """The model's square input, whatever the original's size (squashed, no crop)."""
        return self.image_size, self.image_size

    @torch.no_grad()
    def embed(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """``(N, projection_dim)`` CLIP image embeddings (not normalised)."""
        param = next(self.model.parameters())
        out = []
        for chunk in _chunks(images, self.batch_size):
            pv = self.processor(images=[to_pil(im) for im in chunk], return_tensors="pt").pixel_values
            feats = self.model.get_image_features(pixel_values=pv.to(device=param.device, dtype=param.dtype))
            out.append(_image_embeds(feats).float())
        return torch.cat(out)


class DinoCosine(_EmbeddingCosine):
    """Cosine similarity of mean-pooled DINOv2 patch tokens, with the pipeline's own encoder.

    Each image is framed like the pipeline frames scenes (``EncoderFrame.fit(..., mode="squash")``:
    the whole image squashed to the processor's square canvas, no crop), encoded with
    :func:`metamergen.encoders.patch_tokens` (CLS and register tokens dropped), and the patch tokens
    are averaged. Range [-1, 1]; 1 for identical images; higher is more similar.

    Parameters
    ----------
    image_encoder
        A transformers DINOv2 model, e.g. ``pipe.image_encoder``; its device and dtype are used.
    processor
        An image processor that resizes straight to a square, e.g. ``pipe.feature_extractor``.
    batch_size
        Images per forward pass.
    """

    name = "dino"

    def __init__(self, image_encoder: PreTrainedModel, processor: Any, batch_size: int = 16) -> None:
        self.image_encoder = image_encoder
        self.processor = processor
        self.batch_size = _check_batch_size(batch_size)
        self.size = canvas_size(processor)
        self.patch_size = int(image_encoder.config.patch_size)

    @classmethod
    def from_pipeline(cls, pipe: Any, batch_size: int = 16) -> DinoCosine:
        """Use a MetamerGen pipeline's ``image_encoder`` and ``feature_extractor``."""
        return cls(pipe.image_encoder, pipe.feature_extractor, batch_size=batch_size)

    def input_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """The encoder's square canvas, whatever the original's size (squashed, no crop)."""
        return self.size, self.size

    @torch.no_grad()
    def embed(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """``(N, hidden)`` mean of the final-layer patch tokens."""
        out = []
        for chunk in _chunks(images, self.batch_size):
            pv, _ = encoder_canvas(self.processor, chunk, patch_size=self.patch_size, fit="squash")
            pv = pv.to(device=self.image_encoder.device, dtype=self.image_encoder.dtype)
            out.append(patch_tokens(self.image_encoder, pv).float().mean(dim=1))
        return torch.cat(out)


# --------------------------------------------------------------------------- DreamSim

#: Files DreamSim 0.2.1 expects in its ``cache_dir`` per ``dreamsim_type`` (its checkpoint zip's
#: contents), plus what torch.hub fetches there for the DINO backbones (dreamsim points torch.hub at
#: ``cache_dir``).
_DREAMSIM_FILES: dict[str, tuple[str, ...]] = {
    "ensemble": (
        "dino_vitb16_pretrain.pth",
        "open_clip_vitb16_pretrain.pth.tar",
        "clip_vitb16_pretrain.pth.tar",
        "ensemble_lora",
        "facebookresearch_dino_main",
        "checkpoints/dino_vitbase16_pretrain.pth",
    ),
    "dino_vitb16": (
        "dino_vitb16_pretrain.pth",
        "dino_vitb16_single_lora",
        "facebookresearch_dino_main",
        "checkpoints/dino_vitbase16_pretrain.pth",
    ),
    "dinov2_vitb14": (
        "dinov2_vitb14_pretrain.pth",
        "dinov2_vitb14_single_lora",
        "facebookresearch_dinov2_main",
        "checkpoints/dinov2_vitb14_pretrain.pth",
    ),
    "open_clip_vitb32": ("open_clip_vitb32_pretrain.pth.tar", "open_clip_vitb32_single_lora"),
    "clip_vitb32": ("clip_vitb32_pretrain.pth.tar", "clip_vitb32_single_lora"),
    "synclr_vitb16": ("synclr_vit_b_16.pth", "synclr_vitb16_single_lora"),
}

_DREAMSIM_INSTALL = (
    "`pip install dreamsim==0.2.1`; it needs torch with a matching torchvision (on this project's "
    "machines: `pip install torch==2.14.1 torchvision==0.29.1`)"
)


def _dreamsim_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("METAMERGEN_DREAMSIM_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "metamergen" / "dreamsim"


def dreamsim_missing_files(cache_dir: str | os.PathLike | None = None, dreamsim_type: str = "ensemble") -> list[str]:
    """The files and folders DreamSim needs offline that are missing from ``cache_dir`` (relative paths).

    ``cache_dir`` defaults as in :class:`DreamSimDistance`. An empty list means DreamSim can be
    built without network.
    """
    if dreamsim_type not in _DREAMSIM_FILES:
        raise ValueError(f"Unknown dreamsim_type {dreamsim_type!r}; choose one of {sorted(_DREAMSIM_FILES)}.")
    root = _dreamsim_cache_dir(cache_dir)
    return [f for f in _DREAMSIM_FILES[dreamsim_type] if not (root / f).exists()]


class DreamSimDistance(Metric):
    """DreamSim perceptual distance (Fu et al. 2023), ``1 - cosine`` of DreamSim embeddings.

    Wraps the ``dreamsim`` package (0.2.1), default ``"ensemble"`` (DINO ViT-B/16 + CLIP ViT-B/16 +
    OpenCLIP ViT-B/16). Its preprocessing squashes each image to 224 x 224 (bicubic, no crop).
    Range [0, 2] (in practice [0, ~1]); 0 for identical images; lower is more similar.

    Parameters
    ----------
    device
        Where DreamSim runs (``"cpu"`` by default; dreamsim's own default is CUDA).
    cache_dir
        Folder holding DreamSim's weights. Default: ``$METAMERGEN_DREAMSIM_CACHE`` if set, else
        ``~/.cache/metamergen/dreamsim``. DreamSim downloads its checkpoint zip there on first use;
        offline, unzip it there beforehand (see :func:`dreamsim_missing_files`).
    dreamsim_type
        ``"ensemble"``, ``"dino_vitb16"``, ``"dinov2_vitb14"``, ``"clip_vitb32"``,
        ``"open_clip_vitb32"`` or ``"synclr_vitb16"``.
    model, preprocess
        Inject a model and its preprocessing instead of loading DreamSim (tests, or a model built
        elsewhere): ``model(a, b)`` takes two ``(B, 3, 224, 224)`` tensors in [0, 1] and returns
        ``(B,)`` distances; ``preprocess(pil)`` returns a ``(1, 3, 224, 224)`` tensor.
    batch_size
        Pairs per forward pass.

    Notes
    -----
    dreamsim sets torch.hub's global directory to ``cache_dir`` while it loads; it is restored
    afterwards, also when loading fails.
    """

    name = "dreamsim"
    higher_is_similar = False

    def __init__(
        self,
        device: str | torch.device = "cpu",
        cache_dir: str | os.PathLike | None = None,
        dreamsim_type: str = "ensemble",
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        preprocess: Callable[[Image.Image], torch.Tensor] | None = None,
        batch_size: int = 16,
    ) -> None:
        self.batch_size = _check_batch_size(batch_size)
        self.device = torch.device(device)
        self.dreamsim_type = dreamsim_type
        if (model is None) != (preprocess is None):
            raise ValueError("Pass both `model` and `preprocess` to inject a DreamSim stand-in, or neither.")
        if model is None:
            self.cache_dir = _dreamsim_cache_dir(cache_dir)
            model, preprocess = self._load(self.device, self.cache_dir, dreamsim_type)
        else:
            self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.model = model
        self.preprocess = preprocess

    @staticmethod
    def _load(device: torch.device, cache_dir: Path, dreamsim_type: str) -> tuple[Callable, Callable]:
        if dreamsim_type not in _DREAMSIM_FILES:
            raise ValueError(f"Unknown dreamsim_type {dreamsim_type!r}; choose one of {sorted(_DREAMSIM_FILES)}.")
        try:
            from dreamsim import dreamsim as factory
        except ImportError as exc:
            raise ImportError(f"DreamSimDistance needs the `dreamsim` package: {_DREAMSIM_INSTALL}.") from exc
        except Exception as exc:  # e.g. torchvision's compiled ops not matching torch
            raise ImportError(
                f"The `dreamsim` package failed to import ({type(exc).__name__}: {exc}); usually torchvision does "
                f"not match torch. Install {_DREAMSIM_INSTALL}."
            ) from exc
        hub_dir = torch.hub.get_dir()
        try:
            return factory(pretrained=True, device=str(device), cache_dir=str(cache_dir), dreamsim_type=dreamsim_type)
        except Exception as exc:
            missing = dreamsim_missing_files(cache_dir, dreamsim_type)
            raise RuntimeError(
                f"Could not build DreamSim ({dreamsim_type!r}) from cache_dir={str(cache_dir)!r} "
                f"({type(exc).__name__}: {exc}). DreamSim downloads its checkpoint zip into cache_dir on first use; "
                "without network, unzip it there beforehand (and the torch.hub DINO repository and checkpoint) and "
                "pass cache_dir=... or set METAMERGEN_DREAMSIM_CACHE. "
                + (f"Missing there: {', '.join(missing)}." if missing else "All expected files are present.")
            ) from exc
        finally:
            torch.hub.set_dir(hub_dir)

    #: DreamSim's input side, pixels (its preprocessing squashes every image to it).
    image_size = 224

    def input_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """DreamSim's 224 x 224 input, whatever the original's size (squashed, no crop)."""
        return self.image_size, self.image_size

    @torch.no_grad()
    def _score(self, originals: list[ImageInput], generations: list[ImageInput]) -> np.ndarray:
        out = []
        pairs = list(zip(originals, generations))
        for chunk in _chunks(pairs, self.batch_size):
            a = torch.cat([self.preprocess(to_pil(o)) for o, _ in chunk]).to(self.device)
            b = torch.cat([self.preprocess(to_pil(g)) for _, g in chunk]).to(self.device)
            d = torch.as_tensor(self.model(a, b)).reshape(-1)
            if d.numel() != len(chunk):
                raise RuntimeError(f"The DreamSim model returned {d.numel()} distances for a batch of {len(chunk)}.")
            out.append(d.detach().double().cpu())
        return torch.cat(out).numpy()


# --------------------------------------------------------------------------- registry


def _dino_factory(
    image_encoder: PreTrainedModel | None = None,
    processor: Any | None = None,
    pipe: Any | None = None,
    batch_size: int = 16,
) -> DinoCosine:
    """:class:`DinoCosine` from ``pipe`` or from ``image_encoder`` and ``processor``."""
    if pipe is not None:
        if image_encoder is not None or processor is not None:
            raise ValueError("dino: pass either `pipe` or `image_encoder` and `processor`, not both.")
        return DinoCosine.from_pipeline(pipe, batch_size=batch_size)
    if image_encoder is None or processor is None:
        raise ValueError(
            "dino needs the pipeline's DINOv2: build_metrics([...], pipe=pipe) or "
            "dino={'image_encoder': pipe.image_encoder, 'processor': pipe.feature_extractor}."
        )
    return DinoCosine(image_encoder, processor, batch_size=batch_size)


#: Metric name -> factory.
METRICS: dict[str, Callable[..., Metric]] = {
    "psnr": PSNR,
    "mse": MSE,
    "ssim": SSIM,
    "color_hist": ColorHistogramDistance,
    "gabor": GaborEnergyDistance,
    "sobel": SobelEnergyDistance,
    "clip": CLIPSimilarity,
    "dreamsim": DreamSimDistance,
    "dino": _dino_factory,
}


def _accepted(factory: Callable[..., Metric]) -> set[str]:
    params = inspect.signature(factory).parameters.values()
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}


def build_metrics(names: Sequence[str], **options: Any) -> list[Metric]:
    """Build metrics by name, in the given order.

    Parameters
    ----------
    names
        Keys of :data:`METRICS`: ``psnr``, ``mse``, ``ssim``, ``color_hist``, ``gabor``, ``sobel``
        (weight-free) and ``clip``, ``dreamsim``, ``dino`` (model-based).
    **options
        Either shared keyword arguments, each passed to every requested metric that accepts it
        (e.g. ``device="cuda"``, ``batch_size=32``, ``pipe=pipe`` for ``dino``), or a mapping of
        keyword arguments for one metric under its name (e.g. ``clip={"model": "/weights/clip"}``),
        which takes precedence. An option no requested metric accepts is an error.

    Examples
    --------
    >>> build_metrics(["psnr", "ssim", "dino", "clip"], pipe=pipe, device="cuda")  # doctest: +SKIP
    """
    if isinstance(names, str):
        names = [names]
    names = list(names)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"Unknown metric name(s) {unknown}; valid names: {', '.join(METRICS)}.")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"Metric name(s) listed more than once: {duplicates}.")
    per_metric = {k: v for k, v in options.items() if k in METRICS}
    shared = {k: v for k, v in options.items() if k not in METRICS}
    for key, value in per_metric.items():
        if key not in names:
            raise TypeError(f"Options given for metric {key!r}, which is not among the requested {names}.")
        if not isinstance(value, Mapping):
            raise TypeError(
                f"Options for metric {key!r} must be a mapping of keyword arguments, got {type(value).__name__}."
            )
    kwargs_per_name = {}
    for n in names:
        kwargs = {k: v for k, v in shared.items() if k in _accepted(METRICS[n])}
        kwargs.update(per_metric.get(n, {}))
        kwargs_per_name[n] = kwargs
    unused = sorted(k for k in shared if not any(k in _accepted(METRICS[n]) for n in names))
    if unused:  # checked before any model is loaded
        raise TypeError(
            f"Option(s) {unused} are accepted by none of the requested metrics {names}; "
            + "; ".join(f"{n} accepts {sorted(_accepted(METRICS[n])) or 'nothing'}" for n in names)
            + "."
        )
    return [METRICS[n](**kwargs_per_name[n]) for n in names]
