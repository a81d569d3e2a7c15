"""The adaptive schedule: the norm test's constants, the acceptance bound, the planner's rule, and
that a run with it is budgeted and resumes exactly."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from crashsafe_support import CRASH_CONFIG, FAST, failing_at, snapshot, stores
from synthloop.budget import (
    AdaptivePlanner,
    CostModel,
    UnitCosts,
    acceptance_lower_bound,
    fit_contraction,
    norm_test_size,
    regressed_contraction,
    remaining_plan,
)
from synthloop.configs import AdaptiveSchedule, ConfigError, RunConfig, load_config, make_planner
from synthloop.experiments import resume_run, run_config
from synthloop.loop import LoopSettings, run
from synthloop.records import IterationRecord
from synthloop.tasks.gaussian import GaussianLearner, GaussianProblem

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


def test_a_run_learns_then_grows_n_t_spends_the_budget_and_never_overspends() -> None:
    planner = _planner()
    history = run(gaussian_components(PROBLEM), planner, COSTS, LoopSettings(), seed=3)
    sizes = [r.n_selected for r in history]
    assert sizes[:3] == [100, 100, 100]  # the pilot, sqrt(10000), for at least three iterations
    assert sum(sizes) == 10_000 and history[-1].cumulative_cost <= 10_000
    assert all("update_variance" in r.update_statistics and "update_norm2" in r.update_statistics for r in history)
    assert sizes[-1] > 10 * min(sizes)
    # near the end the sizes grow by about 1/rho = 2 per iteration (Spend Wisely's Theorem 3.1)
    growth = [b / a for a, b in itertools.pairwise(sizes[-5:-1])]
    assert all(1.5 < g < 2.8 for g in growth), sizes
    assert history[-1].eval["gap"] < 1e-3


def test_the_adaptive_run_evaluates_its_final_model_whatever_eval_every_says() -> None:
    """The planner says which iteration spends the rest: that one is evaluated (with ``eval_every``
    beyond the run's length nothing else is)."""
    history = run(gaussian_components(PROBLEM), _planner(), COSTS, LoopSettings(eval_every=1000), seed=3)
    assert len(history) > 3 and not history[-1].cut
    assert [t for t, m in enumerate(history) if m.eval] == [len(history) - 1]


def test_learning_lasts_while_the_norm_test_passes_then_the_size_changes() -> None:
    tolerance = 0.5
    history = run(gaussian_components(PROBLEM), _planner(tolerance=tolerance), COSTS, LoopSettings(), seed=5)
    passed = [r.update_statistics["update_norm2"] * r.n_selected >= r.update_statistics["update_variance"]
              / tolerance**2 for r in history]
    end = next(t for t in range(2, len(history)) if not passed[t]) + 1
    assert all(r.n_selected == 100 for r in history[:end])
    assert history[end].n_selected != 100


@pytest.mark.parametrize("rho", [0.2, 0.5, 0.8])
def test_the_fitted_contraction_is_the_simulated_one(rho: float) -> None:
    """Norms of mean updates of e <- rho e + noise, at constant n: the fit finds rho (median of 40)."""
    rng = np.random.default_rng(7)
    fits = []
    for _ in range(40):
        e, ns, ys = np.array([3.0, 3.0]), np.full(6, 100.0), []
        for n in ns:
            new = rho * e + rng.normal(0.0, np.sqrt(0.5 / n), 2)
            ys.append(float((new - e) @ (new - e)))
            e = new
        fits.append(fit_contraction(ns, np.full(6, 1.0), np.array(ys))[0])
    assert abs(float(np.median(fits)) - rho) < 0.05


@pytest.mark.parametrize(("rho", "error", "remaining"), [(0.5, 2.0, 60.0), (0.8, 5.0, 200.0), (0.3, 0.05, 30.0)])
def test_the_remaining_plan_is_the_brute_force_optimum(rho: float, error: float, remaining: float) -> None:
    """Its first step, followed by the best plan of the rest, is as good as any integer split of
    ``remaining`` into up to three iterations (searched exhaustively)."""

    def value(sizes: tuple[float, ...]) -> float:
        k = len(sizes)
        return rho ** (2 * k) * error + sum(rho ** (2 * (k - 1 - j)) / n for j, n in enumerate(sizes))

    total = int(remaining)
    splits = [(total,)] + [(a, total - a) for a in range(1, total)] + [
        (a, b, total - a - b) for a in range(1, total) for b in range(1, total - a)]
    best = min(value(split) for split in splits)
    first = remaining_plan(rho, error, 1.0, remaining)
    assert 0 < first <= remaining
    # continuous relaxation: its value is a lower bound on the integer optimum, and close to it
    k_best = min(range(1, 50), key=lambda k: rho ** (2 * k) * error + ((1 - rho**k) / (1 - rho)) ** 2 / remaining)
    relaxed = rho ** (2 * k_best) * error + ((1 - rho**k_best) / (1 - rho)) ** 2 / remaining
    assert relaxed <= best * (1 + 1e-9)
    if k_best <= 3:
        assert best <= relaxed * 1.1
        assert first == pytest.approx(remaining * (1 - rho) * rho ** (k_best - 1) / (1 - rho**k_best))


def test_without_statistics_the_pilot_size_is_kept() -> None:
    planner = _planner()
    for t in range(4):
        planner.observe(_bare_record(t, 100))
    assert planner.refit(next_iteration=4, spent=400.0, acceptance_rate=1.0)[0].n_selected == 100


def _bare_record(t: int, n: int) -> IterationRecord:
    return IterationRecord(
        iteration=t, n_target=n, n_selected=n, n_generated=n, n_parts=1, n_accepted=n, acceptance_rate=1.0,
        verdicts={}, cost={}, seconds={}, iteration_cost=float(n), cumulative_cost=0.0, budget=0.0, cut=False,
        exhausted=False, selected_sha256="", train={}, eval={})


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


def test_updates_that_do_not_contract_keep_the_pilot_size() -> None:
    """Squared mean updates that do not shrink fit no contraction (rho at the grid's top): without
    inner products the planner has no model to plan with and stays at the pilot instead of many
    tiny iterations."""
    norms = [0.6, 0.13, 0.68, 0.44]
    assert fit_contraction(np.full(3, 100.0), np.full(3, 12.0), np.array(norms[:3]))[0] >= 0.99
    planner = _planner()
    for t, norm2 in enumerate(norms):
        record = _bare_record(t, 100)
        planner.observe(IterationRecord(**{**vars(record), "update_statistics": {
            "update_variance": 12.0, "update_norm2": norm2}}))
    assert planner.refit(next_iteration=4, spent=400.0, acceptance_rate=1.0)[0].n_selected == 100


@pytest.mark.parametrize("rho", [0.3, 0.8])
def test_successive_updates_give_rho_at_the_optimal_growth(rho: float) -> None:
    """At the optimal growth 1/rho, deep in the noise (where the norms say nothing on rho to first
    order), the inner products of successive mean updates still regress rho without bias (median of
    40 runs of 12 iterations, d = 10, within 0.05)."""
    rng = np.random.default_rng(11)
    fits = []
    for _ in range(40):
        e, n, previous, rows = np.full(10, 0.01), 50.0, None, []
        for _ in range(12):
            g = (rho - 1) * e + rng.normal(0.0, np.sqrt(1.0 / n), 10)
            if previous is not None:
                rows.append((float(g @ previous[0]), float(previous[0] @ previous[0]), 10.0 / n, previous[1]))
            previous, e, n = (g, 10.0 / n), e + g, n / rho
        fits.append(regressed_contraction(*(np.array(col) for col in zip(*rows, strict=True))))
    assert abs(float(np.median(fits)) - rho) < 0.05


def test_the_gaussian_learner_reports_the_inner_product_and_keeps_it_across_a_checkpoint(tmp_path: Path) -> None:
    history = run(gaussian_components(PROBLEM), _planner(budget=400.0), COSTS, LoopSettings(), seed=2)
    assert "update_dot_previous" not in history[0].update_statistics
    assert all("update_dot_previous" in r.update_statistics for r in history[1:])
    learner = GaussianLearner(PROBLEM)
    learner.previous_ = np.array([0.5, -1.0])
    learner.save(tmp_path)
    restored = GaussianLearner(PROBLEM)
    restored.load(tmp_path)
    assert restored.previous_ is not None and restored.previous_.tolist() == [0.5, -1.0]


def test_reported_inner_products_set_rho_and_so_the_size() -> None:
    """The same norms with inner products saying rho = 0.3 or 0.8 plan different sizes; a
    record without them plans as before (backward compatible)."""
    def planned(dot_rho: float | None) -> int:
        planner = _planner()
        ys = [4.0, 1.0, 0.3, 0.2, 0.2]
        for t, y in enumerate(ys):
            stats = {"update_variance": 12.0, "update_norm2": y}
            if dot_rho is not None and t:
                stats["update_dot_previous"] = dot_rho * ys[t - 1] - 0.12
            planner.observe(IterationRecord(**{**vars(_bare_record(t, 100)), "update_statistics": stats}))
        return planner.refit(next_iteration=5, spent=500.0, acceptance_rate=1.0)[0].n_selected
    plain, low, high = planned(None), planned(0.3), planned(0.8)
    assert len({plain, low, high}) == 3


def test_updates_whose_norms_do_not_contract_plan_from_the_inner_products() -> None:
    """The same non-contracting norms as above (rho at the grid's top), but with inner products of
    successive updates that say rho = 0.3: the planner no longer falls back to the pilot, it plans
    with the regressed rho and P0's maximum likelihood at that rho (on the learning iterations)."""
    norms, n, v = [0.6, 0.13, 0.68, 0.44], 100, 12.0
    planner = _planner()
    for t, norm2 in enumerate(norms):
        stats = {"update_variance": v, "update_norm2": norm2}
        if t:
            stats["update_dot_previous"] = 0.3 * norms[t - 1] - v / n
        planner.observe(IterationRecord(**{**vars(_bare_record(t, n)), "update_statistics": stats}))
    planned = planner.refit(next_iteration=4, spent=400.0, acceptance_rate=1.0)[0].n_selected
    ns, vs, ys = np.full(3, float(n)), np.full(3, v), np.array(norms[:3])
    assert fit_contraction(ns, vs, ys)[0] >= 0.99  # the norms alone: no contraction
    rho = regressed_contraction(np.array([0.3 * y - v / n for y in norms[:3]]), np.array(norms[:3]),
                                np.full(3, v / n), np.full(3, v / n))
    assert abs(rho - 0.3) < 1e-9
    # P0 at rho = 0.3 by brute force over a fine grid of the model's deviance, then predicted forward
    p0s = np.exp(np.linspace(-12.0, 12.0, 2401)) * max(norms[:3])
    def deviance(p0: float) -> float:
        p, total = p0, 0.0
        for y in norms[:3]:
            mu = (1 - rho) ** 2 * p + v / n
            total += np.log(mu) + y / mu
            p = rho**2 * p + v / n
        return total
    p0 = p0s[int(np.argmin([deviance(p) for p in p0s]))]
    error = p0
    for _ in norms:
        error = rho**2 * error + v / n
    expected = remaining_plan(rho, error, v, 10_000.0 - 400.0)
    assert planned != planner.pilot
    assert abs(planned - expected) <= max(2.0, 0.05 * expected)


def _planned_after_large_slow_norms(min_size: int, spent: float = 400.0) -> int:
    planner = AdaptivePlanner(budget=10_000.0, unit_costs=UnitCosts(0.0, 1.0), acceptance_rate=1.0, tolerance=0.5,
                              min_size=min_size)
    for t, norm2 in enumerate([400.0, 300.0, 200.0, 0.01]):  # far from the optimum, slowly contracting
        stats = {"update_variance": 1.0, "update_norm2": norm2}
        planner.observe(IterationRecord(**{**vars(_bare_record(t, 100)), "update_statistics": stats}))
    return planner.refit(next_iteration=4, spent=spent, acceptance_rate=1.0)[0].n_selected


def test_no_iteration_is_planned_below_the_smallest_update_the_learner_makes() -> None:
    """Far from the optimum the budget-optimal step is tiny (2 here); a learner that needs B = 16
    kept samples for one optimizer step would move nothing and measure nothing at that size."""
    assert _planned_after_large_slow_norms(2) == 2
    assert _planned_after_large_slow_norms(16) == 16
    # what would be left after a last step of 16 could not make another: the rest is spent now
    assert _planned_after_large_slow_norms(16, spent=10_000.0 - 20) == 20
    with pytest.raises(ValueError, match="min_size"):
        AdaptivePlanner(budget=1.0, unit_costs=UnitCosts(0.0, 1.0), acceptance_rate=1.0, min_size=0)


def test_the_digits_and_math_families_set_the_smallest_update_from_their_learners() -> None:
    root = Path(__file__).resolve().parents[1] / "examples"
    digits = load_config(root / "digits-denoise-s10.yaml")
    digits = digits.model_copy(update={"schedule": AdaptiveSchedule(kind="adaptive")})
    planner = make_planner(digits)
    assert digits.learner is not None
    assert isinstance(planner, AdaptivePlanner) and planner.min_size == digits.learner.model_dump()["batch_size"]
    math_config = load_config(root / "math-adaptive.yaml")
    planner = make_planner(math_config)
    assert isinstance(planner, AdaptivePlanner) and math_config.learner is not None
    learner = math_config.learner.model_dump()  # grad_accum at its default (1) unless the file sets it
    assert learner["batch_size"] > 1
    assert planner.min_size == learner["batch_size"] * learner.get("grad_accum", 1) + 1


def _sizes_with_contracting_statistics(*, fixed_steps: bool, statistics: bool = True) -> list[int]:
    """The planner's sizes (pilot and floor 16, budget 2000) fed records whose statistics make the
    growth rule grow (norms contracting by 0.6 an iteration above a noise floor V / n)."""
    planner = AdaptivePlanner(budget=2000.0, unit_costs=UnitCosts(0.0, 1.0), acceptance_rate=1.0, tolerance=0.5,
                              min_size=16, n0=16, fixed_steps=fixed_steps)
    sizes: list[int] = []
    while rows := planner.refit(next_iteration=len(sizes), spent=float(sum(sizes)), acceptance_rate=1.0):
        sizes.append(n := rows[0].n_selected)
        stats = {"update_variance": 100.0, "update_norm2": 400.0 * 0.6 ** len(sizes) + 100.0 / n} if statistics else {}
        planner.observe(IterationRecord(**{**vars(_bare_record(len(sizes) - 1, n)), "update_statistics": stats}))
    return sizes


def test_a_fixed_steps_learner_gets_its_smallest_update_every_iteration() -> None:
    """One optimizer step an iteration whatever the statistics say; the last takes the rest, so no
    iteration is left that would train nothing. The same records make the growth rule grow."""
    growth = _sizes_with_contracting_statistics(fixed_steps=False)
    assert sum(growth) == 2000 and max(growth) > 10 * 16, growth
    for statistics in (True, False):
        sizes = _sizes_with_contracting_statistics(fixed_steps=True, statistics=statistics)
        assert sizes[:-1] == [16] * (len(sizes) - 1) and 16 <= sizes[-1] < 32, sizes
        assert sum(sizes) == 2000
    planner = AdaptivePlanner(budget=10_000.0, unit_costs=UnitCosts(0.0, 1.0), acceptance_rate=1.0, min_size=16,
                              fixed_steps=True)
    assert planner.pilot == 16 and "fixed-steps" in planner.describe() and "norm test" not in planner.describe()


def test_a_fixed_steps_run_spends_its_budget_in_steps_of_the_smallest_update() -> None:
    planner = AdaptivePlanner(budget=1000.0, unit_costs=UnitCosts(0.0, 1.0), acceptance_rate=1.0, min_size=50,
                              fixed_steps=True)
    history = run(gaussian_components(PROBLEM), planner, COSTS, LoopSettings(), seed=3)
    assert [r.n_selected for r in history] == [50] * 20 and history[-1].cumulative_cost <= 1000
    assert history[-1].eval  # the run's last iteration is the one the planner said ends it


def test_the_family_declares_fixed_steps_and_the_schedule_can_override_it() -> None:
    root = Path(__file__).resolve().parents[1] / "examples"
    digits = load_config(root / "digits-denoise-s10.yaml")

    def planner_for(config: RunConfig, **schedule: str) -> AdaptivePlanner:
        adaptive = AdaptiveSchedule.model_validate({"kind": "adaptive", **schedule})
        made = make_planner(config.model_copy(update={"schedule": adaptive}))
        assert isinstance(made, AdaptivePlanner)
        return made

    assert planner_for(digits).fixed_steps and planner_for(digits, updates="auto").fixed_steps
    assert not planner_for(digits, updates="refit").fixed_steps
    math_config = load_config(root / "math-adaptive.yaml")
    assert not planner_for(math_config).fixed_steps  # not declared (docs/adaptive.md says why)
    gaussian = load_config(root / "gaussian.yaml")
    assert not planner_for(gaussian).fixed_steps and planner_for(gaussian, updates="fixed_steps").fixed_steps
    with pytest.raises(ValueError, match="updates"):
        AdaptiveSchedule(kind="adaptive", updates="sometimes")  # type: ignore[arg-type]


def test_a_bounded_fixed_steps_run_spreads_the_rest_over_the_iterations_left() -> None:
    """With max_iterations the budget is spread evenly (the least growth the bound allows), not
    piled into the last iteration."""
    planner = AdaptivePlanner(budget=1000.0, unit_costs=UnitCosts(0.0, 1.0), acceptance_rate=1.0, min_size=16,
                              fixed_steps=True, max_iterations=10)
    rows = planner.plan()
    assert [r.n_selected for r in rows] == [100] * 10
    unbounded = AdaptivePlanner(budget=1000.0, unit_costs=UnitCosts(0.0, 1.0), acceptance_rate=1.0, min_size=16,
                                fixed_steps=True)
    assert [r.n_selected for r in unbounded.plan()] == [16] * 61 + [24]


def test_fixed_steps_config_errors_say_what_to_change() -> None:
    root = Path(__file__).resolve().parents[1] / "examples"
    digits = load_config(root / "digits-denoise-s10.yaml")
    with pytest.raises(ConfigError, match=r"schedule.n0: 64 is unused.*updates: refit"):
        make_planner(digits.model_copy(update={"schedule": AdaptiveSchedule(kind="adaptive", n0=64)}))
    assert isinstance(make_planner(digits.model_copy(update={"schedule": AdaptiveSchedule(
        kind="adaptive", n0=64, updates="refit")})), AdaptivePlanner)
    gaussian = load_config(root / "gaussian.yaml")
    big = gaussian.model_copy(update={"schedule": AdaptiveSchedule(kind="adaptive", updates="fixed_steps"),
                                      "budget": gaussian.budget.model_copy(update={"total": 1e7})})
    with pytest.raises(ConfigError, match=r"runs past .* iterations"):
        make_planner(big)
    # on math a fixed-steps plan makes one optimizer step an iteration (the growth rule measures two)
    math_config = load_config(root / "math-adaptive.yaml")
    assert math_config.learner is not None
    learner = math_config.learner.model_dump()
    planner = make_planner(math_config.model_copy(update={"schedule": AdaptiveSchedule(
        kind="adaptive", updates="fixed_steps")}))
    assert isinstance(planner, AdaptivePlanner) and planner.min_size == learner["batch_size"] * learner.get("grad_accum", 1)


def test_with_priced_draws_only_the_end_falls_below_the_step() -> None:
    """Draws priced (10 a draw, acceptance 0.35): the rest is counted at the acceptance's lower
    bound, so after the iteration that takes it one or two smaller ones may follow; none earlier."""
    planner = AdaptivePlanner(budget=24_000.0, unit_costs=UnitCosts(10.0, 1.0), acceptance_rate=0.35, min_size=16,
                              fixed_steps=True)
    sizes: list[int] = []
    spent = 0.0
    while spent < 24_000 and (rows := planner.refit(next_iteration=len(sizes), spent=spent, acceptance_rate=0.35)):
        n = rows[0].n_selected
        drawn = math.ceil(n / 0.35)
        spent += min(10.0 * drawn + n, 24_000 - spent)
        planner.observe(IterationRecord(**{**vars(_bare_record(len(sizes), n)), "n_generated": drawn,
                                           "n_accepted": n}))
        sizes.append(n)
    first_other = next(t for t, n in enumerate(sizes) if n != 16)
    assert sizes[first_other] > 16 and len(sizes) - first_other <= 3, sizes
    assert sum(sizes[first_other + 1:]) < 16 and spent / 24_000 > 0.99, sizes


@pytest.mark.parametrize("example, rule", [("digits-denoise-s10.yaml", "fixed_steps"), ("gaussian.yaml", "refit")])
def test_a_stored_adaptive_config_without_updates_resumes_under_the_growth_rule(example: str, rule: str) -> None:
    """Stored configs hold every field: one without ``updates`` predates it and ran the growth rule.
    It resumes under that rule, and a comparison asking for ``auto`` sees the difference if any."""
    from synthloop.comparisons import first_difference
    from synthloop.configs import with_updates_resolved
    from synthloop.experiments import config_from_run_text, resolved_config_text

    config = load_config(Path(__file__).resolve().parents[1] / "examples" / example)
    config = config.model_copy(update={"schedule": AdaptiveSchedule(kind="adaptive")})
    text = resolved_config_text(config)
    legacy = "".join(line for line in text.splitlines(keepends=True) if line.strip() != "updates: auto")
    assert legacy != text and config_from_run_text(text).schedule == config.schedule
    held = config_from_run_text(legacy)
    assert isinstance(held.schedule, AdaptiveSchedule) and held.schedule.updates == "refit"
    assert make_planner(held).fixed_steps is False  # type: ignore[union-attr]
    difference = first_difference(with_updates_resolved(held).model_dump(mode="json"),
                                  with_updates_resolved(config).model_dump(mode="json"))
    assert difference == (None if rule == "refit" else 'schedule.updates: "refit" there, "fixed_steps" here')


def test_a_malformed_stored_config_is_a_one_line_error_not_a_crash() -> None:
    from synthloop.experiments import config_from_run_text

    text = (Path(__file__).resolve().parents[1] / "examples" / "gaussian.yaml").read_text()
    broken = text.replace("compare:\n  seeds: 20\n  schedules:", "compare:\n  seeds: 20\n  schedules: [a, b]\n  old:")
    assert broken != text
    with pytest.raises(ConfigError, match="compare"):
        config_from_run_text(broken)
    with pytest.raises(ConfigError):
        config_from_run_text("- a list, not a mapping\n")
