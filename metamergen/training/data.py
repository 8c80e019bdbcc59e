"""Training samples: images (or real scanpaths) -> VAE pixels, encoder canvas, foveal mask, blur level.

Two sources (see ``docs/design.md``, "Training" and "Fixations"):

(a) plain images with **random fixations**, as the paper trains: each sample keeps K random patches,
    K drawn from ``fixation_counts`` (paper {1, 2, 3, 5, 10}), and a random blur level s from
    ``blur_levels`` (paper {1/16, 1/8, 1/4, 1/2, 1});
(b) real scanpaths: each sample keeps the viewer's first N fixations, N drawn from ``fixation_counts``
    (capped at the scanpath's length), mapped to patches by the paper's rule.

Randomness is a pure function of ``(seed, epoch, index)``, so data order and content do not depend
on worker processes, and a resumed run sees exactly the samples an uninterrupted run would.
Unreadable images are replaced by the next readable sample and reported (``skipped`` in each batch:
the item and the reason; :class:`BadDataLog` keeps the distinct items for the run's data report),
or raise when ``skip_bad_samples`` is off.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from metamergen.encoders.dinov2 import BitImageProcessor, canvas_size, encoder_canvas
from metamergen.fixations.records import Scanpath
from metamergen.foveation.fovea import random_patch_mask, token_mask
from metamergen.foveation.frame import EncoderFrame
from metamergen.utils.seeds import derive_seed

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}

__all__ = [
    "AdapterTrainingDataset",
    "BadSampleError",
    "SampleSource",
    "TrainingItem",
    "collate",
    "list_images",
    "open_rgb",
    "vae_pixels",
]


class BadSampleError(RuntimeError):
    """A sample that cannot be used (missing or corrupt image, unusable record)."""


@dataclass(frozen=True)
class TrainingItem:
    """One training source entry.

    Attributes
    ----------
    key
        Stable identifier (file path or dataset row), reported when the item is bad.
    load
        Returns the RGB image; raises on failure.
    scanpath
        Real fixations in pixels of that image, or None for random fixations.
    """

    key: str
    load: Callable[[], Image.Image]
    scanpath: Scanpath | None = None


def list_images(folder: str | Path) -> list[Path]:
    """Image files below ``folder`` (recursive, sorted for a stable order).

    Listed here rather than through ``datasets``' imagefolder builder so that 100k-image folders
    need no Arrow copy and each file's decoding errors stay per sample.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {root} does not exist.")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"No images ({', '.join(sorted(IMAGE_SUFFIXES))}) found below {root}.")
    return files


def open_rgb(path: Path) -> Image.Image:
    """The image file at ``path`` as RGB, read whole (:func:`metamergen.utils.images.load_image`)."""
    from metamergen.utils.images import load_image

    return load_image(path)


def vae_pixels(image: Image.Image, resolution: int) -> torch.Tensor:
    """The image squashed to ``resolution`` x ``resolution`` as a ``(3, R, R)`` float tensor in [-1, 1] (VAE input)."""
    resized = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(resized, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


class SampleSource(torch.utils.data.Dataset):
    """Shared mechanics of the training datasets: per-sample randomness from (seed, epoch, index),
    the foveal mask rule, and replacing unusable items by the next usable one (counted)."""

    def __init__(
        self,
        items: Sequence[TrainingItem],
        *,
        fixation_counts: Sequence[int],
        blur_levels: Sequence[float],
        seed: int = 0,
        skip_bad_samples: bool = True,
    ) -> None:
        if not items:
            raise ValueError("The training set is empty.")
        if not fixation_counts or min(fixation_counts) < 0:
            raise ValueError(f"fixation_counts must be non-negative integers, got {fixation_counts}.")
        if not blur_levels or not all(0 < s <= 1 for s in blur_levels):
            raise ValueError(f"blur_levels must lie in (0, 1], got {blur_levels}.")
        self.items = list(items)
        self.fixation_counts = [int(k) for k in fixation_counts]
        self.blur_levels = [float(s) for s in blur_levels]
        self.seed = int(seed)
        self.skip_bad_samples = skip_bad_samples
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Epoch number mixed into the per-sample randomness (new masks and blur levels each epoch)."""
        self.epoch = int(epoch)

    def _draw(self, index: int) -> tuple[torch.Generator, int, float]:
        """This sample's generator, fixation count and blur level."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, index, bits=63))
        count = self.fixation_counts[int(torch.randint(len(self.fixation_counts), (1,), generator=g))]
        blur = self.blur_levels[int(torch.randint(len(self.blur_levels), (1,), generator=g))]
        return g, count, blur

    def _mask(self, item: TrainingItem, frame: EncoderFrame, count: int, g: torch.Generator) -> torch.Tensor:
        """``(T,)`` bool: ``count`` random patches, or the scanpath's first ``count`` fixations."""
        if item.scanpath is None:
            return random_patch_mask(count, frame.grid_size, generator=g).ravel()
        if (item.scanpath.width, item.scanpath.height) != (frame.image_width, frame.image_height):
            raise BadSampleError(
                f"scanpath is for a {item.scanpath.width}x{item.scanpath.height} image, "
                f"file is {frame.image_width}x{frame.image_height}"
            )
        return torch.from_numpy(token_mask(item.scanpath.xy[:count], frame).ravel())

    def _make(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        skipped: list[str] = []
        for attempt in range(len(self.items)):
            i = (index + attempt) % len(self.items)
            try:
                sample = self._make(i)
            except BadSampleError as err:
                if not self.skip_bad_samples:
                    raise BadSampleError(f"{self.items[i].key}: {err}") from err
                skipped.append((self.items[i].key, str(err).split(" (")[0]))
                continue
            sample["index"] = i
            sample["skipped"] = skipped
            return sample
        raise BadSampleError("Every item of the training set is unusable; check the data paths.")


class AdapterTrainingDataset(SampleSource):
    """Map-style dataset of adapter-training samples.

    Each sample is a dict:

    - ``pixel_values``: ``(3, R, R)`` float in [-1, 1], the image squashed to the training resolution (VAE input);
    - ``encoder_pixels``: ``(3, S, S)`` normalised encoder canvas (squash framing, as the pipeline's default);
    - ``foveal_mask``: ``(G * G,)`` bool, token order;
    - ``blur``: peripheral down/up scale s;
    - ``index``: the dataset index actually used; ``skipped``: reasons for items replaced on the way.

    Parameters
    ----------
    items
        The source entries.
    processor
        The pipeline's DINOv2 image processor (defines the canvas size S).
    patch_size
        Encoder patch size (14 for DINOv2).
    resolution
        Training resolution R, pixels.
    fixation_counts, blur_levels
        The sets K (or prefix lengths N) and s are drawn from.
    seed
        Base seed of all per-sample randomness.
    skip_bad_samples
        Replace an unusable item by the next usable one (and count it) instead of raising.
    """

    def __init__(
        self,
        items: Sequence[TrainingItem],
        *,
        processor: BitImageProcessor,
        patch_size: int,
        resolution: int,
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
        self.processor = processor
        self.canvas = canvas_size(processor)
        self.patch_size = int(patch_size)
        self.resolution = int(resolution)

    def _make(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        try:
            image = item.load()
        except Exception as err:  # any decoding/IO failure makes the item bad, whatever the library raised
            raise BadSampleError(f"unreadable image ({type(err).__name__})") from err
        g, count, blur = self._draw(index)
        canvas, (frame,) = encoder_canvas(self.processor, [image], patch_size=self.patch_size)
        mask = self._mask(item, frame, count, g)
        encoder_pixels = canvas[0]
        return {
            "pixel_values": vae_pixels(image, self.resolution),
            "encoder_pixels": encoder_pixels,
            "foveal_mask": mask,
            "blur": blur,
        }


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into a batch (tensors stacked, ``blur``/``index`` as tensors); ``skipped``
    becomes one list of ``(item key, reason)`` pairs, one per replaced draw."""
    batch: dict[str, Any] = {
        k: torch.stack([s[k] for s in samples]) for k, v in samples[0].items() if isinstance(v, torch.Tensor)
    }
    batch["blur"] = torch.tensor([s["blur"] for s in samples], dtype=torch.float32)
    batch["index"] = torch.tensor([s["index"] for s in samples], dtype=torch.long)
    batch["skipped"] = [tuple(pair) for s in samples for pair in s["skipped"]]
    return batch


class BadDataLog:
    """The unusable items a run met: each distinct item once, with its reason, and the draws replaced.

    A bad item is drawn again every epoch, so counting draws would report the same file many times
    (and only the draws since the last resume); this counts items. Its :meth:`state_dict` goes into
    each checkpoint's ``train_state.json`` so a resumed run reports what the whole run met.
    """

    def __init__(self) -> None:
        self.items: dict[str, str] = {}
        self.replaced_draws = 0

    def update(self, skipped: Sequence[tuple[str, str]]) -> None:
        """Record a batch's ``skipped`` pairs (from :func:`collate`)."""
        for key, reason in skipped:
            self.items.setdefault(str(key), str(reason))
        self.replaced_draws += len(skipped)

    def state_dict(self) -> dict[str, Any]:
        return {"items": dict(self.items), "replaced_draws": self.replaced_draws}

    def load_state_dict(self, state: dict[str, Any], *, count_draws: bool = True) -> None:
        """Restore a saved log; ``count_draws=False`` takes only the items (the other ranks of a
        multi-process run, so that the draws are not counted once per process)."""
        self.items.update({str(k): str(v) for k, v in state.get("items", {}).items()})
        if count_draws:
            self.replaced_draws += int(state.get("replaced_draws", 0))

    @classmethod
    def merged(cls, parts: Sequence[dict[str, Any]]) -> BadDataLog:
        """One log from every process's :meth:`state_dict`."""
        log = cls()
        for part in parts:
            log.load_state_dict(part)
        return log

    def counts(self) -> Counter:
        """Distinct items per reason."""
        return Counter(self.items.values())

    def summary(self, limit: int = 3) -> str:
        """One line: items per reason, the first few named (e.g. for the end-of-run warning)."""
        parts = []
        for reason, n in sorted(self.counts().items()):
            names = [k for k, r in self.items.items() if r == reason]
            shown = ", ".join(Path(k).name for k in names[:limit]) + (", ..." if n > limit else "")
            parts.append(f"{n} {reason} ({shown})")
        return "; ".join(parts)
