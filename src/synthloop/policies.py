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
- :class:`HardestFirst` draws prompts uniformly, each ``samples_per_prompt`` (k) times, so every
  round measures each drawn prompt's pass rate over k samples; it carries boosting weights across
  rounds from those rates (the same multiplicative rule) and spends the round's labels
  (``allocate``) on the prompts of highest weight: the ones the current model fails most, hardest
  first (Escaping Collapse's labeling on the hardest prompts), or uniformly (the baseline).

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
PASS_RATES = "pass-rates.npy"


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


class HardestFirst:
    """Uniform prompts, k samples each; labels on the prompts the model fails most.

    ``weights_`` start at 1 and after each round are multiplied by ``exp(eta * (2 f - 1))`` for every
    prompt observed, f its failure share among its PASS and FAIL verdicts (ERROR is no evidence);
    ``pass_rates_`` holds each prompt's last measured pass rate (NaN: never measured).
    ``allocate(n)`` returns the n prompts of highest weight, ties in random order
    (``allocation="hardest"``), or n uniform ones (``"uniform"``): both prefix-stable.
    """

    def __init__(self, *, pool_size: int, samples_per_prompt: int = 8, eta: float = 1.0,
                 allocation: Literal["hardest", "uniform"] = "hardest") -> None:
        if pool_size < 1 or samples_per_prompt < 1:
            raise ValueError(f"need pool_size >= 1 and samples_per_prompt >= 1, got {pool_size}, "
                             f"{samples_per_prompt}")
        if allocation not in ("hardest", "uniform"):
            raise ValueError(f"allocation must be 'hardest' or 'uniform', got {allocation!r}")
        self.pool_size = pool_size
        self.samples_per_prompt = samples_per_prompt
        self.eta = eta
        self.allocation = allocation
        self.weights_ = np.ones(pool_size, dtype=np.float64)
        self.pass_rates_ = np.full(pool_size, np.nan)

    def usage_per_prompt(self) -> Mapping[str, float]:
        return {}

    def choose(self, task: Task, n: int, *, model: Any, rng: np.random.Generator) -> Chosen:
        if not isinstance(task, PromptPool):
            raise TypeError(f"task {task.name!r} has no prompt pool: a hardest-first policy needs one")
        distinct = np.resize(rng.permutation(self.pool_size), math.ceil(n / self.samples_per_prompt))
        index = np.repeat(distinct, self.samples_per_prompt)[:n].astype(np.int64)
        return Chosen(task.prompts_at(index), {})

    def observe(self, observations: Observations) -> None:
        decided = observations.n_pass + observations.n_fail
        seen = decided > 0
        index = observations.prompt_index[seen]
        passed = observations.n_pass[seen] / decided[seen]
        self.pass_rates_[index] = passed
        self.weights_[index] *= np.exp(self.eta * (1 - 2 * passed))
        self.weights_ /= self.weights_.mean()

    def allocate(self, n: int, *, rng: np.random.Generator) -> npt.NDArray[np.int64]:
        tie = rng.random(self.pool_size)  # drawn whatever n is: prefix-stable
        order = np.argsort(tie) if self.allocation == "uniform" else np.lexsort((tie, -self.weights_))
        return np.resize(order, n).astype(np.int64)

    def save(self, directory: Path) -> None:
        np.save(directory / WEIGHTS, self.weights_, allow_pickle=False)
        np.save(directory / PASS_RATES, self.pass_rates_, allow_pickle=False)

    def load(self, directory: Path) -> None:
        weights = np.load(directory / WEIGHTS, allow_pickle=False)
        rates = np.load(directory / PASS_RATES, allow_pickle=False)
        if weights.shape != (self.pool_size,) or rates.shape != (self.pool_size,):
            raise ValueError(f"{directory}: state for {weights.shape[0]} prompts, the task's pool has "
                             f"{self.pool_size}")
        self.weights_, self.pass_rates_ = weights, rates


@runtime_checkable
class AllocatesLabels(Protocol):
    """A task whose outside labels can be spent where a policy says (``signals.source``)."""

    def use_allocation(self, allocation: HardestFirst) -> None: ...


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


class HardestFirstConfig(Strict):
    """``prompt_policy: {kind: hardest_first, samples_per_prompt: 8, eta: 1.0, allocation: hardest}``:
    k samples per uniformly drawn prompt; the task's outside labels go to the prompts the model
    fails most (``allocation: uniform`` is the baseline with the same generation)."""

    kind: Literal["hardest_first"]
    samples_per_prompt: Annotated[int, Field(ge=1, le=1024)] = 8
    eta: Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)] = 1.0
    allocation: Literal["hardest", "uniform"] = "hardest"


PromptPolicyConfig = Annotated[UniformConfig | WeightedConfig | HardestFirstConfig, Field(discriminator="kind")]


def make_prompt_policy(config: UniformConfig | WeightedConfig | HardestFirstConfig, task: Task,
                       scorer: PromptScorer | None = None) -> UniformPrompts | WeightedPrompts | HardestFirst:
    """The configured policy for ``task``; a weighted or hardest-first one needs the task's pool (and,
    to score, a scorer from the task's family). A hardest-first policy is handed to a task that
    allocates outside labels, so they are spent by its weights."""
    if isinstance(config, UniformConfig):
        return UniformPrompts()
    if not isinstance(task, PromptPool):
        raise ValueError(f"prompt_policy.kind: {config.kind!r} needs a task with a prompt pool; "
                         f"{task.name!r} draws its prompts unconditionally")
    if isinstance(config, HardestFirstConfig):
        policy = HardestFirst(pool_size=task.pool_size, samples_per_prompt=config.samples_per_prompt,
                              eta=config.eta, allocation=config.allocation)
        if isinstance(task, AllocatesLabels):
            task.use_allocation(policy)
        return policy
    if config.score and scorer is None:
        raise ValueError(f"prompt_policy.score: the {task.name!r} task has no way to score prompts "
                         "with the student")
    return WeightedPrompts(pool_size=task.pool_size, eta=config.eta, explore=config.explore,
                           scorer=scorer if config.score else None, factor=config.factor)
