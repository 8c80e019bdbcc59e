"""Representational similarity and its Jensen-Shannon shift (metamergen.metamers.similarity)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metamergen.metamers.similarity import (
    jensen_shannon,
    off_diagonal,
    representational_similarity,
    similarity_shift,
)


def test_similarity_is_the_pearson_correlation_of_each_pair():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 40))
    sim = representational_similarity(torch.from_numpy(x))
    assert sim.shape == (5, 5) and np.allclose(sim, sim.T) and np.allclose(np.diag(sim), 1)
    assert sim[1, 3] == pytest.approx(np.corrcoef(x[1], x[3])[0, 1], abs=1e-12)
    flat = np.vstack([x[:2], np.full((1, 40), 3.0)])  # a constant vector: 0, not NaN
    assert representational_similarity(flat)[2, 0] == 0 and representational_similarity(flat)[2, 2] == 1


def test_off_diagonal_takes_the_upper_triangle_row_by_row():
    m = np.arange(16).reshape(4, 4)
    assert off_diagonal(m).tolist() == [1, 2, 3, 6, 7, 11]
    with pytest.raises(ValueError, match="square"):
        off_diagonal(np.zeros((2, 3)))


def test_jensen_shannon_is_zero_for_equal_one_for_disjoint_and_matches_the_formula():
    assert jensen_shannon([1, 2, 3], [2, 4, 6]) == 0.0  # normalised first
    assert jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0)
    p, q = np.array([0.5, 0.5, 0.0]), np.array([0.25, 0.25, 0.5])
    m = (p + q) / 2
    kl = lambda a: sum(ai * math.log2(ai / mi) for ai, mi in zip(a, m) if ai > 0)  # noqa: E731
    assert jensen_shannon(p, q) == pytest.approx((kl(p) + kl(q)) / 2, abs=1e-12)
    assert jensen_shannon(p, q) == pytest.approx(jensen_shannon(q, p))
    with pytest.raises(ValueError, match="non-negative"):
        jensen_shannon([0, 0], [1, 1])


def test_metamers_that_keep_the_geometry_shift_nothing_and_ones_that_collapse_it_shift_a_lot():
    rng = np.random.default_rng(1)
    natural = rng.normal(size=(12, 64))
    same = similarity_shift(natural, natural * 2.0 + 1.0)  # correlations are scale- and shift-free
    assert same.jsd == 0.0 and same.n_pairs == 66 and same.natural_hist.sum() == 66
    collapsed = rng.normal(size=(1, 64)) + 0.01 * rng.normal(size=(12, 64))  # all metamers alike
    shifted = similarity_shift(natural, collapsed)
    assert shifted.jsd > 0.9 and shifted.metamer_mean > 0.99 > abs(shifted.natural_mean)
    assert set(shifted.to_dict()) >= {"jsd", "natural_mean", "metamer_mean", "natural_hist", "edges"}


def test_bad_shapes_are_refused_with_what_was_given():
    with pytest.raises(ValueError, match="N >= 2"):
        similarity_shift(np.zeros((1, 4)), np.zeros((1, 4)))
    with pytest.raises(ValueError, match="one row per image"):
        similarity_shift(np.zeros((3, 4)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        representational_similarity(np.array([[0.0, np.nan], [1.0, 2.0]]))
