"""A task family in one file: sums modulo 10, learned by a table of answer probabilities.

Prompt i of the pool asks for (a_i + b_i) mod 10. The model is a table of logits, one row per prompt
and one column per answer: the ten digits and ``?``, an answer the verifier cannot read (an ERROR
verdict with a NaN reward, never a reward of 0). The generator samples an answer from the softmax of
its prompt's row and reports the student's loss on it, -log p(answer), as the extra column ``loss``;
the learner takes one cross-entropy step (SFT) on the kept answers; the metric is the exact expected
pass rate over the pool (a table does not generalise, so there is no held-out split to speak of).

From Python::

    from synthloop.loop import run
    history = run(components(), planner, costs, LoopSettings(), seed=0)

From YAML, once ``synthloop.configs.FAMILIES["mod-sum"] = "mod_sum_task"`` names this module (a
family inside synthloop adds that line to ``FAMILIES`` itself)::

    task: {kind: mod-sum, pool_size: 50}
    learner: {kind: sft, lr: 0.5}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from synthloop.configs import ConfigError, RunConfig, Strict, make_selector, validate_section
from synthloop.loop import Components
from synthloop.protocols import Selector
from synthloop.records import Candidates, Prompts, Scores, Usage, Verdict, ones_usage
from synthloop.select import Passed

UNREADABLE = 10  # the answer "?": the eleventh column of the table
LOGITS = "logits.npy"


def softmax(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class ModSumVerifier:
    gold: npt.NDArray[np.int64]  # per prompt of the pool

    def verify(self, candidates: Candidates, prompts: Prompts) -> Scores:
        answer = np.asarray(candidates.samples["answer"])
        unreadable = answer == UNREADABLE
        correct = answer == self.gold[prompts.index]
        reward = np.where(unreadable, np.nan, correct.astype(np.float64))
        verdict = np.where(unreadable, Verdict.ERROR, np.where(correct, Verdict.PASS, Verdict.FAIL))
        return Scores(reward=reward, verdict=verdict.astype(np.int8))


class ModSumTask:
    """A pool of ``pool_size`` questions (a + b) mod 10, drawn once from ``seed``."""

    name = "mod-sum"
    primary_metric = "pass_rate"
    higher_is_better = True

    def __init__(self, *, pool_size: int = 50, seed: int = 0) -> None:
        operands = np.random.default_rng(seed).integers(0, 10, size=(pool_size, 2))
        self.a, self.b = operands[:, 0], operands[:, 1]
        self.gold = (self.a + self.b) % 10
        self.verifier = ModSumVerifier(self.gold)

    @property
    def pool_size(self) -> int:
        return len(self.gold)

    def prompts_at(self, indices: npt.NDArray[np.int64]) -> Prompts:
        index = np.asarray(indices, dtype=np.int64)
        return Prompts(index=index, items={"a": self.a[index], "b": self.b[index]})

    def sample_prompts(self, n: int, *, rng: np.random.Generator) -> Prompts:
        return self.prompts_at(rng.integers(0, self.pool_size, n))

    def pretrained(self, *, seed: int) -> npt.NDArray[np.float64]:
        """A starting table that answers some prompts well and others hardly ever."""
        rng = np.random.default_rng(seed)
        logits = rng.normal(0.0, 1.0, size=(self.pool_size, UNREADABLE + 1))
        logits[:, UNREADABLE] += 1.0  # "?" starts likelier than any one wrong digit
        logits[np.arange(self.pool_size), self.gold] += rng.uniform(-4.0, 6.0, self.pool_size)
        return logits

    def evaluate(self, model: npt.NDArray[np.float64], *, rng: np.random.Generator) -> dict[str, float]:
        p = softmax(model)
        return {"pass_rate": float(p[np.arange(self.pool_size), self.gold].mean()),
                "error_rate": float(p[:, UNREADABLE].mean())}


class ModSumGenerator:
    def max_usage_per_draw(self) -> Mapping[str, float]:
        return {"samples": 1.0}

    def generate(self, model: npt.NDArray[np.float64], prompts: Prompts, *, rng: np.random.Generator) -> Candidates:
        p = softmax(model[prompts.index])
        answer = (rng.random(len(prompts))[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
        answer = np.minimum(answer, UNREADABLE)  # rounding can leave the cumulative sum just under 1
        loss = -np.log(p[np.arange(len(prompts)), answer])
        return Candidates(samples={"answer": answer.astype(np.int64)}, prompt_index=prompts.index,
                          usage=ones_usage(len(prompts), samples=1), extra={"loss": loss})


class ModSumLearner:
    """One gradient step of cross-entropy, ``lr`` per kept answer, from the table ``start``."""

    def __init__(self, start: npt.NDArray[np.float64], *, lr: float = 0.5) -> None:
        self.start = start
        self.lr = lr
        self.logits_ = start

    @property
    def model(self) -> npt.NDArray[np.float64]:
        return self.logits_

    def training_usage(self, candidates: Candidates) -> Usage:
        return ones_usage(len(candidates), samples=1)

    def update(self, selected: Candidates, prompts: Prompts, *, rng: np.random.Generator) -> dict[str, float]:
        rows, answer = selected.prompt_index, np.asarray(selected.samples["answer"])
        p = softmax(self.logits_[rows])
        step = np.zeros_like(self.logits_)  # a new array: the model handed out stays as it was
        np.add.at(step, rows, self.lr * (np.eye(UNREADABLE + 1)[answer] - p))
        self.logits_ = self.logits_ + step
        return {"loss": float(-np.log(p[np.arange(len(rows)), answer]).mean())}

    def save(self, directory: Path) -> None:
        np.save(directory / LOGITS, self.logits_, allow_pickle=False)

    def load(self, directory: Path) -> None:
        self.logits_ = np.load(directory / LOGITS, allow_pickle=False)


def components(*, pool_size: int = 50, seed: int = 0, lr: float = 0.5,
               selector: Selector | None = None) -> Components:
    """The task wired to its generator and learner; the other stages keep the loop's defaults."""
    task = ModSumTask(pool_size=pool_size, seed=seed)
    return Components(task=task, generator=ModSumGenerator(), selector=Passed() if selector is None else selector,
                      learner=ModSumLearner(task.pretrained(seed=seed + 1), lr=lr))


# -- the family: what ``task.kind: mod-sum`` in a YAML config needs --------------------------------


class ModSumTaskConfig(Strict):
    kind: Literal["mod-sum"]
    pool_size: Annotated[int, Field(ge=1, le=100_000)] = 50
    seed: Annotated[int, Field(ge=0)] = 0  # fixes the pool and the starting table


class ModSumLearnerConfig(Strict):
    kind: Literal["sft"] = "sft"
    lr: Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)] = 0.5


@dataclass(frozen=True)
class ModSumSettings:
    task: ModSumTaskConfig
    learner: ModSumLearnerConfig


class ModSumFamily:
    """Validates the family's sections, declares its usage (what may be priced) and wires it."""

    def validate(self, config: RunConfig) -> ModSumSettings:
        for section in ("model", "generator"):
            if getattr(config, section) is not None:
                raise ConfigError(f"{section}: the mod-sum task takes no {section} section")
        return ModSumSettings(task=validate_section(config.task, ModSumTaskConfig, "task"),
                              learner=validate_section(config.learner, ModSumLearnerConfig, "learner"))

    def usage_per_draw(self, settings: ModSumSettings) -> Mapping[str, float]:
        return ModSumGenerator().max_usage_per_draw()

    def usage_per_example(self, settings: ModSumSettings) -> Mapping[str, float]:
        return {"samples": 1.0}

    def schedule_defaults(self, settings: ModSumSettings) -> dict[str, float]:
        return {}

    def build(self, config: RunConfig, settings: ModSumSettings) -> Any:
        return components(pool_size=settings.task.pool_size, seed=settings.task.seed, lr=settings.learner.lr,
                          selector=make_selector(config.selector))


FAMILY = ModSumFamily()
