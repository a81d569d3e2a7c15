"""gamma-noisy filters: verifiers that keep or reject the model's outputs, with errors.

``NoisyFilter`` wraps a gold verifier and turns a PASS into a FAIL with probability
``false_reject`` and a FAIL into a PASS with probability ``false_accept`` (an ERROR stays an
ERROR: it is no judgement either way). A Verifier gets no rng, and a resumed part must be judged
as before, so each row's coin is a hash of (seed, prompt index, completion, how many identical
rows came before it in the batch): reproducible, independent across rows, and exact in
expectation.

``MajorityVote`` judges without gold: among a prompt's samples in the batch (the hardest-first
prompt policy draws each prompt k times in a row), a sample passes when its final answer is the
prompt's plurality answer held by at least ``min_share`` of the readable answers and by two
samples or more. Its error rates are what they are; ``Audited`` measures them against gold.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from synthloop.protocols import Verifier
from synthloop.records import Candidates, Prompts, Scores, Verdict


def _binary(verdict: npt.NDArray[np.int8]) -> npt.NDArray[np.float64]:
    return np.where(verdict == Verdict.PASS, 1.0, np.where(verdict == Verdict.FAIL, 0.0, np.nan))


def row_uniforms(seed: int, candidates: Candidates, key: str = "completion") -> npt.NDArray[np.float64]:
    """One uniform in [0, 1) per row from a hash of its content (see the module docstring)."""
    seen: Counter[tuple[int, str]] = Counter()
    out = np.empty(len(candidates))
    for i, (index, text) in enumerate(zip(candidates.prompt_index, candidates.samples[key], strict=True)):
        occurrence = seen[(int(index), str(text))]
        seen[(int(index), str(text))] += 1
        digest = hashlib.blake2b(f"{seed}\x00{int(index)}\x00{occurrence}\x00{text}".encode(), digest_size=8)
        out[i] = int.from_bytes(digest.digest(), "little") / 2.0**64
    return out


@dataclass(frozen=True)
class NoisyFilter:
    """``inner``'s verdicts, flipped at rates ``false_accept`` (FAIL -> PASS) and ``false_reject``
    (PASS -> FAIL). ``detail`` says, row by row, what ``inner`` said (``gold=pass``...)."""

    inner: Verifier
    false_accept: float = 0.0
    false_reject: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("false_accept", "false_reject"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def verify(self, candidates: Candidates, prompts: Prompts) -> Scores:
        scores = self.inner.verify(candidates, prompts)
        coin = row_uniforms(self.seed, candidates)
        verdict = scores.verdict.copy()
        verdict[(scores.verdict == Verdict.PASS) & (coin < self.false_reject)] = Verdict.FAIL
        verdict[(scores.verdict == Verdict.FAIL) & (coin < self.false_accept)] = Verdict.PASS
        return Scores(reward=_binary(verdict), verdict=verdict, usage=dict(scores.usage),
                      detail=_gold_detail(scores))


def _gold_detail(gold: Scores) -> list[str]:
    names = [Verdict(int(v)).name.lower() for v in gold.verdict]
    inner = list(gold.detail) if gold.detail is not None else [""] * len(names)
    return [f"gold={name}; {why}" if why else f"gold={name}" for name, why in zip(names, inner, strict=True)]


@dataclass(frozen=True)
class MajorityVote:
    """Self-consistency as a filter: agreement with the plurality answer of the prompt's samples.

    ``answer`` reads a final answer from a completion (None: unreadable, an ERROR verdict).
    """

    answer: Callable[[str], str | None]
    min_share: float = 0.5
    key: str = "completion"

    def verify(self, candidates: Candidates, prompts: Prompts) -> Scores:
        answers = [self.answer(str(text)) for text in candidates.samples[self.key]]
        winners = self._winners(candidates.prompt_index, answers)
        verdict = np.array([Verdict.ERROR if a is None else
                            Verdict.PASS if a == winners.get(int(p)) else Verdict.FAIL
                            for p, a in zip(candidates.prompt_index, answers, strict=True)], dtype=np.int8)
        detail = ["no final answer" if a is None else f"answer {a[:40]!r}, majority "
                  f"{winners.get(int(p))!r}" for p, a in zip(candidates.prompt_index, answers, strict=True)]
        return Scores(reward=_binary(verdict), verdict=verdict, usage={"samples": np.ones(len(verdict))},
                      detail=detail)

    def _winners(self, prompt_index: npt.NDArray[np.int64], answers: Sequence[str | None]) -> dict[int, str]:
        """Each prompt's plurality answer, where it is unique and held by enough samples."""
        votes: dict[int, Counter[str]] = {}
        for p, a in zip(prompt_index, answers, strict=True):
            if a is not None:
                votes.setdefault(int(p), Counter())[a] += 1
        winners = {}
        for p, counter in votes.items():
            ranked = counter.most_common(2)
            top, count = ranked[0]
            unique = len(ranked) == 1 or ranked[1][1] < count
            if unique and count >= 2 and count >= self.min_share * sum(counter.values()):
                winners[p] = top
        return winners


@dataclass(frozen=True)
class Audited:
    """A filter's verdicts, with gold's beside them in ``detail`` (``gold=pass; ...``), so a run's
    stored candidates say how often the filter erred (``measure.filter_rates`` counts it)."""

    filter: Verifier
    gold: Verifier

    def verify(self, candidates: Candidates, prompts: Prompts) -> Scores:
        judged = self.filter.verify(candidates, prompts)
        gold = self.gold.verify(candidates, prompts)
        return Scores(reward=judged.reward, verdict=judged.verdict, usage=dict(judged.usage),
                      detail=_gold_detail(Scores(reward=gold.reward, verdict=gold.verdict,
                                                 detail=judged.detail)))
