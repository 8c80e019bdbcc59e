"""Representational similarity of a set of images, and how far metamers move its distribution (JSD).

Boehm et al. (2025) compare, for an evaluating model, the distribution of pairwise representational
similarities among the natural images with the same distribution among their metamers: if metamers
keep the model's representational geometry, the two distributions agree. The measure is the
Jensen-Shannon divergence between the two distributions of off-diagonal similarities.

Choices (the paper publishes no code): similarity is the Pearson correlation between two images'
flattened activations (the usual RSA similarity; :func:`representational_similarity`), the
distributions are histograms over [-1, 1] with ``bins`` equal bins, and the divergence is in bits
(base 2), so it lies in [0, 1]: 0 for identical histograms, 1 for histograms with no bin in common.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# Not plenoptic: it has no representational-similarity measures.
__all__ = ["SimilarityShift", "jensen_shannon", "off_diagonal", "representational_similarity", "similarity_shift"]


def _rows(x: Any, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{what} must be (N, D) activations of N >= 2 images, got shape {x.shape}.")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} holds NaN or infinite activations.")
    return x


def representational_similarity(activations: Any) -> np.ndarray:
    """``(N, N)`` Pearson correlations between the images' activation vectors.

    Parameters
    ----------
    activations
        ``(N, D)`` flattened activations of N images (a tensor or array).

    Returns
    -------
    numpy.ndarray
        Symmetric, ones on the diagonal; a constant activation vector correlates 0 with everything
        (instead of NaN).
    """
    x = _rows(activations, "activations")
    centred = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    unit = centred / safe[:, None]
    sim = np.clip(unit @ unit.T, -1.0, 1.0)
    flat = norms == 0
    sim[flat, :] = 0.0
    sim[:, flat] = 0.0
    np.fill_diagonal(sim, 1.0)
    return sim


def off_diagonal(matrix: np.ndarray) -> np.ndarray:
    """The ``N (N - 1) / 2`` entries above the diagonal of a square matrix, row by row."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {matrix.shape}.")
    return matrix[np.triu_indices(matrix.shape[0], k=1)]


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits between two histograms (normalised here), in [0, 1].

    ``JSD = KL(p || m) / 2 + KL(q || m) / 2`` with ``m = (p + q) / 2``; empty bins contribute 0.
    """
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 1:
        raise ValueError(f"histograms must be 1-D and of one length, got {p.shape} and {q.shape}.")
    if (p < 0).any() or (q < 0).any() or p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("histograms must be non-negative with a positive total.")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        keep = a > 0
        return float(np.sum(a[keep] * np.log2(a[keep] / m[keep])))

    return float(min(1.0, max(0.0, (kl(p) + kl(q)) / 2)))


@dataclass(frozen=True)
class SimilarityShift:
    """How far metamers move the distribution of pairwise similarities.

    Attributes
    ----------
    jsd
        Jensen-Shannon divergence (bits, [0, 1]) between the natural and the metamer histograms.
    natural_mean, metamer_mean
        Mean off-diagonal similarity of each set.
    edges
        ``bins + 1`` histogram edges over [-1, 1].
    natural_hist, metamer_hist
        Counts per bin.
    n_pairs
        Off-diagonal pairs per set.
    """

    jsd: float
    natural_mean: float
    metamer_mean: float
    edges: np.ndarray
    natural_hist: np.ndarray
    metamer_hist: np.ndarray
    n_pairs: int

    def to_dict(self) -> dict[str, Any]:
        """Plain values (a table row; the histograms as lists)."""
        return {
            "jsd": self.jsd,
            "natural_mean": self.natural_mean,
            "metamer_mean": self.metamer_mean,
            "n_pairs": self.n_pairs,
            "edges": self.edges.tolist(),
            "natural_hist": self.natural_hist.tolist(),
            "metamer_hist": self.metamer_hist.tolist(),
        }


def similarity_shift(natural: Any, metamers: Any, *, bins: int = 20) -> SimilarityShift:
    """Compare the pairwise similarities among natural images with those among their metamers.

    Parameters
    ----------
    natural, metamers
        ``(N, D)`` activations of an evaluating model's layer for N natural images and for their N
        metamers (row ``i`` of each belongs together; N >= 2).
    bins
        Equal bins over [-1, 1].
    """
    nat, met = _rows(natural, "natural"), _rows(metamers, "metamers")
    if nat.shape != met.shape:
        raise ValueError(f"natural and metamers must have one row per image each, got {nat.shape} and {met.shape}.")
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}.")
    a = off_diagonal(representational_similarity(nat))
    b = off_diagonal(representational_similarity(met))
    edges = np.linspace(-1.0, 1.0, bins + 1)
    ha, _ = np.histogram(a, bins=edges)
    hb, _ = np.histogram(b, bins=edges)
    return SimilarityShift(
        jsd=jensen_shannon(ha, hb),
        natural_mean=float(a.mean()),
        metamer_mean=float(b.mean()),
        edges=edges,
        natural_hist=ha,
        metamer_hist=hb,
        n_pairs=int(a.size),
    )
