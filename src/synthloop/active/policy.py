"""The active prompt policy: the student scores a share of the seed pool, a selector picks seeds.

Per part, :class:`ActivePolicy` draws ``floor(candidates * n)`` seeds uniformly from the task's pool
(distinct while the pool is large enough), has its :class:`SeedScorer` measure them with the
current student, and keeps ``n`` of them by its ``selector`` (Kessler et al., section 3):

| selector     | scorer measures                                 | keeps                              |
|--------------|-------------------------------------------------|------------------------------------|
| random       | nothing (free)                                  | ``n`` uniformly (static generation)|
| loss_own     | student loss on its own sampled answer          | the highest (uncertainty)          |
| loss_gold    | student loss on the gold solution               | the highest                        |
| reward       | 1 - verifier reward of the student's answer     | the highest (the failed ones)      |
| judge        | 1 - a judge's rating of the student's answer    | the highest                        |
| judge_hard   | the same                                        | uniformly among ratings < 1 - t    |
| balanced     | student loss on its own answer                  | half hardest, half easiest (LION)  |
| diversity    | sentence embeddings of the seed questions       | k-center greedy, earlier seeds as centers |
| badge        | last-layer gradient embeddings of the student   | k-means++ seeding                  |

What scoring costs is the scorer's usage (student forward passes, a judge's tokens), charged by the
loop to the ``score`` stage; its bound per chosen seed is ``usage_per_prompt``.

State: the pool indices of every seed the loop generated on (``observe``), which the diversity
selector uses as already covered centers. It is saved and loaded with every checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from pydantic import Field

from synthloop.active import select
from synthloop.protocols import Chosen, PromptPool, Task
from synthloop.records import Observations, Prompts
from synthloop.strict import Strict

SEEN = "seen.npy"
SELECTORS = ("random", "loss_own", "loss_gold", "reward", "judge", "judge_hard", "balanced", "diversity",
             "badge")
SelectorName = Literal["random", "loss_own", "loss_gold", "reward", "judge", "judge_hard", "balanced",
                       "diversity", "badge"]
#: what each selector needs measured: the ``kind`` of scorer a family builds for it (None: nothing)
SCORE_OF: dict[str, str | None] = {
    "random": None, "loss_own": "loss_own", "loss_gold": "loss_gold", "reward": "reward", "judge": "judge",
    "judge_hard": "judge", "balanced": "loss_own", "diversity": "embedding", "badge": "gradient",
}


@dataclass(frozen=True)
class SeedScores:
    """What a scorer measured on seeds, row for row: hardness ``values`` (higher: more worth
    imitating) and/or ``embeddings`` (one vector per seed), and the usage, summed over the rows."""

    values: npt.NDArray[np.float64] | None
    embeddings: npt.NDArray[np.float64] | None
    usage: Mapping[str, float]


@runtime_checkable
class SeedScorer(Protocol):
    """Measures seeds with the current student (and, for a judge, the teacher)."""

    def usage_per_seed(self) -> Mapping[str, float]:
        """Upper bound on the usage of scoring one seed (``{"samples": 1, "forward_passes": 66}``)."""
        ...

    def score(self, model: Any, prompts: Prompts, *, rng: np.random.Generator) -> SeedScores: ...


class ActivePolicy:
    """Student-scored choice of seed examples (module docstring has the selectors).

    ``pool_size`` is the seed pool; ``selector`` one of :data:`SELECTORS`; ``scorer`` what the
    selector needs measured (None only for ``random``); ``candidates`` seeds scored per seed chosen;
    ``hard_share`` the hard share of ``balanced``; ``hard_threshold`` the hardness from which
    ``judge_hard`` counts a seed as hard.
    """

    def __init__(self, *, pool_size: int, selector: str, scorer: SeedScorer | None = None,
                 candidates: float = 4.0, hard_share: float = 0.5, hard_threshold: float = 0.5) -> None:
        if selector not in SELECTORS:
            raise ValueError(f"unknown active selector {selector!r}; allowed: {', '.join(SELECTORS)}")
        if (scorer is None) != (SCORE_OF[selector] is None):
            raise ValueError(f"the {selector!r} selector needs "
                             f"{'a ' + str(SCORE_OF[selector]) + ' scorer' if SCORE_OF[selector] else 'no scorer'}")
        if pool_size < 1 or candidates < 1:
            raise ValueError(f"need a pool of at least 1 seed and candidates >= 1, got {pool_size}, {candidates}")
        self.pool_size = pool_size
        self.selector = selector
        self.scorer = scorer
        self.candidates = candidates
        self.hard_share = hard_share
        self.hard_threshold = hard_threshold
        self.seen_ = np.zeros(0, dtype=np.int64)

    def _scored_per_chosen(self) -> float:
        """Seeds scored per seed chosen; diversity also embeds up to as many earlier centers."""
        return 2 * self.candidates if self.selector == "diversity" else self.candidates

    def usage_per_prompt(self) -> Mapping[str, float]:
        if self.scorer is None:
            return {}
        return {q: self._scored_per_chosen() * v for q, v in self.scorer.usage_per_seed().items()}

    def choose(self, task: Task, n: int, *, model: Any, rng: np.random.Generator) -> Chosen:
        if not isinstance(task, PromptPool):
            raise TypeError(f"task {task.name!r} has no seed pool: an active policy needs one")
        if self.scorer is None:
            return Chosen(task.prompts_at(self._draw(n, rng)), {})
        drawn = task.prompts_at(self._draw(max(n, math.floor(self.candidates * n)), rng))
        if self.selector == "diversity":
            return self._diverse(task, drawn, n, model, rng)
        scored = self.scorer.score(model, drawn, rng=rng)
        if scored.values is None and scored.embeddings is None:
            raise ValueError(f"the {self.selector!r} selector's scorer returned neither values nor embeddings")
        return Chosen(drawn.take(self._pick(scored, n, rng)), dict(scored.usage))

    def _draw(self, m: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
        return rng.choice(self.pool_size, size=m, replace=m > self.pool_size).astype(np.int64)

    def _pick(self, scored: SeedScores, n: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
        if self.selector == "badge":
            assert scored.embeddings is not None, "the badge selector needs gradient embeddings"
            return select.kmeans_pp(scored.embeddings, n, rng=rng)
        assert scored.values is not None, f"the {self.selector!r} selector needs hardness values"
        if self.selector == "balanced":
            return select.balanced(scored.values, n, rng=rng, hard_share=self.hard_share)
        if self.selector == "judge_hard":
            return select.hard_only(scored.values, n, threshold=self.hard_threshold, rng=rng)
        return select.top_k(scored.values, n, rng=rng)

    def _diverse(self, task: PromptPool, drawn: Prompts, n: int, model: Any,
                 rng: np.random.Generator) -> Chosen:
        """k-center greedy over the drawn seeds, the most recent earlier seeds (at most as many as
        drawn) counting as covered centers: new seeds go where the earlier ones are not."""
        centers = self.seen_[-len(drawn):]
        both = Prompts.concat([drawn, task.prompts_at(centers)]) if len(centers) else drawn
        scored = self.scorer.score(model, both, rng=rng)  # type: ignore[union-attr]
        if scored.embeddings is None:
            raise ValueError("the diversity selector's scorer returned no embeddings")
        points, covered = scored.embeddings[:len(drawn)], scored.embeddings[len(drawn):]
        picked = select.k_center_greedy(points, n, rng=rng, centers=covered)
        return Chosen(drawn.take(picked), dict(scored.usage))

    def observe(self, observations: Observations) -> None:
        new = np.setdiff1d(observations.prompt_index, self.seen_)
        self.seen_ = np.concatenate([self.seen_, new]).astype(np.int64)

    def save(self, directory: Path) -> None:
        np.save(directory / SEEN, self.seen_, allow_pickle=False)

    def load(self, directory: Path) -> None:
        seen = np.load(directory / SEEN, allow_pickle=False)
        if seen.ndim != 1 or (len(seen) and (seen.min() < 0 or seen.max() >= self.pool_size)):
            raise ValueError(f"{directory / SEEN}: seed indices outside the pool of {self.pool_size}")
        self.seen_ = seen.astype(np.int64)


class ActiveSelectorConfig(Strict):
    """``task.seeds: {selector: loss_own, candidates: 4}``: how the student picks the teacher's seeds."""

    selector: SelectorName = "random"
    candidates: Annotated[float, Field(ge=1, le=1000)] = 4.0  # seeds scored per seed chosen
    hard_share: Annotated[float, Field(ge=0, le=1)] = 0.5  # balanced: share of hard seeds
    hard_threshold: Annotated[float, Field(ge=0, le=1)] = 0.5  # judge_hard: hardness counted as hard


@runtime_checkable
class Judge(Protocol):
    """Rates a student's answers to seed prompts in [0, 1] (1: fully right), with what rating cost.

    A rating it cannot read is NaN: the seed is then unrated, never silently 0 or 1. Its usage is in
    the judge's own tokens, charged with the scoring (``score`` stage).
    """

    def usage_per_rating(self) -> Mapping[str, float]: ...

    def rate(self, prompts: Prompts, answers: list[str], *,
             rng: np.random.Generator) -> tuple[npt.NDArray[np.float64], Mapping[str, float]]: ...
