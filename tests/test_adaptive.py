"""The adaptive schedule: the norm test's constants, the acceptance bound, the planner's rule, and
that a run with it is budgeted and resumes exactly."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from crashsafe_support import CRASH_CONFIG, FAST, failing_at, snapshot, stores
from synthloop.budget import AdaptivePlanner, CostModel, UnitCosts, acceptance_lower_bound, norm_test_size
from synthloop.configs import AdaptiveSchedule, RunConfig, load_config, make_planner
from synthloop.experiments import resume_run, run_config
from synthloop.loop import LoopSettings, run
from synthloop.tasks.gaussian import GaussianProblem

from helpers import gaussian_components

PROBLEM = GaussianProblem(theta0=(3.0, 3.0))
COSTS = CostModel(unit="samples", prices={"train": {"samples": 1.0}})


def test_norm_test_size_is_the_sample_size_at_which_the_error_bound_holds() -> None:
    """Var/n <= theta^2 ||g||^2 holds at n = Var / (theta^2 ||g||^2) and fails just below it."""
    rng = np.random.default_rng(0)
    updates = rng.normal(0.3, 2.0, size=(5000, 3))
    variance, norm2 = float(updates.var(axis=0, ddof=1).sum()), float(np.square(updates.mean(axis=0)).sum())
    n = norm_test_size(variance, norm2, 0.5)
    assert variance / n == pytest.approx(0.25 * norm2)
    assert variance / (0.9 * n) > 0.25 * norm2
    with pytest.raises(ValueError, match="tolerance"):
        norm_test_size(1.0, 1.0, 0.0)


def test_the_acceptance_bound_covers_the_true_rate() -> None:
    rng = np.random.default_rng(1)
    hits = [acceptance_lower_bound(int(rng.binomial(200, 0.3)), 200) <= 0.3 for _ in range(2000)]
    assert 0.95 <= np.mean(hits) <= 0.995
    assert acceptance_lower_bound(0, 10) > 0


def _planner(budget: float = 10_000.0, tolerance: float = 0.5) -> AdaptivePlanner:
    return AdaptivePlanner(budget=budget, unit_costs=UnitCosts(0.0, 1.0), acceptance_rate=1.0, tolerance=tolerance)


def test_a_run_grows_n_t_spends_the_budget_and_never_overspends() -> None:
    planner = _planner()
    history = run(gaussian_components(PROBLEM), planner, COSTS, LoopSettings(), seed=3)
    sizes = [r.n_selected for r in history]
    assert sizes[0] == 100  # the pilot: sqrt(10000)
    assert all(b >= a for a, b in itertools.pairwise(sizes)) and sizes[-1] > 10 * sizes[0]
    assert sum(sizes) == 10_000 and history[-1].cumulative_cost <= 10_000
    assert all("update_variance" in r.update_statistics and "update_norm2" in r.update_statistics for r in history)
    assert history[-1].eval["gap"] < 1e-3


def test_each_size_follows_the_rule_from_the_previous_record() -> None:
    history = run(gaussian_components(PROBLEM), _planner(tolerance=0.7), COSTS, LoopSettings(), seed=5)
    spent = 0.0
    for before, after in itertools.pairwise(history):
        spent += before.n_selected
        asked = before.update_statistics["update_variance"] / (0.49 * max(
            before.update_statistics["update_norm2"], before.update_statistics["update_variance"] / before.n_selected))
        wanted = max(before.n_selected, math.ceil(asked))
        remaining = 10_000 - spent
        expected = remaining if remaining < 2 * wanted else wanted
        assert after.n_selected == expected


def test_acceptance_enters_through_its_lower_bound() -> None:
    """With draws priced, a low measured acceptance makes the planned iteration cost more."""
    planner = AdaptivePlanner(budget=1e5, unit_costs=UnitCosts(1.0, 1.0), acceptance_rate=0.5)
    history = run(gaussian_components(PROBLEM), planner, CostModel(
        unit="samples", prices={"generate": {"samples": 1.0}, "train": {"samples": 1.0}}), LoopSettings(), seed=0)
    first = history[0]
    bound = acceptance_lower_bound(first.n_accepted, first.n_generated)
    row = planner.refit(next_iteration=1, spent=first.cumulative_cost, acceptance_rate=first.acceptance_rate)[0]
    assert row.expected_cost == pytest.approx(row.n_selected * (1 + 1 / bound))
    assert history[-1].cumulative_cost <= 1e5


def test_state_round_trips_and_replaying_records_rebuilds_it() -> None:
    planner = _planner()
    history = run(gaussian_components(PROBLEM), planner, COSTS, LoopSettings(), seed=1)
    copy = _planner()
    copy.load_json(planner.to_json())
    replayed = _planner()
    for record in history:
        replayed.observe(record)
    for other in (copy, replayed):
        assert other.observed == planner.observed
        assert other.refit(next_iteration=3, spent=500.0, acceptance_rate=1.0) == planner.refit(
            next_iteration=3, spent=500.0, acceptance_rate=1.0)


def _adaptive_config() -> RunConfig:
    config = load_config(CRASH_CONFIG)
    return config.model_copy(update={"schedule": AdaptiveSchedule(kind="adaptive", tolerance=0.5)})


def test_the_config_builds_an_adaptive_planner_and_rejects_a_bad_tolerance() -> None:
    planner = make_planner(_adaptive_config())
    assert isinstance(planner, AdaptivePlanner) and len(planner.plan()) == 1
    assert "adaptive" in planner.describe() and "norm test" in planner.describe()
    with pytest.raises(ValueError, match="tolerance"):
        AdaptiveSchedule(kind="adaptive", tolerance=-1.0)


def test_a_resumed_adaptive_run_matches_an_uninterrupted_one(tmp_path: Path) -> None:
    config = _adaptive_config()
    whole = tmp_path / "whole"
    run_config(config, run_dir=whole, open_store=FAST)
    cut = tmp_path / "cut"
    with pytest.raises(OSError, match="injected"):
        run_config(config, run_dir=cut, open_store=stores(failing_at("train:2")))
    resume_run(cut, open_store=FAST)
    assert snapshot(cut) == snapshot(whole)
