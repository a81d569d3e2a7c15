"""pass@k, estimated the unbiased way from n samples per problem of which c passed (Chen et al. 2021).

One definition for every task that samples several answers per prompt (math, code).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct: ``1 - C(n-c, k) / C(n, k)``.

    Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)`` (Chen et al. 2021), stable for any n.

    >>> pass_at_k(10, 0, 1), pass_at_k(10, 10, 5), round(pass_at_k(10, 3, 1), 6), pass_at_k(5, 3, 3)
    (0.0, 1.0, 0.3, 1.0)
    >>> pass_at_k(8, 2, 1), pass_at_k(8, 0, 8), pass_at_k(8, 1, 8)
    (0.25, 0.0, 1.0)
    >>> round(pass_at_k(200, 1, 100), 6)  # one correct in 200: half of the 100-subsets contain it
    0.5
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def mean_pass_at_k(n: npt.ArrayLike, c: npt.ArrayLike, k: int) -> float:
    """The mean of :func:`pass_at_k` over problems (``n``, ``c`` per problem)."""
    pairs = list(zip(np.asarray(n).tolist(), np.asarray(c).tolist(), strict=True))
    if not pairs:
        raise ValueError("pass@k of zero problems")
    return float(np.mean([pass_at_k(int(a), int(b), k) for a, b in pairs]))
