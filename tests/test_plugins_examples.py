"""The worked examples of ``docs/architecture.md`` ("add a selector / prompt policy / task family in one
file"), in ``examples/plugins/``: each passes its conformance checks and runs through the real loop."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "plugins"))

from diverse_top_k import DiverseTopK
from frontier_prompts import FrontierPrompts
from mod_sum_task import ModSumGenerator, ModSumLearner, ModSumTask, components

from synthloop import configs, schedules
from synthloop.budget import CostModel, Planner, UnitCosts
from synthloop.experiments import run_config
from synthloop.loop import LoopSettings, run
from synthloop.protocols import Batch, Selector
from synthloop.records import Candidates, IterationRecord, Observations, Prompts, Scores, Verdict
from synthloop.select import Passed
from synthloop.testing import (
    check_evaluation,
    check_generator,
    check_learner,
    check_prompt_policy,
    check_selector,
    check_stateful,
    check_task,
    check_verifier,
)

COSTS = CostModel(unit="samples", prices={"generate": {"samples": 0.2}, "train": {"samples": 1.0}})


def _run(parts: Any, *, seed: int, budget: float = 600.0, mode: str | None = None) -> list[IterationRecord]:
    planner = Planner(make=schedules.constant, budget=budget, unit_costs=UnitCosts(0.2, 1.0),
                      acceptance_rate=0.3, n0=25)
    return run(parts, planner, COSTS, LoopSettings(mode=mode, oversample=6.0, chunk_size=64),  # type: ignore[arg-type]
               seed=seed)


# -- a task family ------------------------------------------------------------------------------


def test_mod_sum_task_conforms() -> None:
    task = ModSumTask(pool_size=30)
    check_task(task)
    learner = ModSumLearner(task.pretrained(seed=1))
    check_evaluation(task, learner.model)
    prompts = task.prompts_at(np.arange(30).repeat(4))
    candidates = check_generator(ModSumGenerator(), learner.model, prompts)
    scores = check_verifier(task.verifier, candidates, prompts)
    assert scores.count(Verdict.ERROR) > 0  # the unreadable answer "?" is an error, with a NaN reward
    assert np.all(np.isnan(scores.reward[candidates.samples["answer"] == 10]))
    passed = scores.verdict == Verdict.PASS
    check_learner(lambda: ModSumLearner(task.pretrained(seed=1)), candidates.take(np.flatnonzero(passed)),
                  prompts.take(np.flatnonzero(passed)))


def test_mod_sum_task_improves_through_the_loop_within_its_budget() -> None:
    parts = components(pool_size=50, seed=0)
    task = parts.task
    before = task.evaluate(parts.learner.model, rng=np.random.default_rng(0))["pass_rate"]
    history = _run(parts, seed=0)
    assert history[-1].cumulative_cost <= 600 * (1 + 1e-12)
    assert history[-1].cumulative_cost > 590  # no budget left idle
    assert history[-1].eval["pass_rate"] > before + 0.08
    assert sum(m.verdicts["error"] for m in history) > 0  # errors were drawn, counted, never kept


def test_mod_sum_family_from_a_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(configs.FAMILIES, "mod-sum", "mod_sum_task")
    data = {"name": "mod-sum", "seed": 3, "task": {"kind": "mod-sum", "pool_size": 40},
            "learner": {"kind": "sft", "lr": 0.5}, "selector": {"kind": "passed"},
            "schedule": {"kind": "constant", "n0": 20}, "loop": {"chunk_size": 64},
            "budget": {"total": 300, "costs": {"generate": 0.2, "verify": 0.0, "train": 1.0}}}
    history = run_config(configs.parse_config(data), run_dir=None)
    assert len(history) > 3 and history[-1].cumulative_cost <= 300 * (1 + 1e-12)
    assert history[-1].eval["pass_rate"] > history[0].eval["pass_rate"]
    with pytest.raises(configs.ConfigError, match=r"^budget\.costs\.generate\.tokens: priced, but the generate"):
        configs.make_planner(configs.parse_config({**data, "budget": {"total": 300, "costs": {
            "generate": {"tokens": 1.0}, "train": 1.0}}}))
    with pytest.raises(configs.ConfigError, match=r"^task\.pool_size"):
        configs.parse_config({**data, "task": {"kind": "mod-sum", "pool_size": 0}})


# -- a selector ---------------------------------------------------------------------------------


def test_diverse_top_k_conforms() -> None:
    check_selector(DiverseTopK(by="loss"))
    with pytest.raises(KeyError, match="surprise"):
        DiverseTopK(by="surprise").select(_hand_batch(), n_wanted=2, rng=np.random.default_rng(0))


def _hand_batch() -> Batch:
    """Prompts 7, 7, 7, 3, 3, 5, 5; the last row of prompt 5 is an ERROR, the first of prompt 3 a FAIL."""
    verdict = np.array([0, 0, 0, 1, 0, 0, 2], dtype=np.int8)
    reward = np.where(verdict == Verdict.ERROR, np.nan, (verdict == Verdict.PASS).astype(float))
    candidates = Candidates(samples={"answer": np.zeros(7)}, prompt_index=np.array([7, 7, 7, 3, 3, 5, 5]),
                            usage={}, extra={"loss": np.array([0.1, 0.9, 0.5, 9.0, 0.2, 0.3, 5.0])})
    return Batch(candidates, Prompts(index=candidates.prompt_index), Scores(reward=reward, verdict=verdict))


def test_diverse_top_k_takes_one_per_prompt_per_round_by_the_extra_column() -> None:
    batch, select = _hand_batch(), DiverseTopK(by="loss")
    rng = np.random.default_rng(0)
    # round 1: best passed of each prompt (7: row 1, 5: row 5, 3: row 4), by loss; round 2: prompt 7's next
    assert select.select(batch, n_wanted=1, rng=rng).tolist() == [1]
    assert select.select(batch, n_wanted=3, rng=rng).tolist() == [1, 4, 5]
    assert select.select(batch, n_wanted=4, rng=rng).tolist() == [1, 2, 4, 5]
    assert select.select(batch, n_wanted=9, rng=rng).tolist() == [0, 1, 2, 4, 5]  # never a FAIL or an ERROR


class Spy:
    """Records every batch a batch selector sees and what it keeps."""

    streaming: ClassVar[bool] = False

    def __init__(self, inner: Selector) -> None:
        self.inner = inner
        self.calls: list[tuple[Batch, int, npt.NDArray[np.int64]]] = []

    def select(self, batch: Batch, *, n_wanted: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
        chosen = self.inner.select(batch, n_wanted=n_wanted, rng=rng)
        self.calls.append((batch, n_wanted, chosen))
        return chosen


def test_diverse_top_k_in_the_loop_keeps_distinct_prompts_and_beats_passed() -> None:
    spy = Spy(DiverseTopK(by="loss"))
    history = _run(components(seed=1, selector=spy), seed=1, mode="select")
    assert len(spy.calls) == len(history) > 5
    for batch, n_wanted, chosen in spy.calls:
        passed = batch.scores.verdict == Verdict.PASS
        distinct_passed = len(np.unique(batch.prompts.index[passed]))
        assert len(chosen) == min(n_wanted, int(passed.sum()))
        assert len(np.unique(batch.prompts.index[chosen])) == min(len(chosen), distinct_passed)
        assert "loss" in batch.candidates.extra  # the generator's extra column reached the selector
    for seed in (0, 1, 2):  # same budget and seed: informative, spread-out answers teach more
        diverse = _run(components(seed=seed, selector=DiverseTopK()), seed=seed, mode="select")
        passed = _run(components(seed=seed, selector=Passed()), seed=seed, mode="select")
        assert diverse[-1].eval["pass_rate"] > passed[-1].eval["pass_rate"] + 0.02


# -- a prompt policy ----------------------------------------------------------------------------


def _observe_hard_ones(task: ModSumTask, policy: FrontierPrompts, seed: int) -> Prompts:
    chosen = policy.choose(task, 64, model=None, rng=np.random.default_rng(seed))
    verdict = np.where(chosen.prompts.index % 3 == 0, Verdict.FAIL, Verdict.PASS).astype(np.int8)
    verdict[::5] = np.where(chosen.prompts.index[::5] % 2 == 0, Verdict.FAIL, Verdict.ERROR)
    policy.observe(Observations.of(chosen.prompts.index, verdict))
    return policy.choose(task, 64, model=None, rng=np.random.default_rng(seed + 1)).prompts


def test_frontier_prompts_conforms_and_its_state_round_trips(tmp_path: Path) -> None:
    task = ModSumTask(pool_size=30)
    check_prompt_policy(FrontierPrompts(pool_size=30), task, model=None)
    observed = FrontierPrompts(pool_size=30)
    _observe_hard_ones(task, observed, seed=0)
    check_prompt_policy(observed, task, model=None)
    check_stateful(lambda: FrontierPrompts(pool_size=30), lambda p: _observe_hard_ones(task, p, seed=4), tmp_path)
    with pytest.raises(ValueError, match="pool has 31"):
        FrontierPrompts(pool_size=31).load(tmp_path / "state")


def test_frontier_prompts_weights_the_least_passed_frontier_first() -> None:
    policy = FrontierPrompts(pool_size=5, explore=0.0, decay=1.0)
    policy.observe(Observations(np.array([0, 1, 2, 3]), n_pass=np.array([1, 3, 4, 0]),
                                n_fail=np.array([3, 1, 0, 4]), n_error=np.array([0, 0, 9, 9])))
    # prompt 0 passes 1/4, prompt 1 3/4: weights 3/4 and 1/4; always (2), never (3), unseen (4): none
    assert policy.probabilities() == pytest.approx([0.75, 0.25, 0.0, 0.0, 0.0])
    policy.observe(Observations(np.array([4]), n_pass=np.array([0]), n_fail=np.array([0]), n_error=np.array([7])))
    assert policy.counts_[:, 4].tolist() == [0.0, 0.0]  # an ERROR says nothing either way


def test_frontier_prompts_in_the_loop_sees_every_verdict_and_draws_on_the_frontier() -> None:
    parts = components(seed=2)
    policy = FrontierPrompts(pool_size=50, explore=0.2, decay=1.0)  # decay 1: exact counts
    parts.prompt_policy = policy
    history = _run(parts, seed=2)
    assert len(history) > 5 and history[-1].cumulative_cost <= 600 * (1 + 1e-12)
    assert policy.counts_[0].sum() == sum(m.verdicts["pass"] for m in history)
    assert policy.counts_[1].sum() == sum(m.verdicts["fail"] for m in history)
    passed, failed = policy.counts_
    frontier = (passed > 0) & (failed > 0)
    assert 0 < frontier.sum() < len(frontier)
    probabilities = policy.probabilities()
    assert probabilities[~frontier].max() == pytest.approx(0.2 / len(frontier))  # explored only
    assert probabilities[frontier].sum() == pytest.approx(0.8 + 0.2 * frontier.mean())
