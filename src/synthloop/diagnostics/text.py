"""Diversity statistics of texts and answers (pure Python): what collapse looks like in data."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams / all n-grams over whitespace tokens (Li et al. 2016's distinct-n).

    >>> distinct_n(["a b a b", "a b"], 1)
    0.3333333333333333
    """
    grams: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        tokens = text.split()
        grams.update(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else math.nan


def duplicate_rate(items: Sequence[object]) -> float:
    """Share of items equal to an earlier item: 0 when all differ, (n - 1) / n when all are one.

    >>> duplicate_rate(["x", "y", "x", "x"])
    0.5
    """
    return (len(items) - len(set(items))) / len(items) if items else math.nan


def plugin_entropy(items: Sequence[object]) -> float:
    """Entropy in bits of the empirical distribution of ``items`` (plug-in estimate).

    >>> plugin_entropy(["a", "b", "a", "b"])
    1.0
    """
    counts = Counter(items)
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else math.nan
