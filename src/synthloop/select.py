"""Selectors: which scored candidates the loop keeps.

Streaming selectors decide row by row, so the loop applies them to each generated chunk and stops
generating once n_t are kept: that is Spend Wisely's Algorithm 1. The others need all N_t candidates
of an iteration at once (generate-then-select). No selector ever keeps an ERROR verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from synthloop.protocols import Batch
from synthloop.records import Scores, Verdict
from synthloop.strict import Strict


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


# -- config: each kind's YAML model, beside its selector ---------------------------------------


class RewardProportionalSelector(Strict):
    """``selector: {kind: reward_proportional}`` (the default; Algorithm 1)"""

    kind: Literal["reward_proportional"]

    def build(self) -> RewardProportional:
        return RewardProportional()


class ThresholdSelector(Strict):
    """``selector: {kind: threshold, threshold: 0.5}``"""

    kind: Literal["threshold"]
    threshold: Annotated[float, Field(ge=0, le=1)] = 0.5

    def build(self) -> Threshold:
        return Threshold(threshold=self.threshold)


class PassedSelector(Strict):
    """``selector: {kind: passed}`` (STaR, ReST-EM)"""

    kind: Literal["passed"]

    def build(self) -> Passed:
        return Passed()


class TopKSelector(Strict):
    """``selector: {kind: top_k}`` (batch: draws N_t = oversample * n_t)"""

    kind: Literal["top_k"]

    def build(self) -> TopK:
        return TopK()


class WithoutReplacementSelector(Strict):
    """``selector: {kind: reward_proportional_without_replacement}`` (batch)"""

    kind: Literal["reward_proportional_without_replacement"]

    def build(self) -> RewardProportionalWithoutReplacement:
        return RewardProportionalWithoutReplacement()


SelectorConfig = Annotated[
    RewardProportionalSelector | ThresholdSelector | PassedSelector | TopKSelector | WithoutReplacementSelector,
    Field(discriminator="kind"),
]


def make_selector(config: SelectorConfig) -> RewardProportional | Threshold | Passed | TopK | \
        RewardProportionalWithoutReplacement:
    return config.build()
