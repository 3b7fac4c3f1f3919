"""The study's per-row comparisons against scipy and by hand: rank correlation with ties and constant rows,
top-k overlap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from engine.audits.compression import rank_correlation, top_k_overlap


def test_rank_correlation_is_scipys_spearman_of_absolute_attributions_row_by_row() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 6))
    b = a + rng.normal(scale=0.5, size=a.shape)
    b[:50, 2] = -b[:50, 3]  # ties in |b|: average ranks, as scipy
    expected = [spearmanr(np.abs(x), np.abs(y)).statistic for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(rank_correlation(a, b), expected, atol=1e-12)
    assert rank_correlation(a, -a) == pytest.approx(np.ones(300))  # signs do not count, magnitudes do


def test_a_constant_row_counts_as_the_variant_build_counts_it() -> None:
    zeros, ramp = np.zeros((1, 4)), np.array([[1.0, 2.0, 3.0, 4.0]])
    assert rank_correlation(zeros, zeros).tolist() == [1.0]
    assert rank_correlation(zeros, ramp).tolist() == [0.0] == rank_correlation(ramp, zeros).tolist()
    assert rank_correlation(ramp, ramp[:, ::-1]).tolist() == [-1.0]


def test_top_k_overlap_counts_the_shared_largest_features() -> None:
    a = np.array([[5.0, -4.0, 3.0, 0.1, 0.2], [1.0, 2.0, 3.0, 4.0, 5.0]])
    b = np.array([[-5.0, 0.0, 3.0, 4.5, 0.2], [5.0, 4.0, 3.0, 2.0, 1.0]])
    # Row 0: top 3 of |a| {0, 1, 2}, of |b| {0, 3, 2}: two shared. Row 1: {4, 3, 2} and {0, 1, 2}: one.
    np.testing.assert_allclose(top_k_overlap(a, b, 3), [2 / 3, 1 / 3])
    np.testing.assert_allclose(top_k_overlap(a, b, 10), [1.0, 1.0])  # k beyond the features: all of them
