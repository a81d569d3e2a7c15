"""A small task with a prompt pool, written as a library user would plug one in from Python.

Prompt i of the pool has a difficulty d_i. The model is one skill s; for prompt i it answers
x ~ N(s - d_i, 1), which passes when x > 0 (reward: the logistic of 3x). The learner moves s to the
mean of (x + d_i) over its training rows, so training on passed answers raises s. Held-out
performance is the mean pass probability Phi(s - d_i) over the pool, in closed form. It has a prompt
scorer (the student's failure probability on a prompt, one "sample" of scoring each) and an outside
labeled source (answers x = 1 on any prompt), so every stage of the loop has something to do.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from synthloop.loop import Components
from synthloop.policies import Scored, WeightedPrompts
from synthloop.records import Candidates, Prompts, Scores, Usage, ones_usage
from synthloop.select import RewardProportional
from synthloop.training_set import Accumulate


def _phi(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))


@dataclass(frozen=True)
class PoolVerifier:
    difficulty: npt.NDArray[np.float64]

    def verify(self, candidates: Candidates, prompts: Prompts) -> Scores:
        x = candidates.samples["x"]
        return Scores.from_rewards(1 / (1 + np.exp(-3 * x)))


class PoolTask:
    name = "pool"
    primary_metric = "pass_rate"
    higher_is_better = True

    def __init__(self, pool_size: int = 40, seed: int = 0) -> None:
        self.difficulty = np.random.default_rng(seed).uniform(0.0, 3.0, pool_size)
        self.verifier = PoolVerifier(self.difficulty)

    @property
    def pool_size(self) -> int:
        return len(self.difficulty)

    def prompts_at(self, indices: npt.NDArray[np.int64]) -> Prompts:
        index = np.asarray(indices, dtype=np.int64)
        return Prompts(index=index, items={"difficulty": self.difficulty[index]})

    def sample_prompts(self, n: int, *, rng: np.random.Generator) -> Prompts:
        return self.prompts_at(rng.integers(0, self.pool_size, n))

    def evaluate(self, model: float, *, rng: np.random.Generator) -> dict[str, float]:
        return {"pass_rate": float(_phi(model - self.difficulty).mean())}

    # a prompt scorer: the student's failure probability on each prompt
    def usage_per_prompt(self) -> dict[str, float]:
        return {"samples": 1.0}

    def score(self, model: float, prompts: Prompts, *, rng: np.random.Generator) -> Scored:
        failure = 1 - _phi(model - prompts.items["difficulty"])
        return Scored(values=failure + 1e-3 * rng.random(len(prompts)), usage={"samples": float(len(prompts))})

    # an outside labeled source: a correct answer x = 1 on uniformly drawn prompts (prefix-stable)
    def sample(self, n: int, *, rng: np.random.Generator) -> tuple[Candidates, Prompts]:
        prompts = self.prompts_at(rng.integers(0, self.pool_size, n))
        return Candidates(samples={"x": np.ones(n)}, prompt_index=prompts.index, usage=ones_usage(n, samples=1)), prompts


class PoolGenerator:
    def max_usage_per_draw(self) -> dict[str, float]:
        return {"samples": 1.0}

    def generate(self, model: float, prompts: Prompts, *, rng: np.random.Generator) -> Candidates:
        n = len(prompts)
        x = model - prompts.items["difficulty"] + rng.standard_normal(n)
        return Candidates(samples={"x": x}, prompt_index=prompts.index, usage=ones_usage(n, samples=1))


class PoolLearner:
    def __init__(self, task: PoolTask) -> None:
        self.task = task
        self.skill_ = 0.0

    @property
    def model(self) -> float:
        return self.skill_

    def training_usage(self, candidates: Candidates) -> Usage:
        return ones_usage(len(candidates), samples=1)

    def update(self, selected: Candidates, prompts: Prompts, *, rng: np.random.Generator) -> dict[str, float]:
        previous = self.skill_
        self.skill_ = float(np.mean(selected.samples["x"] + self.task.difficulty[selected.prompt_index]))
        return {"moved": self.skill_ - previous}

    def save(self, directory: Path) -> None:
        (directory / "skill.json").write_text(json.dumps({"skill": self.skill_}))

    def load(self, directory: Path) -> None:
        self.skill_ = float(json.loads((directory / "skill.json").read_text())["skill"])


def pool_components(*, scored: bool = True, accumulate: bool = True, **task: Any) -> Components:
    """The pool task with the weighted prompt policy (scored with the student) and an accumulating
    training set: every new stage of the loop in use."""
    pool = PoolTask(**task)
    policy = WeightedPrompts(pool_size=pool.pool_size, eta=0.5, explore=0.1, scorer=pool if scored else None,
                             factor=2.0)
    components = Components(task=pool, generator=PoolGenerator(), selector=RewardProportional(),
                            learner=PoolLearner(pool), prompt_policy=policy)
    if accumulate:
        components.training_set = Accumulate()
    return components
