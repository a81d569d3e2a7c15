"""A prompt policy in one file: spend generation where the model passes sometimes, but not always.

A prompt the model always passes teaches it little; one it never passes spends generation on answers
the selector throws away. :class:`FrontierPrompts` keeps, per prompt of the task's pool, decayed
counts of the PASS and FAIL verdicts it has seen (an ERROR says nothing either way), and draws the
prompts whose measured pass rate r is strictly between 0 and 1 with weight 1 - r: the least-but-not-
never passed first, a curriculum that moves as the model learns. A share ``explore`` of the draws
stays uniform over the pool, so that untried prompts and prompts the model could not pass yet are
tried again; before anything is measured every draw is uniform.

The counts are state: the loop checkpoints them with every iteration (``save`` / ``load``), and a
restored policy draws exactly what the original would. Choosing is free (no ``score`` stage)::

    Components(task, generator, selector, learner, prompt_policy=FrontierPrompts(pool_size=task.pool_size))
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from synthloop.protocols import Chosen, PromptPool, Task
from synthloop.records import Observations

COUNTS = "verdict-counts.npy"


class FrontierPrompts:
    """Frontier curriculum over a pool of ``pool_size`` prompts.

    ``explore``: share of uniform draws; ``decay``: weight of the old counts at each ``observe``
    (the model changes every iteration, so old verdicts count less).
    """

    def __init__(self, *, pool_size: int, explore: float = 0.2, decay: float = 0.5) -> None:
        if pool_size < 1:
            raise ValueError(f"a frontier policy needs a pool of at least 1 prompt, got {pool_size}")
        if not (0 <= explore <= 1 and 0 <= decay <= 1):
            raise ValueError(f"explore and decay must lie in [0, 1], got {explore} and {decay}")
        self.pool_size = pool_size
        self.explore = explore
        self.decay = decay
        self.counts_ = np.zeros((2, pool_size), dtype=np.float64)  # decayed PASS, FAIL per prompt

    def usage_per_prompt(self) -> Mapping[str, float]:
        return {}

    def probabilities(self) -> npt.NDArray[np.float64]:
        passed, failed = self.counts_
        decided = passed + failed
        frontier = (passed > 0) & (failed > 0)
        weight = np.where(frontier, failed / np.where(decided > 0, decided, 1.0), 0.0)  # 1 - pass rate
        uniform = np.full(self.pool_size, 1.0 / self.pool_size)
        if weight.sum() == 0:
            return uniform
        return (1 - self.explore) * weight / weight.sum() + self.explore * uniform

    def choose(self, task: Task, n: int, *, model: Any, rng: np.random.Generator) -> Chosen:
        if not isinstance(task, PromptPool):
            raise TypeError(f"task {task.name!r} has no prompt pool: a frontier policy needs one")
        index = rng.choice(self.pool_size, size=n, p=self.probabilities()).astype(np.int64)
        return Chosen(task.prompts_at(index), {})

    def observe(self, observations: Observations) -> None:
        self.counts_ *= self.decay
        self.counts_[0, observations.prompt_index] += observations.n_pass  # one row per prompt index
        self.counts_[1, observations.prompt_index] += observations.n_fail

    def save(self, directory: Path) -> None:
        np.save(directory / COUNTS, self.counts_, allow_pickle=False)

    def load(self, directory: Path) -> None:
        counts = np.load(directory / COUNTS, allow_pickle=False)
        if counts.shape != (2, self.pool_size):
            raise ValueError(f"{directory / COUNTS}: counts for {counts.shape[-1]} prompts, the policy's "
                             f"pool has {self.pool_size}")
        self.counts_ = counts
