"""Prompt policies: which prompts (or seed examples) an iteration spends generation on.

- :class:`UniformPrompts` samples the task's training split as the task does (Spend Wisely). It has
  no state and costs nothing.
- :class:`WeightedPrompts` keeps one weight per prompt of the task's pool and draws prompts in
  proportion to them; after each iteration it multiplies the weight of every prompt it saw by
  ``exp(eta * (2 f - 1))``, f the prompt's failure fraction, so prompts the model fails gain weight
  and prompts it solves lose it: boosting's reweighting of hard examples (Freund and Schapire's
  multiplicative weights), as Escaping Collapse spends its outside signal on the prompts the model
  gets wrong. A share ``explore`` of the draws stays uniform so no prompt's chance ever reaches 0.
  With a :class:`PromptScorer` it draws ``factor * n`` candidates that way, scores them with the
  student (a priced ``score`` stage) and keeps the ``n`` highest: the student-guided choice of
  Active Synthetic Data Generation.

Each kind owns its config model beside its code (``*Config``); ``make_prompt_policy`` builds one.
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

from synthloop.protocols import Chosen, PromptPool, Task
from synthloop.records import Observations, Prompts
from synthloop.strict import Strict

WEIGHTS = "weights.npy"


@runtime_checkable
class PromptScorer(Protocol):
    """Scores prompts with the current model (higher: more worth generating on)."""

    def usage_per_prompt(self) -> Mapping[str, float]:
        """Upper bound on the usage of scoring one prompt (``{"samples": 1, "tokens": 300}``)."""
        ...

    def score(self, model: Any, prompts: Prompts, *, rng: np.random.Generator) -> Scored:
        ...


@dataclass(frozen=True)
class Scored:
    values: npt.NDArray[np.float64]  # one per prompt
    usage: Mapping[str, float]  # summed over the prompts


class UniformPrompts:
    """The task's own sampling of its training split (today's behaviour; stateless, free)."""

    def usage_per_prompt(self) -> Mapping[str, float]:
        return {}

    def choose(self, task: Task, n: int, *, model: Any, rng: np.random.Generator) -> Chosen:
        return Chosen(task.sample_prompts(n, rng=rng), {})

    def observe(self, observations: Observations) -> None:
        return None

    def save(self, directory: Path) -> None:
        return None

    def load(self, directory: Path) -> None:
        return None


class WeightedPrompts:
    """Multiplicative weights on the prompts the model fails (module docstring has the rule).

    ``pool_size`` is the task's pool; ``eta`` the step of the weight update; ``explore`` the share
    of uniform draws; ``scorer`` and ``factor`` turn on student scoring of ``factor * n`` drawn
    candidates, of which the ``n`` best are kept.
    """

    def __init__(self, *, pool_size: int, eta: float = 0.5, explore: float = 0.1,
                 scorer: PromptScorer | None = None, factor: float = 2.0) -> None:
        if pool_size < 1:
            raise ValueError(f"a weighted prompt policy needs a pool of at least 1 prompt, got {pool_size}")
        self.pool_size = pool_size
        self.eta = eta
        self.explore = explore
        self.scorer = scorer
        self.factor = factor
        self.weights_ = np.ones(pool_size, dtype=np.float64)

    def usage_per_prompt(self) -> Mapping[str, float]:
        if self.scorer is None:
            return {}
        return {q: self.factor * amount for q, amount in self.scorer.usage_per_prompt().items()}

    def probabilities(self) -> npt.NDArray[np.float64]:
        return (1 - self.explore) * self.weights_ / self.weights_.sum() + self.explore / self.pool_size

    def choose(self, task: Task, n: int, *, model: Any, rng: np.random.Generator) -> Chosen:
        if not isinstance(task, PromptPool):
            raise TypeError(f"task {task.name!r} has no prompt pool: a weighted policy needs one")
        drawn = max(n, math.floor(self.factor * n)) if self.scorer is not None else n
        index = rng.choice(self.pool_size, size=drawn, p=self.probabilities()).astype(np.int64)
        prompts = task.prompts_at(index)
        if self.scorer is None:
            return Chosen(prompts, {})
        scored = self.scorer.score(model, prompts, rng=rng)
        best = np.sort(np.argsort(-scored.values, kind="stable")[:n]).astype(np.int64)
        return Chosen(prompts.take(best), dict(scored.usage))

    def observe(self, observations: Observations) -> None:
        decided = observations.n_pass + observations.n_fail  # an ERROR verdict says nothing either way
        seen = decided > 0
        index = observations.prompt_index[seen]
        failure = observations.n_fail[seen] / decided[seen]
        self.weights_[index] *= np.exp(self.eta * (2 * failure - 1))
        self.weights_ /= self.weights_.mean()  # keeps the weights in range over long runs

    def save(self, directory: Path) -> None:
        np.save(directory / WEIGHTS, self.weights_, allow_pickle=False)

    def load(self, directory: Path) -> None:
        weights = np.load(directory / WEIGHTS, allow_pickle=False)
        if weights.shape != (self.pool_size,):
            raise ValueError(f"{directory / WEIGHTS}: {weights.shape[0]} weights, the task's pool has "
                             f"{self.pool_size} prompts")
        self.weights_ = weights


# -- config -------------------------------------------------------------------------------------


class UniformConfig(Strict):
    """``prompt_policy: {kind: uniform}``: the task's own sampling (the default)."""

    kind: Literal["uniform"]


class WeightedConfig(Strict):
    """``prompt_policy: {kind: weighted, eta: 0.5, explore: 0.1}``: boosting-style weights."""

    kind: Literal["weighted"]
    eta: Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)] = 0.5
    explore: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.1
    score: bool = False  # score factor * n drawn prompts with the student and keep the n best
    factor: Annotated[float, Field(ge=1, le=100, allow_inf_nan=False)] = 2.0


PromptPolicyConfig = Annotated[UniformConfig | WeightedConfig, Field(discriminator="kind")]


def make_prompt_policy(config: UniformConfig | WeightedConfig, task: Task,
                       scorer: PromptScorer | None = None) -> UniformPrompts | WeightedPrompts:
    """The configured policy for ``task``; a weighted one needs the task's pool (and, to score, a
    scorer from the task's family)."""
    if isinstance(config, UniformConfig):
        return UniformPrompts()
    if not isinstance(task, PromptPool):
        raise ValueError(f"prompt_policy.kind: 'weighted' needs a task with a prompt pool; "
                         f"{task.name!r} draws its prompts unconditionally")
    if config.score and scorer is None:
        raise ValueError(f"prompt_policy.score: the {task.name!r} task has no way to score prompts "
                         "with the student")
    return WeightedPrompts(pool_size=task.pool_size, eta=config.eta, explore=config.explore,
                           scorer=scorer if config.score else None, factor=config.factor)
