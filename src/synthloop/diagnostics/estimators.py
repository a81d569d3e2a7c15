"""Sample-based divergence and entropy estimators (NumPy and SciPy's k-d tree; no ML framework).

- ``knn_kl``: the k-nearest-neighbour estimator of KL(P || Q) from samples of P and Q (Wang,
  Kulkarni and Verdu 2009; Perez-Cruz 2008): consistent in any dimension, no density model.
- ``histogram_kl``: the binned estimator the reverse-bottleneck paper's code uses (50 bins per axis),
  kept for comparison in one or two dimensions, where it works.
- ``knn_entropy``: the Kozachenko-Leonenko differential entropy, for dispersion.
- ``knn_mutual_information``: I(X; Y) = H(X) + H(Y) - H(X, Y) by three KL entropies.

Every value is an *estimate*; the diagnose stage labels it with the estimator's name.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree

Array = npt.NDArray[np.float64]


def _as_points(x: npt.ArrayLike) -> Array:
    points = np.asarray(x, dtype=np.float64)
    if points.ndim == 1:
        points = points[:, None]
    if points.ndim != 2 or not np.all(np.isfinite(points)):
        raise ValueError(f"expected finite points of shape (n, d), got shape {points.shape}")
    return points


def kth_distance(queries: Array, points: Array, k: int, *, exclude_self: bool) -> Array:
    """Distance from each query to its k-th nearest point (the query itself left out if asked).

    >>> kth_distance(np.zeros((1, 1)), np.array([[1.0], [3.0], [0.0]]), 1, exclude_self=True)
    array([1.])
    """
    rank = k if exclude_self else k - 1
    if rank >= len(points):
        raise ValueError(f"need more than {rank} points for the {k}-th neighbour, got {len(points)}")
    return _ranked(cKDTree(points), queries, np.full(len(queries), rank + 1))


def knn_kl(p_samples: npt.ArrayLike, q_samples: npt.ArrayLike, *, k: int = 5) -> float:
    """KL(P || Q) in nats, the bias-reduced kNN estimator of Wang, Kulkarni and Verdu (2009, III-B).

    With rho_k(i) / nu_k(i) the distances from x_i to its k-th neighbour among the other n - 1
    samples of P / the m samples of Q, eps_i = max(rho_k(i), nu_k(i)), and k_i / l_i the numbers of
    P / Q samples within eps_i:
    D = (d/n) sum_i log(nu_{l_i}(i) / rho_{k_i}(i)) + (1/n) sum_i [psi(k_i) - psi(l_i)] + log(m / (n-1)).
    Adapting k per point removes most of the fixed-k estimator's bias when P and Q differ in scale.
    Neighbours come from k-d trees (exact distances, O(n log n) in low dimensions), so the estimator
    takes the tens of thousands of points per side that large divergences need: its downward bias
    shrinks with the sample size. Duplicated points (distance 0) are nudged to the smallest positive
    distance seen.
    """
    x, y = _as_points(p_samples), _as_points(q_samples)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"P and Q samples differ in dimension: {x.shape[1]} != {y.shape[1]}")
    n, m, d = len(x), len(y), x.shape[1]
    if k >= n or k > m:
        raise ValueError(f"need more than {k} points of each sample for the {k}-th neighbour, got {n} and {m}")
    own_tree, other_tree = cKDTree(x), cKDTree(y)
    own = own_tree.query(x, [2, k + 1])[0]  # the point itself is its own nearest: ranks 2 and k + 1
    other = other_tree.query(x, [1, k])[0]
    # every point within eps_i, the k-th ones included (the relative margin absorbs rounding)
    reach = np.maximum(own[:, 1], other[:, 1]) * (1 + 1e-12)
    k_i = np.maximum(own_tree.query_ball_point(x, reach, return_length=True) - 1, k)
    l_i = np.maximum(other_tree.query_ball_point(x, reach, return_length=True), k)
    floor = _positive_floor(own[:, 0], other[:, 0])
    rho = np.maximum(_ranked(own_tree, x, k_i + 1), floor)
    nu = np.maximum(_ranked(other_tree, x, l_i), floor)
    return float(d * np.mean(np.log(nu / rho)) + np.mean(_DIGAMMA(k_i) - _DIGAMMA(l_i)) + math.log(m / (n - 1)))


def _ranked(tree: cKDTree, queries: Array, ranks: npt.NDArray[np.int64]) -> Array:
    """Each query's distance to its ``ranks[i]``-th nearest tree point (1 = nearest).

    Queries are grouped by rank into powers of two, so the neighbours fetched are at most twice
    those used, even where a few points need very many (a dense region of P in a sparse one of Q).

    >>> _ranked(cKDTree(np.array([[0.0], [1.0], [3.0]])), np.array([[0.0], [0.0]]), np.array([1, 3]))
    array([0., 3.])
    """
    out = np.empty(len(queries))
    todo, top = np.arange(len(queries)), 1
    while len(todo):
        group = todo[ranks[todo] <= top]
        if len(group):
            distances = tree.query(queries[group], top)[0].reshape(len(group), top)
            out[group] = distances[np.arange(len(group)), ranks[group] - 1]
        todo, top = todo[ranks[todo] > top], 2 * top
    return out


def _DIGAMMA(counts: npt.NDArray[np.int64]) -> Array:
    table = np.concatenate([[np.nan], -0.5772156649015329 + np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, counts.max()))])])
    return table[counts]


def _positive_floor(*distances: Array) -> float:
    positive = np.concatenate([dist[dist > 0] for dist in distances])
    return float(positive.min()) if len(positive) else 1e-12


def knn_entropy(samples: npt.ArrayLike, *, k: int = 5) -> float:
    """Kozachenko-Leonenko entropy in nats: psi(n) - psi(k) + log V_d + (d/n) sum log rho_k(i)."""
    x = _as_points(samples)
    n, d = x.shape
    rho = kth_distance(x, x, k, exclude_self=True)
    rho = np.maximum(rho, _positive_floor(rho))
    log_ball = (d / 2) * math.log(math.pi) - math.lgamma(d / 2 + 1)
    return float(_digamma(n) - _digamma(k) + log_ball + d * np.mean(np.log(rho)))


def knn_mutual_information(x: npt.ArrayLike, y: npt.ArrayLike, *, k: int = 5) -> float:
    """I(X; Y) = H(X) + H(Y) - H(X, Y), each by ``knn_entropy`` (rows of x and y are paired)."""
    a, b = _as_points(x), _as_points(y)
    if len(a) != len(b):
        raise ValueError("mutual information needs paired rows")
    return knn_entropy(a, k=k) + knn_entropy(b, k=k) - knn_entropy(np.hstack([a, b]), k=k)


def _digamma(n: int) -> float:
    """psi(n) for a positive integer: -gamma + sum_{j<n} 1/j (exact; n is a sample count).

    >>> round(_digamma(1), 6)
    -0.577216
    """
    return -0.5772156649015329 + sum(1.0 / j for j in range(1, n))


def histogram_kl(p_samples: npt.ArrayLike, q_samples: npt.ArrayLike, *, bins: int = 50,
                 eps: float = 1e-10) -> float:
    """KL(P || Q) from ``bins``-per-axis histograms on the samples' common box: sum p log(p / q).

    Empty bins get ``eps`` mass before renormalising (else one empty Q bin makes the estimate
    infinite). Cells grow as bins^d, so this is usable in about two dimensions only.
    """
    x, y = _as_points(p_samples), _as_points(q_samples)
    if x.shape[1] > 3:
        raise ValueError(f"a histogram in {x.shape[1]} dimensions has {bins}^{x.shape[1]} cells; use knn_kl")
    both = np.vstack([x, y])
    edges = [np.linspace(lo, hi, bins + 1) for lo, hi in zip(both.min(0), both.max(0), strict=True)]
    p = np.histogramdd(x, bins=edges)[0].ravel() + eps
    q = np.histogramdd(y, bins=edges)[0].ravel() + eps
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p * np.log(p / q)))


def gaussian_kl(mean_p: npt.ArrayLike, cov_p: npt.ArrayLike, mean_q: npt.ArrayLike, cov_q: npt.ArrayLike) -> float:
    """Closed-form KL(N(mean_p, cov_p) || N(mean_q, cov_q)), for checking the estimators.

    >>> gaussian_kl([0.0], [[1.0]], [1.0], [[1.0]])
    0.5
    """
    mp, mq = np.atleast_1d(np.asarray(mean_p, float)), np.atleast_1d(np.asarray(mean_q, float))
    sp, sq = np.atleast_2d(np.asarray(cov_p, float)), np.atleast_2d(np.asarray(cov_q, float))
    inv_q = np.linalg.inv(sq)
    diff = mq - mp
    log_det = np.linalg.slogdet(sq)[1] - np.linalg.slogdet(sp)[1]
    return float(0.5 * (np.trace(inv_q @ sp) + diff @ inv_q @ diff - len(mp) + log_det))
