"""Labels as the outside rows of a training mix: L labels a round, on prompts an allocation picks.

``LabeledPrompts`` is a ``training_set.LabeledSource``: ``sample(n, rng)`` asks its allocation for n
pool positions (uniform, or hardest first from ``policies.HardestFirst``'s weights), and its labeler
for a label of each. The ``mix`` training set adds them at share alpha, so L = round(alpha / (1 -
alpha) * n_selected) labels a round. Both steps draw from the rng in an order that does not depend
on n, so the source is prefix-stable.

With a hardest-first allocation the labels are chosen when the training set is built, after the
prompt policy has observed this iteration's verdicts: the prompts the current model fails most (as
the filter judged its k samples), with the weights carried from earlier rounds.

What a label costs is the labeler's own usage of it (``Candidates.usage``: a sample each, and for
a model labeler or a controlled one with a token counter its prompt and completion tokens); the
loop charges it to the ``label`` stage (``iteration.py``, ``docs/escaping-collapse.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from synthloop.protocols import Generator, PromptPool
from synthloop.records import Candidates, Prompts


@runtime_checkable
class Allocation(Protocol):
    """Chooses the pool positions that receive a label; prefix-stable for the same rng state."""

    def allocate(self, n: int, *, rng: np.random.Generator) -> npt.NDArray[np.int64]: ...


@dataclass(frozen=True)
class UniformAllocation:
    """Labels on prompts drawn uniformly without replacement (cycling once the pool is used up)."""

    pool_size: int

    def allocate(self, n: int, *, rng: np.random.Generator) -> npt.NDArray[np.int64]:
        return np.resize(rng.permutation(self.pool_size), n).astype(np.int64)


class LabeledPrompts:
    """The outside labeled source of a mix: the labeler's answers on the allocated prompts."""

    def __init__(self, pool: PromptPool, labeler: Generator, allocation: Allocation | None = None) -> None:
        self.pool = pool
        self.labeler = labeler
        self.allocation: Allocation = allocation or UniformAllocation(pool.pool_size)

    def use_allocation(self, allocation: Allocation) -> None:
        """Spend the labels where ``allocation`` says (the hardest-first prompt policy hands itself)."""
        self.allocation = allocation

    def usage_per_label(self) -> Mapping[str, float]:
        """The quantities one label reports: the labeler's (what ``label:`` prices may name)."""
        return self.labeler.max_usage_per_draw()

    def sample(self, n: int, *, rng: np.random.Generator) -> tuple[Candidates, Prompts]:
        prompts = self.pool.prompts_at(self.allocation.allocate(n, rng=rng))
        return self.labeler.generate(None, prompts, rng=rng), prompts
