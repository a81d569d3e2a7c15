"""The kNN estimators against closed forms (Gaussian KL and entropy), and their edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from synthloop.diagnostics.estimators import (
    gaussian_kl,
    histogram_kl,
    knn_entropy,
    knn_kl,
    knn_mutual_information,
)


def _cov(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d)) / math.sqrt(d)
    return a @ a.T + 0.5 * np.eye(d)


@pytest.mark.parametrize("d", [1, 2, 5])
def test_knn_kl_matches_the_closed_form_for_gaussians(d: int) -> None:
    rng = np.random.default_rng(d)
    mp, mq = np.zeros(d), np.full(d, 0.7)
    cp = _cov(rng, d)
    cq = cp + _cov(rng, d)  # Q at least as wide as P: the case a finite sample of Q can resolve
    exact = gaussian_kl(mp, cp, mq, cq)
    estimates = [knn_kl(rng.multivariate_normal(mp, cp, 3000), rng.multivariate_normal(mq, cq, 3000))
                 for _ in range(3)]
    assert abs(np.mean(estimates) - exact) < 0.12 * exact + 0.05, (estimates, exact)


def test_knn_kl_is_near_zero_for_one_distribution_and_grows_with_the_shift() -> None:
    rng = np.random.default_rng(0)
    same = knn_kl(rng.standard_normal((2000, 3)), rng.standard_normal((2000, 3)))
    shifted = [knn_kl(rng.standard_normal((2000, 3)), rng.standard_normal((2000, 3)) + s) for s in (0.5, 1.0, 2.0)]
    assert abs(same) < 0.05
    assert shifted[0] < shifted[1] < shifted[2]
    assert abs(shifted[0] - 3 * 0.5**2 / 2) < 0.1


def test_knn_entropy_matches_the_gaussian_entropy() -> None:
    rng = np.random.default_rng(1)
    cov = _cov(rng, 4)
    exact = 0.5 * math.log((2 * math.pi * math.e) ** 4 * np.linalg.det(cov))
    assert abs(knn_entropy(rng.multivariate_normal(np.zeros(4), cov, 4000)) - exact) < 0.1


def test_knn_mutual_information_of_correlated_gaussians() -> None:
    rng = np.random.default_rng(2)
    r = 0.8
    x = rng.standard_normal(4000)
    y = r * x + math.sqrt(1 - r**2) * rng.standard_normal(4000)
    exact = -0.5 * math.log(1 - r**2)
    assert abs(knn_mutual_information(x, y) - exact) < 0.08
    assert abs(knn_mutual_information(x, rng.standard_normal(4000))) < 0.05


def test_histogram_kl_agrees_with_the_closed_form_in_one_dimension() -> None:
    rng = np.random.default_rng(3)
    p, q = rng.normal(0, 1, 20000), rng.normal(0.5, 1, 20000)
    assert abs(histogram_kl(p, q) - 0.125) < 0.05


def test_bad_inputs_give_clear_errors() -> None:
    with pytest.raises(ValueError, match="dimension"):
        knn_kl(np.zeros((10, 2)), np.zeros((10, 3)))
    with pytest.raises(ValueError, match="finite"):
        knn_kl(np.full((10, 2), np.nan), np.zeros((10, 2)))
    with pytest.raises(ValueError, match="more than"):
        knn_kl(np.zeros((3, 2)), np.zeros((3, 2)), k=5)
    with pytest.raises(ValueError, match="knn_kl"):
        histogram_kl(np.zeros((10, 5)), np.zeros((10, 5)))


def test_duplicates_do_not_give_infinities() -> None:
    x = np.repeat(np.arange(10.0)[:, None], 20, axis=0)
    assert math.isfinite(knn_kl(x, x + 0.01)) and math.isfinite(knn_entropy(x))


def _brute_force_knn_kl(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """The same estimator from full distance matrices, written out plainly (no trees, no grouping)."""
    n, m, d = len(x), len(y), x.shape[1]
    own = np.sort(np.linalg.norm(x[:, None] - x[None], axis=2), axis=1)[:, 1:]
    other = np.sort(np.linalg.norm(x[:, None] - y[None], axis=2), axis=1)
    total = 0.0
    for i in range(n):
        radius = max(own[i, k - 1], other[i, k - 1])
        k_i, l_i = int(np.sum(own[i] <= radius)), int(np.sum(other[i] <= radius))
        digamma_gap = sum(1.0 / j for j in range(l_i, k_i)) - sum(1.0 / j for j in range(k_i, l_i))
        total += d * math.log(other[i, l_i - 1] / own[i, k_i - 1]) + digamma_gap
    return total / n + math.log(m / (n - 1))


@pytest.mark.parametrize("d", [1, 2, 4])
def test_knn_kl_equals_the_brute_force_estimator_where_neighbour_counts_adapt(d: int) -> None:
    # P much narrower than Q: near P's centre k_i grows into the hundreds, so the grouped rank
    # queries (powers of two) are exercised, not only the k-th neighbours
    rng = np.random.default_rng(d)
    x, y = 0.05 * rng.standard_normal((400, d)), rng.standard_normal((300, d)) + 0.2
    for p, q in ((x, y), (y, x)):
        assert knn_kl(p, q, k=3) == pytest.approx(_brute_force_knn_kl(p, q, 3), rel=1e-9, abs=1e-9)
