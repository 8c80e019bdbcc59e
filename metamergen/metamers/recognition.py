"""Are metamers recognised? By the model that made them, and by other models, with bootstrap intervals.

Feather et al. count a metamer as made only if the generating model gives it the label it gives the
natural image, then report other models' accuracy on the metamers with a bootstrap error. Here a
model is any classifier ``nn.Module`` with its own input transform; ``decide`` turns its output
into labels (argmax by default; e.g. Feather's 16-way choice among ImageNet classes is a
``decide`` function). Intervals are percentile bootstraps over images
(:func:`metamergen.evaluation.statistics.bootstrap_ci`), one derived seed per (model, layer) cell.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from metamergen.evaluation.statistics import bootstrap_ci, derive_cell_seed

# Not plenoptic: it has no recognition test.
__all__ = [
    "Classifier",
    "Recognition",
    "predict",
    "recognition_accuracy",
    "recognition_from_correct",
    "recognition_table",
]


@dataclass(frozen=True)
class Classifier:
    """A classifier and how to call it.

    Attributes
    ----------
    model
        ``nn.Module`` mapping transformed ``(B, C, H, W)`` images to ``(B, K)`` scores.
    transform
        Applied to images in [0, 1] first (``None``: as they are).
    decide
        ``(B, K)`` scores -> ``(B,)`` integer labels (``None``: argmax).
    """

    model: nn.Module
    transform: Callable[[Tensor], Tensor] | None = None
    decide: Callable[[Tensor], Tensor] | None = None


@dataclass(frozen=True)
class Recognition:
    """Accuracy of one model on one set of images, with its bootstrap interval over images."""

    model: str
    layer: str
    accuracy: float
    ci_low: float
    ci_high: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        """Plain values, one table row."""
        return asdict(self)


def _as_classifier(c: Classifier | nn.Module) -> Classifier:
    return c if isinstance(c, Classifier) else Classifier(c)


@torch.no_grad()
def predict(classifier: Classifier | nn.Module, images: Tensor, *, batch_size: int = 64) -> Tensor:
    """Labels of ``(N, C, H, W)`` images in [0, 1]: ``(N,)`` int64 on the CPU.

    The model runs in whatever mode it is in; put it in eval mode first (batch norm, dropout).
    """
    c = _as_classifier(classifier)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    device = next((p.device for p in c.model.parameters()), images.device)
    labels = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device)
        scores = c.model(c.transform(x) if c.transform is not None else x)
        out = c.decide(scores) if c.decide is not None else scores.argmax(dim=1)
        labels.append(torch.as_tensor(out).reshape(-1).long().cpu())
    return torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)


def recognition_accuracy(
    classifier: Classifier | nn.Module,
    images: Tensor,
    labels: Tensor | np.ndarray | list[int],
    *,
    model_name: str = "model",
    layer: str = "",
    n_boot: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Recognition:
    """Accuracy of ``classifier`` on ``images`` against ``labels``, with a percentile-bootstrap interval.

    Parameters
    ----------
    classifier
        A :class:`Classifier` or a bare ``nn.Module``.
    images
        ``(N, C, H, W)`` metamers in [0, 1].
    labels
        ``(N,)`` the labels they should get: the true labels, or (Feather's check of the generating
        model) that model's labels for the natural images.
    model_name, layer
        Recorded in the result and used, with ``seed``, to derive the bootstrap seed of this cell.
    n_boot, confidence
        As :func:`~metamergen.evaluation.statistics.bootstrap_ci`.
    """
    labels = torch.as_tensor(np.asarray(labels)).reshape(-1).long()
    if len(labels) != len(images):
        raise ValueError(f"need one label per image, got {len(labels)} labels for {len(images)} images.")
    correct = (predict(classifier, images) == labels).numpy()
    return recognition_from_correct(
        correct, model_name=model_name, layer=layer, n_boot=n_boot, confidence=confidence, seed=seed
    )


def recognition_from_correct(
    correct: np.ndarray | Sequence[bool],
    *,
    model_name: str = "model",
    layer: str = "",
    n_boot: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Recognition:
    """Accuracy and its percentile-bootstrap interval from per-image outcomes (what
    :func:`recognition_accuracy` computes after predicting).

    Parameters
    ----------
    correct
        ``(N,)`` bools: was each metamer recognised (by one model, or by every model of a set).
    model_name, layer, n_boot, confidence, seed
        As :func:`recognition_accuracy` (the bootstrap seed is derived from all three names).
    """
    correct = np.asarray(correct, dtype=np.float64).reshape(-1)
    mean, low, high = bootstrap_ci(
        correct, n_boot=n_boot, confidence=confidence, seed=derive_cell_seed(seed, ("recognition", model_name, layer))
    )
    return Recognition(model=model_name, layer=layer, accuracy=mean, ci_low=low, ci_high=high, n=len(correct))


def recognition_table(
    classifiers: Mapping[str, Classifier | nn.Module],
    metamers: Mapping[str, Tensor],
    labels: Tensor | np.ndarray | list[int],
    *,
    n_boot: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[Recognition]:
    """Recognition of each layer's metamers by each classifier: one row per (model, layer).

    Parameters
    ----------
    classifiers
        Name -> classifier (the generating model among them, or not).
    metamers
        Layer (or any condition name) -> ``(N, C, H, W)`` metamers of the same N natural images.
    labels
        ``(N,)`` the labels every set should get.
    """
    return [
        recognition_accuracy(
            c, images, labels, model_name=name, layer=layer, n_boot=n_boot, confidence=confidence, seed=seed
        )
        for layer, images in metamers.items()
        for name, c in classifiers.items()
    ]
