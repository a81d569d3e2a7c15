"""Selectors: which scored candidates the loop keeps.

Streaming selectors decide row by row, so the loop applies them to each generated chunk and stops
generating once n_t are kept: that is Spend Wisely's Algorithm 1. The others need all N_t candidates
of an iteration at once (generate-then-select). No selector ever keeps an ERROR verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from synthloop.protocols import Batch
from synthloop.records import Scores, Verdict


def _first(mask: npt.NDArray[np.bool_], n_wanted: int) -> npt.NDArray[np.int64]:
    return np.flatnonzero(mask)[: max(n_wanted, 0)].astype(np.int64)


def _usable(scores: Scores) -> npt.NDArray[np.bool_]:
    return scores.verdict != Verdict.ERROR


@dataclass(frozen=True)
class RewardProportional:
    """Keep each candidate with probability R(x), in draw order, until n_wanted are kept
    (Spend Wisely, Algorithm 1)."""

    streaming: ClassVar[bool] = True

    def select(self, batch: Batch, *, n_wanted: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
        scores = batch.scores
        draws = rng.random(len(scores))
        with np.errstate(invalid="ignore"):
            accepted = (draws < scores.reward) & _usable(scores)
        return _first(accepted, n_wanted)


@dataclass(frozen=True)
class Threshold:
    """Keep candidates whose reward is at least ``threshold``, in draw order, up to n_wanted."""

    threshold: float = 0.5
    streaming: ClassVar[bool] = True

    def select(self, batch: Batch, *, n_wanted: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
        scores = batch.scores
        with np.errstate(invalid="ignore"):
            passed = (scores.reward >= self.threshold) & _usable(scores)
        return _first(passed, n_wanted)


@dataclass(frozen=True)
class Passed:
    """Keep candidates the verifier passed (STaR / ReST-EM's binary filter), up to n_wanted."""

    streaming: ClassVar[bool] = True

    def select(self, batch: Batch, *, n_wanted: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
        scores = batch.scores
        return _first(scores.verdict == Verdict.PASS, n_wanted)


@dataclass(frozen=True)
class TopK:
    """Keep the n_wanted highest rewards of all N_t candidates (ties: earlier draw first)."""

    streaming: ClassVar[bool] = False

    def select(self, batch: Batch, *, n_wanted: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
        scores = batch.scores
        usable = np.flatnonzero(_usable(scores))
        order = usable[np.argsort(-scores.reward[usable], kind="stable")]
        return np.sort(order[: max(n_wanted, 0)]).astype(np.int64)


@dataclass(frozen=True)
class RewardProportionalWithoutReplacement:
    """Draw n_wanted distinct candidates with probability proportional to reward, from all N_t.

    Candidates with zero reward are never drawn; if fewer than n_wanted have positive reward, all
    of those are kept.
    """

    streaming: ClassVar[bool] = False

    def select(self, batch: Batch, *, n_wanted: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
        scores = batch.scores
        with np.errstate(invalid="ignore"):
            positive = np.flatnonzero(_usable(scores) & (scores.reward > 0))
        if n_wanted <= 0 or len(positive) == 0:
            return np.empty(0, dtype=np.int64)
        if len(positive) <= n_wanted:
            return positive.astype(np.int64)
        weights = scores.reward[positive]
        chosen = rng.choice(positive, size=n_wanted, replace=False, p=weights / weights.sum())
        return np.sort(chosen).astype(np.int64)
