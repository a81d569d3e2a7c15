"""The loop's open stages: prompt policies, priced scoring / labeling / judging, training-set
policies, selectors in streaming and batch use, budgets in seconds."""

from __future__ import annotations

import math
import time
import typing
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pool_task import PoolGenerator, PoolLearner, PoolTask, PoolVerifier, pool_components
from synthloop import schedules
from synthloop.budget import CostModel, Planner, UnitCosts
from synthloop.loop import LoopSettings, Stages, run
from synthloop.policies import UniformPrompts, WeightedPrompts
from synthloop.records import Candidates, Observations, Prompts, Scores
from synthloop.schedules import ScheduleConfig
from synthloop.select import (
    Passed,
    RewardProportional,
    RewardProportionalWithoutReplacement,
    SelectorConfig,
    Threshold,
    TopK,
    make_selector,
)
from synthloop.testing import (
    check_prompt_policy,
    check_selector,
    check_stateful,
    check_training_set,
)
from synthloop.training_set import Accumulate, Mix, ThisIteration

SELECTORS = [RewardProportional(), Threshold(threshold=0.3), Passed(), TopK(), RewardProportionalWithoutReplacement()]


def _planner(budget: float, n0: float, *, per_draw: float = 0.0, per_selected: float = 1.0,
             iterations: int | None = None) -> Planner:
    return Planner(make=lambda n: schedules.exponential(n, 0.5), budget=budget,
                   unit_costs=UnitCosts(per_draw, per_selected), acceptance_rate=0.3, n0=n0,
                   max_iterations=iterations)


# -- conformance --------------------------------------------------------------------------------


@pytest.mark.parametrize("selector", SELECTORS, ids=lambda s: type(s).__name__)
def test_every_selector_conforms(selector):
    check_selector(selector)


def test_prompt_policies_conform():
    task = PoolTask()
    check_prompt_policy(UniformPrompts(), task, model=0.5)
    check_prompt_policy(WeightedPrompts(pool_size=task.pool_size), task, model=0.5)
    check_prompt_policy(WeightedPrompts(pool_size=task.pool_size, scorer=task, factor=3.0), task, model=0.5)


def _observed_policy(task: PoolTask) -> WeightedPrompts:
    return WeightedPrompts(pool_size=task.pool_size, scorer=task)


def test_weighted_policy_state_round_trips(tmp_path: Path):
    task = PoolTask()

    def advance(policy: WeightedPrompts):
        chosen = policy.choose(task, 32, model=0.3, rng=np.random.default_rng(1))
        verdicts = (chosen.prompts.items["difficulty"] > 1.5).astype(np.int8)  # hard ones fail
        policy.observe(Observations.of(chosen.prompts.index, verdicts))
        return policy.choose(task, 32, model=0.3, rng=np.random.default_rng(2)).prompts

    check_stateful(lambda: _observed_policy(task), advance, tmp_path)


def test_training_set_policies_conform():
    task = PoolTask()
    selected, prompts = task.sample(10, rng=np.random.default_rng(0))
    for policy in (ThisIteration(), Accumulate(), Mix(task, alpha=0.25)):
        check_training_set(policy, selected, prompts)
        check_training_set(policy, selected, prompts)  # a second iteration: accumulate carries rows


def test_accumulated_pool_round_trips(tmp_path: Path):
    task = PoolTask()

    def advance(policy: Accumulate):
        selected, prompts = task.sample(7, rng=np.random.default_rng(3))
        built = policy.build(selected, prompts, rng=np.random.default_rng(0))
        return built.candidates.samples["x"], built.candidates.prompt_index, built.prompts.items["difficulty"]

    check_stateful(Accumulate, advance, tmp_path)


# -- policies in the loop -----------------------------------------------------------------------


def test_weights_rise_on_failures_and_fall_on_passes():
    policy = WeightedPrompts(pool_size=4, eta=1.0, explore=0.0)
    policy.observe(Observations(np.array([0, 1, 2]), n_pass=np.array([0, 3, 0]), n_fail=np.array([4, 1, 0]),
                                n_error=np.array([0, 0, 5])))
    w = policy.weights_
    assert w[0] > w[3] > w[1]  # failed-only > unseen > mostly passed
    assert w[2] == w[3]  # only ERROR verdicts: no evidence either way
    assert w[0] / w[3] == pytest.approx(math.e)


def test_weighted_policy_focuses_generation_on_hard_prompts():
    parts = pool_components(scored=False, accumulate=False, pool_size=60)
    costs = CostModel(unit="samples", prices={"generate": {"samples": 0.1}, "train": {"samples": 1.0}})
    run(parts, _planner(3000, 100, per_draw=0.1, iterations=6), costs, LoopSettings(chunk_size=64), seed=0)
    task = parts.task
    assert isinstance(task, PoolTask) and isinstance(parts.prompt_policy, WeightedPrompts)
    correlation = np.corrcoef(parts.prompt_policy.weights_, task.difficulty)[0, 1]
    assert correlation > 0.5


def test_scoring_is_a_priced_stage_and_the_pool_accumulates():
    parts = pool_components(pool_size=30)
    costs = CostModel(unit="samples", prices={"generate": {"samples": 0.1}, "score": {"samples": 0.05},
                                              "train": {"samples": 1.0}})
    history = run(parts, _planner(2000, 40, per_draw=0.2), costs, LoopSettings(chunk_size=50), seed=1)
    assert all(m.cost["score"] > 0 for m in history if m.n_generated > 0)
    # the scorer scores factor * n drawn prompts for n chosen: 2 samples of scoring per draw
    for m in history:
        assert m.cost["score"] == pytest.approx(0.05 * 2 * m.n_generated)
    filled = [m for m in history if m.n_selected > 0]  # the last may be refused: the pool no longer fits
    trained = [m.n_trained for m in filled]
    assert len(filled) >= 4 and trained == list(np.cumsum([m.n_selected for m in filled]))
    assert [m.n_carried for m in filled] == [0, *trained[:-1]]
    assert history[-1].cumulative_cost <= 2000 * (1 + 1e-12)


def test_mix_adds_outside_rows_at_share_alpha():
    parts = pool_components(scored=False, accumulate=False)
    parts.training_set = Mix(parts.task, alpha=0.2)  # type: ignore[arg-type]
    costs = CostModel(unit="samples", prices={"train": {"samples": 1.0}})
    history = run(parts, _planner(600, 40), costs, LoopSettings(chunk_size=50), seed=2)
    for m in history:
        assert m.n_outside == round(0.25 * m.n_selected)
        assert m.n_trained == m.n_selected + m.n_outside
        assert m.cost["train"] == pytest.approx(m.n_trained)
    assert history[-1].cumulative_cost <= 600 * (1 + 1e-12)


# -- budgets ------------------------------------------------------------------------------------


class JudgedGenerator(PoolGenerator):
    """A generator that runs a judge on each draw itself: its checks are charged to ``judge``."""

    def max_usage_per_draw(self) -> dict[str, float]:
        return {"samples": 1.0, "judge:samples": 1.0}

    def generate(self, model: float, prompts: Prompts, *, rng: np.random.Generator) -> Candidates:
        candidates = super().generate(model, prompts, rng=rng)
        return Candidates(candidates.samples, candidates.prompt_index,
                          {**candidates.usage, "judge:samples": np.ones(len(prompts))})


prices = st.floats(min_value=0.0, max_value=2.0)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(budget=st.floats(min_value=5, max_value=3000), c_label=prices, c_score=prices, c_judge=prices,
       c_verify=prices, c_train=st.floats(min_value=0.01, max_value=3.0), n0=st.floats(min_value=1, max_value=80),
       chunk=st.integers(min_value=4, max_value=200), selector=st.sampled_from(range(len(SELECTORS))),
       batch=st.booleans(), accumulate=st.booleans(), seed=st.integers(0, 2**16))
def test_no_run_spends_past_its_budget_with_every_stage_priced(
        budget, c_label, c_score, c_judge, c_verify, c_train, n0, chunk, selector, batch, accumulate, seed):
    """Teacher-style labeling, student scoring of prompts, a judge inside the generator: whatever
    the prices, selector and use (streaming or batch), the ledger stays within the total, and every
    iteration the budget did not cut keeps its n_t."""
    chosen = SELECTORS[selector]
    parts = pool_components(accumulate=accumulate)
    parts.generator, parts.selector, parts.stages = JudgedGenerator(), chosen, Stages(generate="label")
    costs = CostModel(unit="samples", prices={"label": {"samples": c_label}, "score": {"samples": c_score},
                                              "judge": {"samples": c_judge}, "verify": {"samples": c_verify},
                                              "train": {"samples": c_train}})
    per_draw = c_label + 2 * c_score + c_judge + c_verify
    mode: typing.Literal["accept", "select"] = "select" if batch or not chosen.streaming else "accept"
    history = run(parts, _planner(budget, n0, per_draw=per_draw, per_selected=c_train, iterations=6), costs,
                  LoopSettings(mode=mode, chunk_size=chunk, oversample=3.0, max_draws_per_selected=400), seed=seed)
    spent = history[-1].cumulative_cost if history else 0.0
    assert spent <= budget * (1 + 1e-12) + 1e-9
    for m in history:
        if not m.cut:  # the budget allowed n_t: streaming keeps it; batch draws all N_t
            assert m.n_selected == m.n_target or (mode == "select" and m.n_generated == math.ceil(3.0 * m.n_target))
    assert sum(m.iteration_cost for m in history) == pytest.approx(spent)


def test_a_budget_in_seconds_ends_cleanly_within_one_part_and_one_update():
    parts = pool_components(scored=False, accumulate=False)
    budget = 0.05  # seconds of generation, verification and training
    costs = CostModel(unit="seconds", prices={"generate": {"seconds": 1.0}, "verify": {"seconds": 1.0},
                                              "train": {"seconds": 1.0}})
    planner = Planner(make=lambda n: schedules.constant(n), budget=budget, unit_costs=UnitCosts(1e-5, 1e-5),
                      acceptance_rate=0.5, n0=200)
    history = run(parts, planner, costs, LoopSettings(chunk_size=256), seed=0)
    assert len(history) > 1 and history[-1].cumulative_cost > 0.9 * budget  # no budget left idle
    assert all(m.cumulative_cost <= budget for m in history[:-1])
    # the overrun is at most what the last iteration's work measured (its last part and update)
    last = history[-1]
    assert last.cumulative_cost <= budget + last.seconds["generate"] + last.seconds["verify"] + last.seconds["train"]


@pytest.mark.parametrize("selector", SELECTORS, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("batch", [False, True], ids=["streaming", "batch"])
def test_every_selector_keeps_n_t_when_the_budget_allows(selector, batch):
    if not batch and not selector.streaming:
        parts = pool_components()
        parts.selector = selector
        with pytest.raises(ValueError, match="streaming selector"):
            run(parts, _planner(10_000, 30, iterations=3),
                CostModel(unit="samples", prices={"train": {"samples": 1.0}}),
                LoopSettings(mode="accept"), seed=0)
        return
    parts = pool_components()
    parts.selector, parts.prompt_policy = selector, UniformPrompts()  # about half the draws pass
    history = run(parts, _planner(10_000, 30, iterations=3), CostModel(unit="samples", prices={"train": {"samples": 1.0}}),
                  LoopSettings(mode="select" if batch else "accept", oversample=20.0, chunk_size=64), seed=0)
    assert [m.n_selected for m in history] == [m.n_target for m in history] == [30, 45, 68]


class SlowGenerator(PoolGenerator):
    """Generation that takes a millisecond per part: measured seconds eat into reserved training."""

    def generate(self, model: float, prompts: Prompts, *, rng: np.random.Generator) -> Candidates:
        time.sleep(0.001)
        return super().generate(model, prompts, rng=rng)


def test_seconds_next_to_ahead_priced_training_never_crash_and_never_overspend_ahead():
    """Generation priced in measured seconds, training per sample: the seconds may run past what
    was predicted, and training then shrinks to what is left instead of raising."""
    for seed in range(3):
        parts = pool_components(scored=False, accumulate=False)
        parts.generator = SlowGenerator()
        costs = CostModel(unit="mixed", prices={"generate": {"seconds": 1.0}, "train": {"samples": 1e-4}})
        planner = Planner(make=schedules.constant, budget=0.05, unit_costs=UnitCosts(1e-5, 1e-4),
                          acceptance_rate=0.5, n0=200)
        history = run(parts, planner, costs, LoopSettings(chunk_size=16), seed=seed)
        last = history[-1]
        assert last.cumulative_cost <= 0.05 + last.seconds["generate"]
        assert all(m.cost["train"] == pytest.approx(1e-4 * m.n_trained) for m in history)


class StalledGenerator(PoolGenerator):
    """Generation whose second part stalls past the whole budget (a loaded machine, made sure): the
    first part's kept rows had their training reserved, the stall's measured seconds eat it."""

    calls = 0

    def generate(self, model: float, prompts: Prompts, *, rng: np.random.Generator) -> Candidates:
        self.calls += 1
        time.sleep(0.6 if self.calls == 2 else 0.0)
        return super().generate(model, prompts, rng=rng)


def test_an_iteration_whose_generation_spent_everything_trains_on_nothing_and_ends_the_run():
    """Seconds of generation past the whole budget leave no row affordable: the learner is not asked
    to update on an empty set (the pool learner's mean of nothing was a crash), and the run ends."""
    parts = pool_components(scored=False, accumulate=False)
    parts.generator = StalledGenerator()
    costs = CostModel(unit="mixed", prices={"generate": {"seconds": 1.0}, "train": {"samples": 1e-3}})
    planner = Planner(make=schedules.constant, budget=0.5, unit_costs=UnitCosts(1e-5, 1e-3),
                      acceptance_rate=0.5, n0=200)
    history = run(parts, planner, costs, LoopSettings(chunk_size=16), seed=0)
    assert len(history) == 1 and history[0].n_selected > 0 and history[0].n_trained == 0
    assert history[0].cost["train"] == 0 and history[0].train == {} and history[0].eval


class ReportingLearner(PoolLearner):
    """The pool learner, reporting statistics of its last update as the adaptive planner reads them."""

    def update(self, selected: Candidates, prompts: Prompts, *, rng: np.random.Generator) -> dict[str, float]:
        self.statistics_ = {"update_variance": 1.0, "update_norm2": float(len(selected))}
        return super().update(selected, prompts, rng=rng)

    def update_statistics(self) -> dict[str, float]:
        return dict(self.statistics_)


def test_an_iteration_that_trains_on_nothing_reports_no_update_statistics():
    """A learner's statistics describe its last update: an iteration that made none must not hand
    the previous one's to the planner (the adaptive planner would count that update twice)."""
    parts = pool_components(scored=False, accumulate=False)
    task = typing.cast(PoolTask, parts.task)
    learner = ReportingLearner(task)
    parts.generator, parts.learner = StalledGenerator(), learner
    learner.update(*task.sample(5, rng=np.random.default_rng(0)), rng=np.random.default_rng(0))
    costs = CostModel(unit="mixed", prices={"generate": {"seconds": 1.0}, "train": {"samples": 1e-3}})
    planner = Planner(make=schedules.constant, budget=0.5, unit_costs=UnitCosts(1e-5, 1e-3),
                      acceptance_rate=0.5, n0=200)
    history = run(parts, planner, costs, LoopSettings(chunk_size=16), seed=0)
    assert history[0].n_selected > 0 and history[0].n_trained == 0
    assert learner.update_statistics() and history[0].update_statistics == {}


def test_a_batch_iteration_that_keeps_fewer_than_n_t_does_not_end_the_run():
    parts = pool_components(scored=False, accumulate=False)
    parts.selector, parts.prompt_policy = Passed(), UniformPrompts()
    costs = CostModel(unit="samples", prices={"generate": {"samples": 0.2}, "train": {"samples": 1.0}})
    planner = Planner(make=schedules.constant, budget=600, unit_costs=UnitCosts(0.2, 1.0),
                      acceptance_rate=0.3, n0=40)
    history = run(parts, planner, costs, LoopSettings(mode="select", oversample=1.2, chunk_size=64), seed=5)
    assert any(m.n_selected < m.n_target for m in history[:-1])  # short iterations, and the run went on
    assert history[-1].cumulative_cost > 0.9 * 600


class TokenJudge(PoolVerifier):
    """A verifier that reports tokens (a judge model reading each answer)."""

    def verify(self, candidates: Candidates, prompts: Prompts) -> Scores:
        scores = super().verify(candidates, prompts)
        return Scores(scores.reward, scores.verdict,
                      usage={"samples": np.ones(len(scores)), "tokens": np.full(len(scores), 100.0)})


def test_a_verifier_priced_by_tokens_is_bounded_before_generation():
    costs = CostModel(unit="tokens", prices={"verify": {"tokens": 1.0}, "train": {"samples": 1.0}})
    planner = Planner(make=schedules.constant, budget=5000, unit_costs=UnitCosts(100, 1.0), acceptance_rate=0.5, n0=20)
    parts = pool_components(scored=False, accumulate=False)
    parts.task.verifier = TokenJudge(parts.task.difficulty)  # type: ignore[attr-defined,misc]
    with pytest.raises(ValueError, match=r"budget.costs.verify.tokens"):  # undeclared: refused up front
        run(parts, planner, costs, LoopSettings(chunk_size=64), seed=0)
    parts.verify_usage_per_candidate = {"samples": 1.0, "tokens": 100.0}
    history = run(parts, planner, costs, LoopSettings(chunk_size=64), seed=0)
    assert history[-1].cumulative_cost <= 5000
    assert all(m.cost["verify"] == 100 * m.n_generated for m in history)


def _kinds(union: object) -> list[type]:
    return list(typing.get_args(typing.get_args(union)[0]))


@pytest.mark.parametrize("model", _kinds(SelectorConfig), ids=lambda m: m.__name__)
def test_every_selector_kind_in_the_config_builds_a_conforming_selector(model):
    kind = typing.get_args(model.model_fields["kind"].annotation)[0]
    check_selector(make_selector(model(kind=kind)))


@pytest.mark.parametrize("model", _kinds(ScheduleConfig), ids=lambda m: m.__name__)
def test_every_schedule_kind_in_the_config_builds_a_schedule(model):
    kind = typing.get_args(model.model_fields["kind"].annotation)[0]
    params: dict[str, dict[str, object]] = {"polynomial": {"alpha": 1.0}, "exponential": {"growth": 0.5},
                                            "explicit": {"values": [3, 5]}}
    needed = params.get(kind, {})
    extra = {} if kind == "explicit" else {"n0": 10.0}
    schedule = model(kind=kind, **needed, **extra).factory({"sigma": 1.0, "kappa": 1.0})(10.0)
    assert schedule(0) >= 1 and schedule(1) >= schedule(0)


class SelfCheckingGenerator(PoolGenerator):
    """A generator that reads each answer back itself (a checker with tokens): ``verify:tokens``."""

    def max_usage_per_draw(self) -> dict[str, float]:
        return {"samples": 1.0, "verify:tokens": 50.0}

    def generate(self, model: float, prompts: Prompts, *, rng: np.random.Generator) -> Candidates:
        candidates = super().generate(model, prompts, rng=rng)
        return Candidates(candidates.samples, candidates.prompt_index,
                          {**candidates.usage, "verify:tokens": np.full(len(prompts), 50.0)})


def test_checks_a_generator_runs_itself_are_declared_and_charged_to_their_stage():
    parts = pool_components(scored=False, accumulate=False)
    parts.generator = SelfCheckingGenerator()
    costs = CostModel(unit="tokens", prices={"verify": {"tokens": 1.0}, "train": {"samples": 1.0}})
    planner = Planner(make=schedules.constant, budget=5000, unit_costs=UnitCosts(50, 1.0), acceptance_rate=0.5, n0=20)
    history = run(parts, planner, costs, LoopSettings(chunk_size=64), seed=0)  # not refused: it is declared
    assert history[-1].cumulative_cost <= 5000
    assert all(m.cost["verify"] == 50 * m.n_generated for m in history)
