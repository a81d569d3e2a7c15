"""Budgets hold: no plan or run spends past its budget, n_t >= 1, fitted plans use the budget."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from synthloop import schedules
from synthloop.budget import (
    BudgetExceededError,
    CostModel,
    Ledger,
    Planner,
    UnitCosts,
    fit_n0,
    plan,
)
from synthloop.loop import LoopSettings, run
from synthloop.select import RewardProportional, RewardProportionalWithoutReplacement, Threshold, TopK
from synthloop.tasks.gaussian import GaussianProblem

from helpers import gaussian_components

n0s = st.floats(min_value=0.5, max_value=500, allow_nan=False)
family_makers = st.sampled_from([
    ("constant", lambda n0: schedules.constant(n0)),
    ("linear", lambda n0: schedules.linear(n0)),
    ("polynomial", lambda n0: schedules.polynomial(n0, 1.5)),
    ("exponential", lambda n0: schedules.exponential(n0, 0.3)),
    ("exponential-fast", lambda n0: schedules.exponential(n0, 2.0)),
])
unit_costs = st.builds(
    UnitCosts,
    per_draw=st.floats(min_value=0, max_value=5, allow_nan=False),
    per_selected=st.floats(min_value=0.01, max_value=5, allow_nan=False),
)


@given(family=family_makers, n0=n0s, t=st.integers(min_value=0, max_value=40))
def test_every_schedule_keeps_at_least_one(family, n0, t):
    value = family[1](n0)(t)
    assert isinstance(value, int) and value >= 1


@given(
    family=family_makers,
    n0=n0s,
    budget=st.floats(min_value=0, max_value=2e4, allow_nan=False),
    costs=unit_costs,
    acceptance=st.floats(min_value=0.01, max_value=1.0),
    max_iterations=st.none() | st.integers(min_value=1, max_value=60),
)
def test_plan_never_exceeds_budget(family, n0, budget, costs, acceptance, max_iterations):
    rows = plan(family[1](n0), budget=budget, unit_costs=costs, acceptance_rate=acceptance,
                max_iterations=max_iterations)
    per_kept = costs.per_kept(1 / acceptance)
    assert all(r.n_selected >= 1 for r in rows)
    assert math.fsum(r.n_selected * per_kept for r in rows) <= budget * (1 + 1e-12)
    if rows:
        assert rows[-1].cumulative_cost <= budget * (1 + 1e-12)
    # The plan stops only when not one more selected sample fits (or its iteration cap is reached).
    if max_iterations is None or len(rows) < max_iterations:
        spent = rows[-1].cumulative_cost if rows else 0.0
        assert budget - spent < per_kept * (1 + 1e-9)


@settings(suppress_health_check=[HealthCheck.filter_too_much], deadline=None)
@given(
    family=family_makers,
    budget=st.floats(min_value=100, max_value=1e6, allow_nan=False),
    costs=unit_costs,
    acceptance=st.floats(min_value=0.05, max_value=1.0),
    iterations=st.integers(min_value=1, max_value=12),
)
def test_fitted_plan_uses_at_least_95_percent(family, budget, costs, acceptance, iterations):
    """Where the schedule allows (n_t >= 1 leaves room), a fitted n0 uses >= 95% of the budget."""
    per_kept = costs.per_kept(1 / acceptance)
    shape = family[1](1.0)
    # The schedule allows it when its last iteration can hold at least ~40 samples and the rounding
    # of every n_t to an integer, which moves the cost by at most one sample per iteration, is
    # worth less than 5% of the budget (with few samples per iteration, several n_t round at once).
    smallest_n0 = 40 / shape.fn(iterations - 1)
    assume(smallest_n0 * sum(shape.fn(t) for t in range(iterations)) * per_kept <= budget)
    assume(iterations * per_kept <= 0.05 * budget)
    planner = Planner(make=family[1], budget=budget, unit_costs=costs, acceptance_rate=acceptance,
                      n_iterations=iterations)
    rows = planner.plan()
    assert len(rows) == iterations and not any(r.cut for r in rows)
    used = rows[-1].cumulative_cost
    assert 0.95 * budget <= used <= budget * (1 + 1e-12), (used, budget)


def test_fit_n0_refuses_an_impossible_budget():
    with pytest.raises(ValueError, match="cannot pay for 10 iterations"):
        fit_n0(schedules.constant, budget=5, unit_costs=UnitCosts(0.0, 1.0), acceptance_rate=1.0,
               n_iterations=10)


def test_ledger_refuses_an_overspend():
    ledger = Ledger(total=10.0, costs=CostModel(unit="samples", prices={"train": {"samples": 1.0}}))
    ledger.charge(0, "train", items=8, quantities={"samples": 8.0}, seconds=0.0)
    with pytest.raises(BudgetExceededError, match="exceeds the remaining budget"):
        ledger.charge(0, "train", items=3, quantities={"samples": 3.0}, seconds=0.0)
    assert ledger.spent == 8.0


def test_cost_model_names_a_missing_quantity():
    costs = CostModel(unit="tokens", prices={"generate": {"tokens": 1.0}})
    with pytest.raises(KeyError, match="prices generate by 'tokens'"):
        costs.per_item("generate", {"samples": np.ones(3)}, 3)


selectors = st.sampled_from([
    ("accept", RewardProportional()),
    ("accept", Threshold(threshold=0.3)),
    ("select", TopK()),
    ("select", RewardProportionalWithoutReplacement()),
])


@settings(deadline=None, max_examples=60)
@given(
    budget=st.floats(min_value=1, max_value=1500, allow_nan=False),
    c_generate=st.floats(min_value=0, max_value=2, allow_nan=False),
    c_verify=st.floats(min_value=0, max_value=1, allow_nan=False),
    c_train=st.floats(min_value=0.5, max_value=3, allow_nan=False),
    growth=st.floats(min_value=0.05, max_value=2.0),
    n0=st.floats(min_value=1, max_value=200),
    chunk=st.integers(min_value=8, max_value=512),
    selector=selectors,
    theta=st.floats(min_value=-3, max_value=3),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_runs_never_exceed_budget(budget, c_generate, c_verify, c_train, growth, n0, chunk, selector,
                                  theta, seed):
    """Whatever the prices, selector and acceptance, a run's ledger stays within the total; every
    iteration keeps at least one sample; only the last iteration may stop short of its target, and
    once the plan cuts an iteration to fit, every later one is cut too."""
    problem = GaussianProblem(theta0=(theta, 0.5))
    costs = CostModel(unit="samples", prices={"generate": {"samples": c_generate},
                                              "verify": {"samples": c_verify},
                                              "train": {"samples": c_train}})
    mode, chosen = selector
    planner = Planner(make=lambda n: schedules.exponential(n, growth), budget=budget,
                      unit_costs=UnitCosts(c_generate + c_verify, c_train), acceptance_rate=0.3, n0=n0)
    history = run(gaussian_components(problem, selector=chosen), planner, costs,
                  LoopSettings(mode=mode, chunk_size=chunk, max_draws_per_selected=200), seed=seed)
    spent = history[-1].cumulative_cost if history else 0.0
    assert spent <= budget * (1 + 1e-12) + 1e-9
    assert all(m.n_selected >= 1 for m in history[:-1])
    assert not any(m.exhausted for m in history[:-1])
    first_cut = next((k for k, m in enumerate(history) if m.cut), len(history))
    assert all(m.cut for m in history[first_cut:])
    assert all(m.n_selected <= m.n_target for m in history)
    charged = sum(m.iteration_cost for m in history)
    assert charged == pytest.approx(spent)


def test_a_cut_iteration_that_comes_in_under_plan_does_not_end_the_run():
    """The plan cuts iteration 0 to what fits at an assumed acceptance of 0.1; every draw is in fact
    kept, so the cut target costs a fraction of the budget. The run goes on and spends the rest."""
    problem = GaussianProblem(theta0=(0.0, 0.5))
    costs = CostModel(unit="samples", prices={"generate": {"samples": 1.0}, "train": {"samples": 1.0}})
    planner = Planner(make=lambda n: schedules.constant(n), budget=500.0, unit_costs=UnitCosts(1.0, 1.0),
                      acceptance_rate=0.1, n0=1000)
    assert planner.plan()[0].cut and planner.plan()[0].n_selected == 45
    history = run(gaussian_components(problem, selector=Threshold(threshold=-math.inf)), planner, costs,
                  LoopSettings(mode="accept", chunk_size=64), seed=0)
    assert history[0].cut and not history[0].exhausted and history[0].cumulative_cost < 250.0
    assert len(history) > 1 and all(m.cut for m in history)
    assert history[-1].cumulative_cost >= 498.0  # not one more kept sample (2 units) fits
