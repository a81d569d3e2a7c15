"""A tiny task for the outside-signal plug-ins, written as a library user would plug one in.

Prompt i of the pool has answer a_i; the model is a table of probabilities p_i of answering it
right. Its generator writes ``<a_i> #### <a_i>`` with probability p_i and a wrong number otherwise,
so a ``ControlledLabeler`` over the prompts' ``solution`` column and the student write the same
columns, and the ``mix`` training set keeps both. The learner moves p_i toward 1 for a correct
training row and toward 0 for a wrong one: training on wrong labels or falsely accepted samples
hurts, as it should. ``python collapse_support.py RUN_DIR`` starts a run with a noisy filter,
hardest-first labels and a mix, or resumes it (the kill test runs it as a subprocess).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt

from synthloop import schedules
from synthloop.budget import CostModel, Planner, UnitCosts
from synthloop.faults import Faults, fsync_from_environment
from synthloop.loop import Components, LoopSettings, run
from synthloop.policies import HardestFirst
from synthloop.protocols import Verifier
from synthloop.records import Candidates, IterationRecord, Prompts, Scores, Usage, Verdict, ones_usage
from synthloop.select import Passed
from synthloop.signals.filters import NoisyFilter
from synthloop.signals.labelers import ControlledLabeler
from synthloop.signals.source import LabeledPrompts
from synthloop.store import RunStore
from synthloop.training_set import Mix

MARKER = "####"


class TableVerifier:
    """PASS when the number after the last ``####`` is the gold answer; ERROR when there is none."""

    def verify(self, candidates: Candidates, prompts: Prompts) -> Scores:
        verdict = []
        for text, gold in zip(candidates.samples["completion"], prompts.items["answer"], strict=True):
            tail = str(text).rsplit(MARKER, 1)[1].strip() if MARKER in str(text) else ""
            verdict.append(Verdict.ERROR if not tail else Verdict.PASS if tail == gold else Verdict.FAIL)
        verdicts = np.array(verdict, dtype=np.int8)
        reward = np.where(verdicts == Verdict.PASS, 1.0, np.where(verdicts == Verdict.FAIL, 0.0, np.nan))
        return Scores(reward=reward, verdict=verdicts)


class TableTask:
    name = "table"
    primary_metric = "accuracy"
    higher_is_better = True

    def __init__(self, pool_size: int = 60, seed: int = 0) -> None:
        self.answers = np.random.default_rng(seed).integers(10, 99, pool_size)
        self.verifier: Verifier = TableVerifier()

    @property
    def pool_size(self) -> int:
        return len(self.answers)

    def prompts_at(self, indices: npt.NDArray[np.int64]) -> Prompts:
        index = np.asarray(indices, dtype=np.int64)
        answers = [str(a) for a in self.answers[index]]
        return Prompts(index=index, items={"prompt": [f"q{i}" for i in index], "question_prompt": [f"q{i}" for i in index],
                                           "answer": answers, "solution": [f"{a} {MARKER} {a}" for a in answers]})

    def sample_prompts(self, n: int, *, rng: np.random.Generator) -> Prompts:
        return self.prompts_at(rng.integers(0, self.pool_size, n))

    def evaluate(self, model: npt.NDArray[np.float64], *, rng: np.random.Generator) -> dict[str, float]:
        return {"accuracy": float(np.mean(model))}


class TableGenerator:
    def max_usage_per_draw(self) -> dict[str, float]:
        return {"samples": 1.0}

    def generate(self, model: npt.NDArray[np.float64], prompts: Prompts, *, rng: np.random.Generator) -> Candidates:
        right = rng.random(len(prompts)) < model[prompts.index]
        texts = [f"{a} {MARKER} {a}" if ok else f"{int(a) + 1} {MARKER} {int(a) + 1}"
                 for a, ok in zip(prompts.items["answer"], right, strict=True)]
        return Candidates(samples={"prompt": list(prompts.items["prompt"]), "completion": texts,
                                   "question_prompt": list(prompts.items["question_prompt"])},
                          prompt_index=prompts.index, usage=ones_usage(len(prompts), samples=1))


class TableLearner:
    def __init__(self, task: TableTask, *, lr: float = 0.3) -> None:
        self.gold = TableVerifier()  # what is really right, whatever filter the loop uses
        self.lr = lr
        # prompts from nearly always failed to mostly solved, so some really are harder than others
        self.p_ = np.random.default_rng(1).permutation(np.linspace(0.02, 0.8, task.pool_size))

    @property
    def model(self) -> npt.NDArray[np.float64]:
        return self.p_.copy()

    def training_usage(self, candidates: Candidates) -> Usage:
        return ones_usage(len(candidates), samples=1)

    def update(self, selected: Candidates, prompts: Prompts, *, rng: np.random.Generator) -> dict[str, float]:
        right = self.gold.verify(selected, prompts).verdict == Verdict.PASS
        for i, ok in zip(selected.prompt_index, right, strict=True):
            self.p_[i] += self.lr * ((1.0 if ok else 0.0) - self.p_[i])
        return {"right": float(np.mean(right)) if len(right) else 0.0}

    def save(self, directory: Path) -> None:
        (directory / "p.json").write_text(json.dumps(self.p_.tolist()))

    def load(self, directory: Path) -> None:
        self.p_ = np.array(json.loads((directory / "p.json").read_text()))


def table_components(*, beta: float = 0.75, noise: float = 0.1, allocation: str = "hardest",
                     alpha: float = 0.25, pool_size: int = 60, k: int = 4) -> Components:
    """Filter (noisy), labels (beta-weak, allocated hardest first or uniformly) and a mix."""
    task = TableTask(pool_size=pool_size)
    task.verifier = NoisyFilter(TableVerifier(), false_accept=noise, false_reject=noise, seed=3)
    learner = TableLearner(task)
    policy = HardestFirst(pool_size=pool_size, samples_per_prompt=k, allocation=allocation)  # type: ignore[arg-type]
    source = LabeledPrompts(task, ControlledLabeler(beta=beta), policy)
    components = Components(task=task, generator=TableGenerator(), selector=Passed(), learner=learner,
                            prompt_policy=policy, training_set=Mix(source, alpha=alpha))
    return components


BUDGET = 2000.0
COSTS = CostModel(unit="samples", prices={"generate": {"samples": 0.05}, "verify": {"samples": 0.02},
                                          "train": {"samples": 1.0}})


def run_table(run_dir: Path | None, *, faults: Faults | None = None, fsync: bool = True,
              **options: object) -> list[IterationRecord]:
    store = None
    if run_dir is not None:
        store = RunStore(run_dir, fsync=fsync, faults=faults or Faults())
        if not store.holds_run():
            store.create("name: table\n")
    planner = Planner(make=schedules.constant, budget=BUDGET, unit_costs=UnitCosts(0.07, 1.0),
                      acceptance_rate=0.3, n0=24.0, max_iterations=6)
    return run(table_components(**options), planner, COSTS,  # type: ignore[arg-type]
               LoopSettings(chunk_size=16, keep_checkpoints=2), seed=5, store=store)


if __name__ == "__main__":
    run_table(Path(sys.argv[1]), faults=Faults.from_environment(), fsync=fsync_from_environment())
