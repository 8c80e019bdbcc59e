"""The model-metamers miniature (Feather et al. 2023, Boehm et al. 2025) on a CPU: toy object crops, small models.

No pretrained ImageNet model can be downloaded where this project is tested, so the papers' questions
are asked of small models trained here, on a task made from :mod:`metamergen.demo.toyworld`:

- **data** (:func:`crop_dataset`): 32 x 32 px RGB crops centred on the objects of seeded 64 px toy
  scenes (the scene is edge-padded so that an object near the border stays centred). The label is the
  object's **shape** (7 classes, :data:`~metamergen.demo.toyworld.SHAPES`). The colour is drawn
  independently of the shape, so it carries no label information; a shape x colour task (49 classes)
  would mostly test colour, which early layers already carry.
- **models**: :func:`small_cnn` (conv-ReLU stages, every ReLU its own ``nn.ReLU`` module, so layers
  are named by module path and can be fake ReLUs), the same CNN adversarially trained with
  :func:`pgd_attack` (Madry et al.: training on PGD examples only; L2 ball by default, as Feather's
  robust models), :class:`TinyViT` (patch embedding, transformer blocks, class token; pure torch),
  and a second CNN of another width and seed that no ensemble contains (the held-out judge of the
  ensemble question).
- **training** (:func:`train_miniature_models`): seeded, single-threaded CPU minutes, saved as
  safetensors with ``models.json`` (seeds, steps, settings, held-out accuracies, file hashes).

Every model maps ``(B, 3, 32, 32)`` RGB images in [0, 1] to ``(B, 7)`` logits; its first module
(``normalize``) centres the pixels (``(x - 0.5) / 0.25``: a fixed rescaling, not dataset statistics),
so metamer synthesis and recognition pass images in [0, 1] with no separate transform.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metamergen.demo.toyworld import SHAPES, ToyWorldConfig, generate_scene, scene_seeds
from metamergen.metamers.activations import Normalize
from metamergen.utils.io import atomic_write
from metamergen.utils.seeds import derive_seed

__all__ = [
    "CNN_LAYERS",
    "CROP_SIZE",
    "MINIATURE_MODELS",
    "MODELS_DIR",
    "VIT_LAYERS",
    "CropSet",
    "TinyViT",
    "crop_dataset",
    "evaluate_accuracy",
    "load_miniature_models",
    "object_crop",
    "pgd_attack",
    "small_cnn",
    "tiny_vit",
    "train_classifier",
    "train_miniature_models",
]

#: Side of a crop, pixels (the scenes are 64 px; objects are 8-14 px).
CROP_SIZE = 32
#: The CNNs' ReLU layers, early to late (module paths; ``relu4`` is the hidden fully connected layer).
CNN_LAYERS: tuple[str, ...] = ("relu1", "relu2", "relu3", "relu4")
#: The ViT's transformer block outputs, early to late (module paths).
VIT_LAYERS: tuple[str, ...] = ("blocks.0", "blocks.1", "blocks.2")
#: Where the trained miniature models are shipped.
MODELS_DIR = Path(__file__).resolve().parents[1] / "assets" / "metamer_models"
#: The models :func:`train_miniature_models` makes, in order.
MINIATURE_MODELS: tuple[str, ...] = ("cnn", "cnn_adv", "vit", "cnn_heldout")
#: Pixel centring of every miniature model (first module): ``(x - 0.5) / 0.25`` per channel.
_PIXEL_MEAN, _PIXEL_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
#: Split names and the scene seeds they draw from (disjoint: different split seeds never share a scene).
_SPLITS: tuple[str, ...] = ("train", "test", "study")

# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class CropSet:
    """Object crops of toy scenes and their labels.

    Attributes
    ----------
    images
        ``(N, 3, 32, 32)`` float32 RGB in [0, 1].
    labels
        ``(N,)`` int64: index of the centred object's shape in :data:`~metamergen.demo.toyworld.SHAPES`.
    colours
        The centred object's colour name, per crop.
    boxes
        ``(N, 4)`` int64 ``(x0, y0, x1, y1)``: the object's box in crop pixels (right/bottom exclusive).
    scene_seeds
        ``(N,)`` int64: the toyworld seed of the scene each crop comes from.
    object_index
        ``(N,)`` int64: the object's index in that scene's ``objects``.
    """

    images: Tensor
    labels: Tensor
    colours: tuple[str, ...] = field(repr=False)
    boxes: Tensor = field(repr=False)
    scene_seeds: Tensor = field(repr=False)
    object_index: Tensor = field(repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Sequence[int] | Tensor) -> CropSet:
        """The crops at ``index`` (in that order)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return CropSet(
            self.images[idx],
            self.labels[idx],
            tuple(self.colours[i] for i in idx.tolist()),
            self.boxes[idx],
            self.scene_seeds[idx],
            self.object_index[idx],
        )


def split_seeds(split: str, n_scenes: int, seed: int = 0) -> list[int]:
    """The toyworld scene seeds of a split (``train``, ``test``, ``study``); splits never share a scene."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {', '.join(_SPLITS)}, got {split!r}.")
    return scene_seeds(derive_seed(int(seed), "metamer-miniature", split, bits=20), int(n_scenes))


def object_crop(
    pixels: np.ndarray, centre: tuple[float, float], size: int = CROP_SIZE
) -> tuple[np.ndarray, tuple[int, int]]:
    """The ``size`` x ``size`` window of a scene centred on an object, the models' input frame.

    Parameters
    ----------
    pixels
        ``(H, W, 3)`` uint8 scene (or render at the scene's size), pixels of the scene image.
    centre
        The object's box centre ``(x, y)`` in the continuous pixel frame of that image.
    size
        Crop side, pixels (even).

    Returns
    -------
    crop, (left, top)
        ``(size, size, 3)`` uint8, whose centre pixel is ``floor`` of ``centre``; the scene is
        padded by ``size // 2`` pixels replicating its border, so the object stays centred near an
        edge. ``(left, top)`` is the crop's corner in scene pixels (may be negative).
    """
    half = size // 2
    padded = np.pad(pixels, ((half, half), (half, half), (0, 0)), mode="edge")
    left, top = int(math.floor(centre[0])) - half, int(math.floor(centre[1])) - half
    return padded[top + half : top + half + size, left + half : left + half + size], (left, top)


def crop_dataset(split: str, n_scenes: int, *, seed: int = 0, size: int = CROP_SIZE) -> CropSet:
    """One ``size`` x ``size`` crop per object of ``n_scenes`` seeded 64 px toy scenes, label = shape.

    Parameters
    ----------
    split
        ``"train"``, ``"test"`` or ``"study"``: which disjoint set of scene seeds to draw.
    n_scenes
        Scenes to generate (2-5 objects each, so about 3.5 crops per scene).
    seed
        Seed of the dataset (with ``split``, it fixes every scene).
    size
        Crop side, pixels (even; >= 16 so the largest, 14 px object fits).

    Returns
    -------
    CropSet
        Crops in scene order, objects in drawing order; deterministic for ``(split, n_scenes, seed)``.

    Notes
    -----
    The scene is padded by ``size // 2`` pixels replicating its border, and the crop is the
    ``size`` x ``size`` window whose centre pixel is ``floor`` of the object's box centre, so the
    object is always centred and whole. Neighbouring objects may show at the crop's edges.
    """
    if size < 16 or size % 2:
        raise ValueError(f"size must be an even number >= 16, got {size}.")
    cfg = ToyWorldConfig(size=64)
    images, labels, colours, boxes, seeds, index = [], [], [], [], [], []
    for scene_seed in split_seeds(split, n_scenes, seed):
        scene = generate_scene(scene_seed, cfg)
        pixels = np.asarray(scene.image, dtype=np.uint8)
        for k, obj in enumerate(scene.objects):
            crop, (left, top) = object_crop(pixels, obj.centre, size)
            images.append(crop)
            labels.append(SHAPES.index(obj.shape))
            colours.append(obj.colour)
            x0, y0, x1, y1 = obj.box
            boxes.append((x0 - left, y0 - top, x1 - left, y1 - top))
            seeds.append(scene_seed)
            index.append(k)
    arr = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return CropSet(
        images=torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(255.0).contiguous(),
        labels=torch.tensor(labels, dtype=torch.long),
        colours=tuple(colours),
        boxes=torch.tensor(boxes, dtype=torch.long).reshape(-1, 4),
        scene_seeds=torch.tensor(seeds, dtype=torch.long),
        object_index=torch.tensor(index, dtype=torch.long),
    )


# ----------------------------------------------------------------------------- models


def _normalize() -> Normalize:
    return Normalize(_PIXEL_MEAN, _PIXEL_STD)


def small_cnn(
    seed: int = 0, *, widths: Sequence[int] = (16, 32, 64), hidden: int = 64, n_classes: int = len(SHAPES)
) -> nn.Sequential:
    """A small CNN: three conv-ReLU stages (stride 1, 2, 2), global average pool, a hidden ReLU layer, logits.

    Parameters
    ----------
    seed
        Seed of the initial weights (PyTorch's default initialisation, under a fork of the global RNG
        so the caller's random state is untouched).
    widths
        Channels of the three 3 x 3 convolutions.
    hidden
        Units of the hidden fully connected layer.
    n_classes
        Outputs.

    Returns
    -------
    torch.nn.Sequential
        Module paths ``normalize, conv1, relu1, conv2, relu2, conv3, relu3, pool, flatten, fc1, relu4, fc``;
        ``(B, 3, 32, 32)`` in [0, 1] -> ``(B, n_classes)``. ``relu1``: ``(B, w1, 32, 32)``, ``relu2``:
        ``(B, w2, 16, 16)``, ``relu3``: ``(B, w3, 8, 8)``, ``relu4``: ``(B, hidden)`` (:data:`CNN_LAYERS`).
        Trainable and in training mode (freeze it for synthesis).
    """
    w1, w2, w3 = (int(w) for w in widths)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return nn.Sequential(
            OrderedDict(
                [
                    ("normalize", _normalize()),
                    ("conv1", nn.Conv2d(3, w1, 3, padding=1)),
                    ("relu1", nn.ReLU()),
                    ("conv2", nn.Conv2d(w1, w2, 3, stride=2, padding=1)),
                    ("relu2", nn.ReLU()),
                    ("conv3", nn.Conv2d(w2, w3, 3, stride=2, padding=1)),
                    ("relu3", nn.ReLU()),
                    ("pool", nn.AdaptiveAvgPool2d(1)),
                    ("flatten", nn.Flatten()),
                    ("fc1", nn.Linear(w3, hidden)),
                    ("relu4", nn.ReLU()),
                    ("fc", nn.Linear(hidden, n_classes)),
                ]
            )
        )


class _Attention(nn.Module):
    """Multi-head self-attention (``F.scaled_dot_product_attention``), one qkv projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads}).")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (b, heads, n, d / heads)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class _Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """A small vision transformer: patch embedding, class token, pre-norm blocks, a linear head.

    Parameters
    ----------
    image_size, patch
        Input side and patch side, pixels (``image_size`` a multiple of ``patch``).
    dim, depth, heads, mlp
        Token width, number of blocks, attention heads, hidden units of each block's MLP.
    n_classes
        Outputs.

    Notes
    -----
    ``(B, 3, image_size, image_size)`` in [0, 1] -> ``(B, n_classes)`` (the class token's final state).
    Block ``i`` is the module path ``blocks.i``; its output is ``(B, 1 + (image_size / patch) ** 2, dim)``.
    """

    def __init__(
        self,
        *,
        image_size: int = CROP_SIZE,
        patch: int = 4,
        dim: int = 64,
        depth: int = 3,
        heads: int = 4,
        mlp: int = 128,
        n_classes: int = len(SHAPES),
    ) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size ({image_size}) must be a multiple of patch ({patch}).")
        n_tokens = (image_size // patch) ** 2
        self.normalize = _normalize()
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + n_tokens, dim) * 0.02)
        self.blocks = nn.ModuleList([_Block(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, 3, H, W)`` in [0, 1] -> ``(B, n_classes)`` logits."""
        tokens = self.patch_embed(self.normalize(x)).flatten(2).transpose(1, 2)  # (B, n_tokens, dim)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1) + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens[:, 0]))


def tiny_vit(seed: int = 0, **kwargs: Any) -> TinyViT:
    """:class:`TinyViT` with weights drawn under ``seed`` (the global random state is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return TinyViT(**kwargs)


# ----------------------------------------------------------------------------- adversarial examples


def _per_image_norm(t: Tensor) -> Tensor:
    """``(B, ...)`` -> ``(B, 1, ..., 1)`` L2 norms of each image."""
    return torch.linalg.vector_norm(t.flatten(1), dim=1).view(-1, *([1] * (t.ndim - 1)))


def pgd_attack(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    norm: Literal["l2", "linf"] = "l2",
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Projected gradient ascent on the cross-entropy: adversarial images within ``eps`` of ``images``.

    Parameters
    ----------
    model
        Maps ``(B, 3, H, W)`` in [0, 1] to ``(B, K)`` logits. Its parameters' gradients are not touched.
    images
        ``(B, 3, H, W)`` float in [0, 1].
    labels
        ``(B,)`` int64 true labels.
    eps
        Radius of the ball around each image, in pixel units ([0, 1] scale): L2 norm of the whole
        perturbation (``"l2"``) or largest absolute pixel change (``"linf"``).
    steps
        Ascent steps (0 returns the random start, or the images).
    step_size
        Length of a step: L2 norm (``"l2"``: ``x + a g / ||g||``) or per pixel (``"linf"``: ``x + a sign(g)``).
    norm
        ``"l2"`` or ``"linf"``.
    random_start
        Start from a uniform draw in the ball (L2: a uniform direction and a radius uniform in
        ``[0, eps]``; L-inf: uniform per pixel) instead of the images themselves.
    generator
        Random source of the start (``None``: the global one).

    Returns
    -------
    Tensor
        ``(B, 3, H, W)`` detached adversarial images, in [0, 1] and within ``eps`` of ``images``.

    Notes
    -----
    Each step: ascend, project the perturbation onto the ball (L2: scale it down to norm ``eps``
    if longer; L-inf: clamp each pixel to ``[-eps, eps]``), then clamp the image to [0, 1] (which
    can only shrink the perturbation, so the result stays in the ball). ``g`` is the gradient of
    the cross-entropy summed over the batch, so each image's step does not depend on the batch size.
    """
    if norm not in ("l2", "linf"):
        raise ValueError(f"norm must be 'l2' or 'linf', got {norm!r}.")
    if not eps >= 0 or not step_size >= 0 or int(steps) < 0:
        raise ValueError(f"eps, step_size and steps must be >= 0, got {eps}, {step_size}, {steps}.")
    x0 = images.detach()
    x = x0.clone()
    if random_start and eps > 0:
        if norm == "l2":
            direction = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
            radius = torch.rand(len(x0), generator=generator, dtype=x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
            delta = direction / _per_image_norm(direction) * radius * eps
        else:
            delta = (torch.rand(x0.shape, generator=generator, dtype=x0.dtype) * 2 - 1) * eps
        x = (x0 + delta.to(x0.device)).clamp(0, 1)
    for _ in range(int(steps)):
        x.requires_grad_(True)
        loss = F.cross_entropy(model(x), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            if norm == "l2":
                x = x + step_size * grad / (_per_image_norm(grad) + 1e-12)
                delta = x - x0
                delta = delta * torch.clamp(eps / (_per_image_norm(delta) + 1e-12), max=1.0)  # project on the ball
            else:
                x = x + step_size * grad.sign()
                delta = (x - x0).clamp(-eps, eps)
            x = (x0 + delta).clamp(0, 1)
    return x.detach()


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class Adversary:
    """PGD settings of adversarial training (see :func:`pgd_attack`).

    The default L2 radius, 0.5 on 32 x 32 x 3 images in [0, 1], is about Feather et al.'s robust
    ImageNet models' 3.0 on 224 x 224 x 3 scaled by the square root of the pixel counts (0.43).
    """

    eps: float = 0.5
    steps: int = 3
    step_size: float = 0.25
    norm: Literal["l2", "linf"] = "l2"

    def to_dict(self) -> dict[str, Any]:
        """Plain values (the keyword arguments of :func:`pgd_attack`)."""
        return {"eps": self.eps, "steps": self.steps, "step_size": self.step_size, "norm": self.norm}

    def at(self, fraction: float) -> Adversary:
        """This attack with ``eps`` and ``step_size`` scaled by ``fraction`` in [0, 1] (the warm-up ramp)."""
        f = min(1.0, max(0.0, float(fraction)))
        return Adversary(self.eps * f, self.steps, self.step_size * f, self.norm)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, images: Tensor, labels: Tensor, *, batch_size: int = 256) -> float:
    """Fraction of ``(N, 3, H, W)`` images in [0, 1] whose argmax logit equals ``labels`` (model put in eval mode)."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        correct += int(
            (model(images[start : start + batch_size]).argmax(1) == labels[start : start + batch_size]).sum()
        )
    return correct / max(1, len(images))


def train_classifier(
    model: nn.Module,
    data: CropSet,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    adversary: Adversary | None = None,
    warmup: float = 0.3,
    log: Callable[[str], None] | None = None,
) -> nn.Module:
    """Train ``model`` on ``data`` with AdamW and a cosine learning rate; adversarially with ``adversary``.

    Parameters
    ----------
    model
        A :func:`small_cnn` or :class:`TinyViT` (trained in place).
    data
        The training crops.
    steps, batch_size, lr, weight_decay
        Optimisation length (batches), batch size, peak learning rate (cosine decay to 0), AdamW's decay.
    seed
        Seed of the batch order, the horizontal flips (a flip keeps every shape's label) and the PGD starts.
    adversary
        ``None``: standard training. Otherwise each batch is replaced by its :func:`pgd_attack` examples
        (Madry et al.'s adversarial training, as the robust models of Feather et al.).
    warmup
        Fraction of the steps over which the attack's radius grows linearly from 0 to ``adversary.eps``
        (with the full radius from the first step, the small CNN stayed at chance: loss ln 7 after 600 steps).
    log
        Called with a progress line every ~10 % of the steps.

    Returns
    -------
    torch.nn.Module
        ``model``, in eval mode, parameters still trainable.
    """
    generator = torch.Generator().manual_seed(derive_seed(int(seed), "miniature-train"))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps)))
    n = len(data)
    order = torch.randperm(n, generator=generator)
    cursor = 0
    running = 0.0
    for step in range(int(steps)):
        if cursor + batch_size > n:  # a new epoch: reshuffle
            order, cursor = torch.randperm(n, generator=generator), 0
        idx = order[cursor : cursor + batch_size]
        cursor += batch_size
        x, y = data.images[idx], data.labels[idx]
        flip = torch.rand(len(idx), generator=generator) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        if adversary is not None:
            model.eval()
            ramp = adversary.at((step + 1) / (warmup * steps) if warmup > 0 else 1.0)
            x = pgd_attack(model, x, y, **ramp.to_dict(), generator=generator)
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running = 0.95 * running + 0.05 * loss.item() if step else loss.item()
        if log is not None and (step + 1) % max(1, steps // 10) == 0:
            log(f"  step {step + 1}/{steps}: loss {running:.3f}")
    return model.eval()


def _freeze(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def _build(spec: Mapping[str, Any]) -> nn.Module:
    """A fresh model from its ``models.json`` entry (``factory`` and ``kwargs``)."""
    factory = {"small_cnn": small_cnn, "tiny_vit": tiny_vit}[spec["factory"]]
    return factory(**spec["kwargs"])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


#: Training settings per model: full and quick (CI-size: seconds). Scenes per split are shared.
_PLAN: dict[str, dict[str, Any]] = {
    "cnn": {"factory": "small_cnn", "kwargs": {"seed": 1}, "steps": (2000, 20), "lr": 2e-3},
    "cnn_adv": {
        "factory": "small_cnn",
        "kwargs": {"seed": 1},
        "steps": (2000, 20),
        "lr": 2e-3,
        "adversary": Adversary(),
    },
    "vit": {"factory": "tiny_vit", "kwargs": {"seed": 3}, "steps": (2500, 20), "lr": 1e-3},
    "cnn_heldout": {
        "factory": "small_cnn",
        "kwargs": {"seed": 4, "widths": [24, 48, 48], "hidden": 96},
        "steps": (2000, 20),
        "lr": 2e-3,
    },
}
_SCENES = {"train": (1500, 30), "test": (300, 20)}


def train_miniature_models(
    out_dir: str | os.PathLike = MODELS_DIR,
    *,
    quick: bool = False,
    seed: int = 0,
    models: Sequence[str] = MINIATURE_MODELS,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Train the miniature's models and save them as ``<name>.safetensors`` plus ``models.json``.

    Parameters
    ----------
    out_dir
        Folder to write (created); default the shipped :data:`MODELS_DIR`.
    quick
        CI size: 20 steps on 30 scenes per model (seconds; the models are barely trained).
    seed
        Dataset seed (the models' own seeds are fixed in the plan and recorded).
    models
        Which of :data:`MINIATURE_MODELS` to train.
    log
        Progress lines (``None``: silent).

    Returns
    -------
    dict
        What ``models.json`` holds: per model its factory and arguments, training settings, held-out
        clean accuracy (and PGD accuracy for every model under the adversarial-training attack),
        wall-clock seconds, parameter count and file hash; the dataset's seeds and sizes.

    Notes
    -----
    Runs on the CPU with whatever thread count torch has (the documented timings are single-threaded).
    """
    from safetensors.torch import save_file

    unknown = sorted(set(models) - set(MINIATURE_MODELS))
    if unknown:
        raise ValueError(f"unknown model name(s) {unknown}; known: {list(MINIATURE_MODELS)}.")
    out = Path(out_dir)
    q = 1 if quick else 0
    say = log or (lambda _line: None)
    train = crop_dataset("train", _SCENES["train"][q], seed=seed)
    test = crop_dataset("test", _SCENES["test"][q], seed=seed)
    say(f"data: {len(train)} training crops, {len(test)} held-out crops ({len(SHAPES)} shapes)")
    record: dict[str, Any] = {
        "quick": bool(quick),
        "dataset": {
            "seed": seed,
            "crop_size": CROP_SIZE,
            "classes": list(SHAPES),
            "train_scenes": _SCENES["train"][q],
            "test_scenes": _SCENES["test"][q],
            "train_crops": len(train),
            "test_crops": len(test),
        },
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "models": {},
    }
    previous = out / "models.json"
    if previous.exists():  # keep the entries of models not retrained now
        old = json.loads(previous.read_text())
        if old.get("quick") == bool(quick) and old.get("dataset", {}).get("seed") == seed:
            record["models"].update({k: v for k, v in old.get("models", {}).items() if k not in models})
    attack = Adversary()
    for name in models:
        plan = _PLAN[name]
        steps = plan["steps"][q]
        model = _build(plan)
        say(
            f"{name}: {steps} steps{' (adversarial, PGD ' + str(plan['adversary'].to_dict()) + ')' if 'adversary' in plan else ''}"
        )
        start = time.perf_counter()
        train_classifier(
            model,
            train,
            steps=steps,
            lr=plan["lr"],
            seed=derive_seed(seed, "miniature-model", name),
            adversary=plan.get("adversary"),
            log=say,
        )
        seconds = time.perf_counter() - start
        clean = evaluate_accuracy(model, test.images, test.labels)
        adv_images = pgd_attack(
            model, test.images, test.labels, **attack.to_dict(), generator=torch.Generator().manual_seed(seed)
        )
        robust = evaluate_accuracy(model, adv_images, test.labels)
        path = out / f"{name}.safetensors"
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        atomic_write(path, lambda tmp, s=state: save_file(s, tmp))
        record["models"][name] = {
            "factory": plan["factory"],
            "kwargs": plan["kwargs"],
            "steps": steps,
            "batch_size": 64,
            "lr": plan["lr"],
            "adversary": plan["adversary"].to_dict() if "adversary" in plan else None,
            "train_seed": derive_seed(seed, "miniature-model", name),
            "test_accuracy": clean,
            "test_accuracy_under_pgd": robust,
            "pgd_of_the_evaluation": attack.to_dict(),
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_seconds": round(seconds, 1),
            "file": path.name,
            "sha256": _sha256(path),
        }
        say(f"{name}: held-out accuracy {clean:.3f}, under PGD {robust:.3f}, {seconds:.0f} s")
    record["models"] = {k: record["models"][k] for k in MINIATURE_MODELS if k in record["models"]}
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(out / "models.json", lambda tmp: Path(tmp).write_text(text))
    return record


def load_miniature_models(
    model_dir: str | os.PathLike = MODELS_DIR, names: Sequence[str] = MINIATURE_MODELS
) -> dict[str, nn.Module]:
    """The saved miniature models, frozen and in eval mode: name -> model (``(B, 3, 32, 32)`` in [0, 1] -> logits).

    Raises
    ------
    FileNotFoundError
        ``models.json`` or a model's file is missing (train them with :func:`train_miniature_models`).
    ValueError
        A file's hash differs from the one ``models.json`` recorded.
    """
    from safetensors.torch import load_file

    folder = Path(model_dir)
    index = folder / "models.json"
    if not index.exists():
        raise FileNotFoundError(
            f"{index} not found: train the models first (python inference/model_metamers_miniature.py --train)."
        )
    specs = json.loads(index.read_text())["models"]
    out: dict[str, nn.Module] = {}
    for name in names:
        if name not in specs:
            raise FileNotFoundError(f"{index} has no model {name!r} (it has {sorted(specs)}).")
        path = folder / specs[name]["file"]
        if not path.exists():
            raise FileNotFoundError(f"{path} not found (listed in {index}).")
        if _sha256(path) != specs[name]["sha256"]:
            raise ValueError(f"{path} differs from the file {index} records (sha256); retrain or restore it.")
        model = _build(specs[name])
        model.load_state_dict(load_file(str(path)))
        out[name] = _freeze(model)
    return out
