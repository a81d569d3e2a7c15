"""The ``label`` stage: a mix's outside labels are priced, reserved before the round and charged
when they are made (Escaping Collapse, issue 12: "labels are a priced stage").

On the table task of ``collapse_support`` with solutions whose length grows with how hard a prompt
is, and a learner that counts training tokens: the label stage's charge is the sum over the labeled
rows the learner trained on; a budget that cannot pay for the labels refuses the iteration cleanly;
hardest-first labels, placed after the round is observed, are priced exactly before training (the
reservation was made on the labels the allocation would have placed before: the old code trained on
rows it had not priced and raised ``BudgetExceededError``); faults between the reservation and the
commit resume to the unbroken run's ledger; ``synthloop plan`` shows the planned label cost.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import yaml

from collapse_support import TableGenerator, TableLearner, TableTask
from crashsafe_support import ROOT, cli, failing_at, kill_repeatedly, snapshot, spawn_script, stores
from synthloop import schedules
from synthloop.budget import CostModel, Planner, UnitCosts
from synthloop.faults import Faults, fsync_from_environment
from synthloop.iteration import TRAINING_SET, rng_for
from synthloop.loop import Components, LoopSettings, run
from synthloop.policies import HardestFirst
from synthloop.records import Candidates, IterationRecord, Prompts, Usage
from synthloop.select import Passed
from synthloop.signals.labelers import ControlledLabeler
from synthloop.signals.source import LabeledPrompts
from synthloop.store import RunStore
from synthloop.training_set import Mix

SEED = 3
COSTS = CostModel(unit="tokens", prices={"generate": {"samples": 0.05}, "train": {"tokens": 1.0},
                                         "label": {"samples": 0.5, "completion_tokens": 2.0}})


def words(text: str) -> int:
    """The token counter of these tests: words."""
    return len(text.split())


class LongLabelTask(TableTask):
    """The table task whose gold solutions are longer on the prompts the model fails more, so the
    hardest prompts' labels cost the most."""

    def __init__(self, hardness: npt.NDArray[np.float64]) -> None:
        super().__init__(pool_size=len(hardness))
        self.extra_words = np.round(12 * hardness).astype(int)

    def prompts_at(self, indices: npt.NDArray[np.int64]) -> Prompts:
        prompts = super().prompts_at(indices)
        solutions = ["so " * int(w) + s for w, s in zip(self.extra_words[prompts.index], prompts.items["solution"],
                                                         strict=True)]
        return Prompts(index=prompts.index, items={**prompts.items, "solution": solutions})


class TokenLearner(TableLearner):
    """Trains as the table learner does; a row's training costs its completion's words; keeps what
    it was given to train on."""

    def __init__(self, task: TableTask) -> None:
        super().__init__(task)
        self.trained: list[Candidates] = []

    def training_usage(self, candidates: Candidates) -> Usage:
        tokens = np.array([words(str(t)) for t in candidates.samples["completion"]], dtype=np.float64)
        return {"samples": np.ones(len(candidates)), "tokens": tokens}

    def update(self, selected: Candidates, prompts: Prompts, *, rng: np.random.Generator) -> dict[str, float]:
        self.trained.append(selected)
        return super().update(selected, prompts, rng=rng)


def components(*, allocation: str = "hardest", alpha: float = 0.25) -> Components:
    learner_p = TableLearner(TableTask(pool_size=60)).p_  # the learner's starting pass probabilities
    task = LongLabelTask(1 - learner_p)
    policy = HardestFirst(pool_size=60, samples_per_prompt=4, allocation=allocation)  # type: ignore[arg-type]
    labels = LabeledPrompts(task, ControlledLabeler(beta=1.0, count_tokens=words), policy)
    return Components(task=task, generator=TableGenerator(), selector=Passed(), learner=TokenLearner(task),
                      prompt_policy=policy, training_set=Mix(labels, alpha=alpha))


def planner(budget: float, *, iterations: int = 3, per_selected: float = 20.0) -> Planner:
    return Planner(make=schedules.constant, budget=budget, unit_costs=UnitCosts(0.05, per_selected),
                   acceptance_rate=0.4, n0=24.0, max_iterations=iterations)


def label_rows(parts: Components, t: int) -> Candidates:
    learner = parts.learner
    assert isinstance(learner, TokenLearner)
    trained = learner.trained[t]
    outside = np.asarray(trained.extra["outside"], dtype=bool)
    return trained.take(np.flatnonzero(outside))


def _run_in(run_dir: Path, faults: str | None = None, *, parts: Components | None = None,
            iterations: int = 4, store: RunStore | None = None) -> list[IterationRecord]:
    store = store or stores(failing_at(faults) if faults else None)(run_dir)
    if not store.holds_run():
        store.create("name: label-stage\n")
    return run(parts or components(), planner(50_000, iterations=iterations), COSTS,
               LoopSettings(chunk_size=16, keep_checkpoints=2), seed=SEED, store=store)


def test_the_label_stage_charges_the_sum_over_the_labeled_rows(tmp_path: Path):
    parts = components()
    history = _run_in(tmp_path / "run", parts=parts, iterations=3)
    store = RunStore(tmp_path / "run")
    assert len(history) == 3
    for t, record in enumerate(history):
        labels = label_rows(parts, t)
        assert record.n_outside == len(labels) == 8  # round(0.25 / 0.75 * 24), marked extra["outside"]
        trained = parts.learner.trained[t]  # type: ignore[attr-defined]
        assert not np.any(np.asarray(trained.extra["outside"])[:record.n_selected])  # the selection first
        label_words = sum(words(str(text)) for text in labels.samples["completion"])
        assert record.cost["label"] == pytest.approx(8 * 0.5 + 2.0 * label_words)
        assert label_words > 8 * 3  # the labels are longer than bare answers: their tokens are counted
        rows = [r for r in store.iteration_record(t).ledger if r.stage == "label"]
        assert [(r.items, r.quantities["completion_tokens"]) for r in rows] == [(8, label_words)]


def test_labels_that_the_budget_cannot_pay_for_refuse_the_iteration_cleanly():
    expensive = CostModel(unit="tokens", prices={**COSTS.prices, "label": {"samples": 1000.0}})
    history = run(components(), planner(2000), expensive, LoopSettings(chunk_size=16), seed=SEED)
    assert len(history) == 1 and history[0].exhausted and history[0].n_generated == 0
    assert history[0].cumulative_cost == 0.0  # refused before drawing anything: 8 labels cost 8000

    dear = CostModel(unit="tokens", prices={**COSTS.prices, "label": {"samples": 10.0, "completion_tokens": 2.0}})
    history = run(components(), planner(700, iterations=6), dear, LoopSettings(chunk_size=16), seed=SEED)
    assert history[-1].exhausted and history[-1].cumulative_cost <= 700 * (1 + 1e-12)
    assert all(r.cost.get("label", 0.0) >= 10.0 * r.n_outside for r in history)  # every label charged
    assert sum(r.n_outside for r in history) > 0


def test_hardest_first_labels_are_priced_exactly_before_training():
    """The reservation is made on the labels the allocation would place before the round; hardest
    first places them after observing it, on the prompts failed most, whose labels are longer here.
    With a budget that the reservation and the kept rows use up exactly, training on the placed
    labels unpriced passed the budget (``BudgetExceededError``); priced exactly, the last labels are
    dropped and the run ends within its budget."""
    parts = components()
    mix = parts.training_set
    assert isinstance(mix, Mix)
    reserved = mix.reserve(24, rng=rng_for(SEED, 0, 0, TRAINING_SET))
    assert reserved is not None and bool(np.all(reserved.extra["outside"]))
    learner = parts.learner
    assert isinstance(learner, TokenLearner)
    estimate = float(learner.training_usage(reserved)["tokens"].sum())
    budget = estimate + 24 * 3  # the reserved labels' training, and 24 kept answers of 3 words
    train_only = CostModel(unit="tokens", prices={"train": {"tokens": 1.0}})
    history = run(parts, planner(budget, iterations=1, per_selected=3.0), train_only,
                  LoopSettings(chunk_size=16), seed=SEED)
    record = history[0]
    assert record.n_selected == 24 and 0 < record.n_outside < 8  # the placed labels cost more: some dropped
    trained = learner.trained[0]
    assert record.cost["train"] == float(learner.training_usage(trained)["tokens"].sum())  # exactly these rows
    assert record.cumulative_cost <= budget


def test_uniform_labels_are_the_rows_reserved():
    """With a uniform allocation the placed labels are the reserved ones: the same rows, the same cost."""
    parts = components(allocation="uniform")
    mix = parts.training_set
    assert isinstance(mix, Mix)
    reserved = mix.reserve(24, rng=rng_for(SEED, 0, 0, TRAINING_SET))
    assert reserved is not None
    history = run(parts, planner(50_000, iterations=1), COSTS, LoopSettings(chunk_size=16), seed=SEED)
    labels = label_rows(parts, 0)
    assert history[0].n_selected == 24
    assert list(labels.samples["completion"]) == list(reserved.samples["completion"])




@pytest.mark.parametrize("faults", [["label:1", "label:2", "train:3"], ["generate:5", "label:1", "checkpoint:1"]])
def test_faults_between_the_reservation_and_the_commit_resume_to_the_same_ledger(
        faults: list[str], tmp_path: Path) -> None:
    reference_dir = tmp_path / "reference"
    reference = _run_in(reference_dir)
    run_dir = tmp_path / "run"
    for fault in faults:  # each stops the run after the labels were reserved, before the iteration commits
        with pytest.raises(OSError):
            _run_in(run_dir, fault)
    resumed = _run_in(run_dir)
    assert [r.cost for r in resumed] == [r.cost for r in reference]
    assert all(r.cost["label"] > 0 for r in reference)
    assert snapshot(run_dir) == snapshot(reference_dir)  # ledger rows, metrics, checkpoints
    ledger = RunStore(run_dir).committed_ledger_rows()
    assert [r.iteration for r in ledger if r.stage == "label"] == [0, 1, 2, 3]  # once each: never twice
    store = RunStore(run_dir)  # the metrics report's stage bars and inspect read
    assert all(store.metrics(e.iteration)["cost"]["label"] > 0 for e in store.manifest().iterations)


def test_plan_shows_the_label_stage(tmp_path: Path):
    from synthloop.configs import family_for, label_plan, parse_config

    raw = {"name": "m", "seed": 0, "schedule": {"kind": "constant", "n0": 12, "iterations": 3},
           "budget": {"total": 100000, "unit": "tokens",
                      "costs": {"generate": {"tokens": 1.0}, "train": {"tokens": 1.0},
                                "label": {"completion_tokens": 2.0}}},
           "task": {"kind": "math", "levels": [{"name": "a", "dataset": "chain_sum",
                                                "params": {"min_terms": 2, "max_terms": 2, "min_digits": 1,
                                                           "max_digits": 1}}],
                    "shots": 0, "labeler": {"kind": "controlled", "beta": 0.5}},
           "model": {"kind": "tiny"}, "prompt_policy": {"kind": "hardest_first"},
           "training_set": {"kind": "mix", "alpha": 0.2}}
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = parse_config(raw)
    family = family_for(config)
    per_selected, per_label = label_plan(config, family, family.validate(config))
    assert per_selected == pytest.approx(0.25) and per_label > 0
    out = cli("plan", path).stdout
    assert "label cost" in out and "expected usage per label" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("│         0"))
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[3] == "3" and float(cells[4]) == pytest.approx(3 * per_label, rel=1e-5)  # round(0.25 * 12)
    assert float(cells[5]) > float(cells[4])  # the iteration's cost holds its labels


SCRIPT = ROOT / "tests" / "test_label_stage.py"
DELAY = 0.02


@pytest.mark.slow
def test_sigkilled_between_the_reservation_and_the_commit_resumes_to_the_same_ledger(tmp_path: Path):
    """The real thing: the run as a subprocess, SIGKILLed again and again, most often right after
    its labels were charged (``label``) and around training and the commit."""
    reference_dir = tmp_path / "reference"
    _run_in(reference_dir, store=RunStore(reference_dir, fsync=False))
    run_dir = tmp_path / "killed"

    def spawn(trace: Path, stderr: Path) -> subprocess.Popen[bytes]:
        return spawn_script(SCRIPT, run_dir, trace, stderr, delay=DELAY)

    killed_in = kill_repeatedly(spawn, run_dir, tmp_path, phases={"label": 4, "train": 2, "checkpoint": 2,
                                                                  "generate": 1, "commit": 1},
                                kills=6, seed=4, delay=DELAY, budget=50_000)
    assert killed_in["label"] >= 1, killed_in
    finished = spawn(tmp_path / "trace-final", tmp_path / "stderr-final")
    assert finished.wait() == 0, (tmp_path / "stderr-final").read_text()
    assert snapshot(run_dir) == snapshot(reference_dir)


if __name__ == "__main__":  # the run the SIGKILL test starts and kills
    directory = Path(sys.argv[1])
    _run_in(directory, store=RunStore(directory, fsync=fsync_from_environment(), faults=Faults.from_environment()))
