"""Selection algorithms over a scored candidate set of seeds, in NumPy.

Each takes what the scorer measured (a hardness value per seed, higher: more worth imitating, or
an embedding per seed) and returns ``k`` distinct, ascending row indices. Ties are broken by a
seeded permutation, so a pool of equal scores (binary rewards) is sampled uniformly, not by order.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Indices = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


def _check(n: int, k: int) -> None:
    if not 0 <= k <= n:
        raise ValueError(f"cannot choose {k} of {n} candidates")


def random_choice(n: int, k: int, *, rng: np.random.Generator) -> Indices:
    """``k`` of ``n`` rows uniformly without replacement (the random selector; static generation)."""
    _check(n, k)
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


def ranked(values: Floats, *, rng: np.random.Generator) -> Indices:
    """Rows from the highest value to the lowest, ties in a seeded random order.

    >>> ranked(np.array([0.1, 0.9, 0.5]), rng=np.random.default_rng(0)).tolist()
    [1, 2, 0]
    """
    shuffle = rng.permutation(len(values))
    return shuffle[np.argsort(-np.asarray(values, dtype=np.float64)[shuffle], kind="stable")].astype(np.int64)


def top_k(values: Floats, k: int, *, rng: np.random.Generator) -> Indices:
    """The ``k`` highest values (top student loss: the uncertainty selector).

    >>> top_k(np.array([0.1, 0.9, 0.5, 0.7]), 2, rng=np.random.default_rng(0)).tolist()
    [1, 3]
    """
    _check(len(values), k)
    return np.sort(ranked(values, rng=rng)[:k])


def balanced(values: Floats, k: int, *, rng: np.random.Generator, hard_share: float = 0.5) -> Indices:
    """``round(hard_share * k)`` hardest and the rest easiest rows: LION's easy/hard mix.

    >>> balanced(np.array([0.1, 0.9, 0.5, 0.7, 0.3]), 2, rng=np.random.default_rng(0)).tolist()
    [0, 1]
    """
    _check(len(values), k)
    order = ranked(values, rng=rng)
    n_hard = round(hard_share * k)
    return np.sort(np.concatenate([order[:n_hard], order[len(order) - (k - n_hard):]])).astype(np.int64)


def hard_only(values: Floats, k: int, *, threshold: float, rng: np.random.Generator) -> Indices:
    """``k`` rows drawn uniformly among those with ``value >= threshold`` (the judge's "hard only"
    variant); if fewer are hard, all of them and the hardest of the rest."""
    _check(len(values), k)
    hard = np.flatnonzero(np.asarray(values) >= threshold)
    if len(hard) >= k:
        return np.sort(hard[rng.choice(len(hard), size=k, replace=False)]).astype(np.int64)
    rest = np.setdiff1d(np.arange(len(values)), hard)
    fill = rest[ranked(np.asarray(values)[rest], rng=rng)[:k - len(hard)]]
    return np.sort(np.concatenate([hard, fill])).astype(np.int64)


def _squared_distances(points: Floats, centers: Floats) -> Floats:
    """Squared Euclidean distance from every point to its nearest center."""
    if len(centers) == 0:
        return np.full(len(points), np.inf)
    cross = points @ centers.T
    d = (points * points).sum(1)[:, None] - 2 * cross + (centers * centers).sum(1)[None, :]
    return np.maximum(d.min(axis=1), 0.0)


def k_center_greedy(points: Floats, k: int, *, rng: np.random.Generator,
                    centers: Floats | None = None) -> Indices:
    """Greedy k-center (Sener and Savarese's core set): repeatedly take the point farthest from the
    centers so far. ``centers`` are points already covered (seeds chosen in earlier iterations); with
    none, the first point is drawn at random. A 2-approximation of the minimax cover radius.

    >>> pts = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [0.0, 3.0]])
    >>> k_center_greedy(pts, 2, rng=np.random.default_rng(0), centers=np.zeros((1, 2))).tolist()
    [2, 3]
    """
    points = np.asarray(points, dtype=np.float64)
    _check(len(points), k)
    chosen: list[int] = []
    covered = np.zeros((0, points.shape[1])) if centers is None else np.asarray(centers, dtype=np.float64)
    nearest = _squared_distances(points, covered)
    for _ in range(k):
        if not chosen and len(covered) == 0:
            pick = int(rng.integers(len(points)))
        else:
            masked = nearest.copy()
            masked[chosen] = -1.0
            pick = int(np.argmax(masked))
        chosen.append(pick)
        nearest = np.minimum(nearest, _squared_distances(points, points[pick:pick + 1]))
    return np.sort(np.array(chosen, dtype=np.int64))


def kmeans_pp(points: Floats, k: int, *, rng: np.random.Generator) -> Indices:
    """k-means++ seeding (Arthur and Vassilvitskii) as BADGE uses it: the first center is the point
    of largest norm (the largest gradient), each next one is drawn with probability proportional to
    its squared distance to the nearest center so far (D^2 sampling). Points at distance 0 are drawn
    only when nothing else is left (then uniformly), so the k rows are distinct.
    """
    points = np.asarray(points, dtype=np.float64)
    _check(len(points), k)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    chosen = [int(np.argmax((points * points).sum(1)))]
    nearest = _squared_distances(points, points[chosen])
    while len(chosen) < k:
        weights = nearest.copy()
        weights[chosen] = 0.0
        if weights.sum() <= 0:
            left = np.setdiff1d(np.arange(len(points)), chosen)
            pick = int(left[rng.integers(len(left))])
        else:
            pick = int(rng.choice(len(points), p=weights / weights.sum()))
        chosen.append(pick)
        nearest = np.minimum(nearest, _squared_distances(points, points[pick:pick + 1]))
    return np.sort(np.array(chosen, dtype=np.int64))
