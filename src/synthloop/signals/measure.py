"""Measured rates with their binomial intervals: a labeler's beta, a filter's error rates.

A rate measured from n independent trials is reported with its Wilson score interval, which stays
inside [0, 1] and holds its coverage for small n and rates near 0 or 1 (Brown, Cai and DasGupta
2001), unlike the normal approximation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from synthloop.protocols import Generator, Verifier
from synthloop.records import Prompts, Verdict


@dataclass(frozen=True)
class Rate:
    """``successes`` of ``trials`` with a Wilson interval at ``confidence``."""

    successes: int
    trials: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.successes / self.trials if self.trials else math.nan

    def to_json(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high, "trials": float(self.trials)}


def wilson(successes: int, trials: int, *, confidence: float = 0.95) -> Rate:
    """The Wilson score interval of a binomial proportion.

    >>> r = wilson(50, 100)
    >>> round(r.low, 3), round(r.high, 3)
    (0.404, 0.596)
    >>> wilson(0, 0).low, wilson(0, 0).high
    (0.0, 1.0)
    """
    if trials == 0:
        return Rate(0, 0, 0.0, 1.0)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return Rate(successes, trials, max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class FilterRates:
    """A filter's errors against gold: false accepts among gold FAILs, false rejects among gold PASSes."""

    false_accept: Rate
    false_reject: Rate
    n_error: int  # rows either side called ERROR (counted in neither rate)

    def to_json(self) -> dict[str, object]:
        return {"false_accept": self.false_accept.to_json(), "false_reject": self.false_reject.to_json(),
                "n_error": self.n_error}


def filter_rates(judged: npt.NDArray[np.int8], gold: npt.NDArray[np.int8], *,
                 confidence: float = 0.95) -> FilterRates:
    """Compare a filter's verdicts with gold verdicts, row for row."""
    judged, gold = np.asarray(judged), np.asarray(gold)
    decided = (judged != Verdict.ERROR) & (gold != Verdict.ERROR)
    gold_fail, gold_pass = decided & (gold == Verdict.FAIL), decided & (gold == Verdict.PASS)
    accepted = judged == Verdict.PASS
    return FilterRates(
        false_accept=wilson(int(np.sum(gold_fail & accepted)), int(gold_fail.sum()), confidence=confidence),
        false_reject=wilson(int(np.sum(gold_pass & ~accepted)), int(gold_pass.sum()), confidence=confidence),
        n_error=int(np.sum(~decided)))


def measure_beta(labeler: Generator, prompts: Prompts, gold: Verifier, *, rng: np.random.Generator,
                 confidence: float = 0.95) -> Rate:
    """A labeler's beta: the share of its labels that the gold verifier passes (ERROR counts as wrong:
    a label with no readable answer is no correct label)."""
    labels = labeler.generate(None, prompts, rng=rng)
    verdict = gold.verify(labels, prompts).verdict
    return wilson(int(np.sum(verdict == Verdict.PASS)), len(verdict), confidence=confidence)


GOLD_NAMES = {v.name.lower(): int(v) for v in Verdict}


def filter_rates_from_detail(verdict: npt.NDArray[np.int8], detail: Sequence[str | None], *,
                             confidence: float = 0.95) -> FilterRates:
    """A filter's measured error rates from stored candidates: ``NoisyFilter`` and ``Audited`` write
    gold's verdict at the start of each row's ``detail`` (``gold=pass; ...``); a row without it is
    counted as an ERROR on gold's side."""
    gold = np.array([GOLD_NAMES.get((d or "").split(";")[0].removeprefix("gold="), int(Verdict.ERROR))
                     for d in detail], dtype=np.int8)
    return filter_rates(verdict, gold, confidence=confidence)
