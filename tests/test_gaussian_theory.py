"""The Gaussian warm-up against its closed form (Spend Wisely, Theorem 3.1 and section 4)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from synthloop import schedules
from synthloop.tasks.gaussian import GaussianProblem

from helpers import final_rewards, fitted_planner, fixed_planner

FAMILIES = {
    "constant": schedules.constant,
    "linear": schedules.linear,
    "exponential": lambda n0: schedules.exponential(n0, 1.0),
}


@pytest.mark.parametrize("theta0", [(2.0,), (1.5, -1.0)], ids=["d1", "d2"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_simulation_matches_closed_form(theta0, family):
    """Mean final reward of 1000 seeded runs through the loop is within 3 standard errors of
    E[r(theta_T)] computed in closed form for the same n_t."""
    problem = GaussianProblem(theta0=theta0, sigma=1.0, kappa=1.0)
    planner = fitted_planner(FAMILIES[family], budget=400, iterations=5)
    finals, counts = final_rewards(problem, planner, seeds=1000)
    assert len(counts) == 1, "with free sampling the n_t of a fitted plan must not depend on the seed"
    (n_selected,) = counts
    assert sum(n_selected) == 400
    expected = problem.expected_final_reward(n_selected)
    standard_error = finals.std(ddof=1) / math.sqrt(len(finals))
    assert abs(finals.mean() - expected) < 3 * standard_error, (finals.mean(), expected, standard_error)


def test_gradient_update_matches_closed_form():
    """Section 4's one-step gradient update (lambda = 0.5) has its own closed form."""
    problem = GaussianProblem(theta0=(2.5, 0.5), sigma=1.5, kappa=1.0)
    planner = fitted_planner(schedules.linear, budget=300, iterations=6)
    finals, counts = final_rewards(problem, planner, seeds=1000, step=0.5)
    (n_selected,) = counts
    expected = problem.expected_final_reward(n_selected, step=0.5)
    standard_error = finals.std(ddof=1) / math.sqrt(len(finals))
    assert abs(finals.mean() - expected) < 3 * standard_error


def test_closed_form_detects_a_wrong_update():
    """The check above has power: a learner that moves only half way disagrees with the MLE formula."""
    problem = GaussianProblem(theta0=(2.0,), sigma=1.0, kappa=1.0)
    planner = fitted_planner(schedules.constant, budget=400, iterations=5)
    finals, counts = final_rewards(problem, planner, seeds=1000, step=0.5)
    (n_selected,) = counts
    wrong = problem.expected_final_reward(n_selected, step=1.0)
    standard_error = finals.std(ddof=1) / math.sqrt(len(finals))
    assert abs(finals.mean() - wrong) > 3 * standard_error


def test_closed_form_reward_is_the_expectation_over_draws():
    problem = GaussianProblem(theta0=(0.7, -0.4), sigma=1.3, kappa=0.8)
    rng = np.random.default_rng(0)
    theta = np.array(problem.theta0)
    x = theta + problem.sigma * rng.standard_normal((400_000, 2))
    monte_carlo = np.exp(-np.sum(x**2, axis=1) / (2 * problem.kappa**2)).mean()
    assert float(problem.reward_of(theta)) == pytest.approx(monte_carlo, rel=5e-3)


# -- the theory, reproduced ---------------------------------------------------------------------

D2 = GaussianProblem(theta0=(3.0, 3.0), sigma=1.0, kappa=1.0)
BUDGET = 20_000


def _gap(make, iterations: int) -> tuple[float, list[int]]:
    try:
        plan = fitted_planner(make, budget=BUDGET, iterations=iterations).plan()
    except ValueError:  # even n0 -> 0 cannot fit this many iterations of a fast-growing schedule
        return math.inf, []
    counts = [p.n_selected for p in plan]
    assert sum(counts) <= BUDGET
    return D2.optimal_reward - D2.expected_final_reward(counts), counts


def _best_constant_and_linear() -> float:
    gaps = [_gap(schedules.constant, T)[0] for T in range(1, 41)]
    gaps += [_gap(schedules.linear, T)[0] for T in range(1, 41)]
    gaps += [_gap(lambda n0, a=alpha: schedules.polynomial(n0, a), 12)[0] for alpha in (0.5, 2.0)]
    return min(gaps)


def test_optimal_and_tuned_exponential_beat_every_constant_and_linear_schedule():
    """At equal total budget (selected samples), Theorem 3.1's schedule and an exponential schedule
    with its growth tuned on a grid end closer to r* than any constant or linear schedule, each
    given its best number of iterations."""
    optimal = min(_gap(lambda n0: schedules.gaussian_optimal(n0, 1.0, 1.0), T)[0] for T in range(4, 25))
    tuned = min(
        _gap(lambda n0, g=g: schedules.exponential(n0, g), T)[0]
        for g in (0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
        for T in range(4, 25)
    )
    baseline = _best_constant_and_linear()
    assert optimal < baseline and tuned < baseline, (optimal, tuned, baseline)
    assert optimal < 0.75 * baseline  # not a tie decided by rounding


def test_simulated_ranking_agrees():
    """The same ranking holds for the mean over simulated runs, not only in closed form."""
    T = 12
    optimal = fitted_planner(lambda n0: schedules.gaussian_optimal(n0, 1.0, 1.0), budget=BUDGET, iterations=T)
    constant = fitted_planner(schedules.constant, budget=BUDGET, iterations=T)
    linear = fitted_planner(schedules.linear, budget=BUDGET, iterations=T)
    means = {name: D2.optimal_reward - final_rewards(D2, p, seeds=120)[0].mean()
             for name, p in {"optimal": optimal, "constant": constant, "linear": linear}.items()}
    assert means["optimal"] < means["linear"] < means["constant"], means


def test_constant_schedule_plateaus_at_fixed_n0():
    """Theorem 4.1's picture: with n0 fixed, more iterations stop helping a constant schedule, and
    the gap settles at the variance floor s^2 / (n0 (1 - rho^2)) instead of reaching 0."""
    n0 = 50
    gaps = []
    for T in (5, 10, 20, 40, 80):
        counts = [n0] * T
        gaps.append(D2.optimal_reward - D2.expected_final_reward(counts))
    assert gaps[1] < gaps[0]  # early iterations still remove the bias
    assert abs(gaps[-1] - gaps[-2]) < 1e-6 * gaps[-1] + 1e-15  # then nothing moves
    v_floor = D2.accepted_variance / (n0 * (1 - D2.rho**2))
    a = D2.sigma**2 + D2.kappa**2
    floor_gap = D2.optimal_reward - (D2.kappa / math.sqrt(a + v_floor)) ** 2
    assert gaps[-1] == pytest.approx(floor_gap, rel=1e-6)
    # An increasing schedule with the same first iterations keeps improving past the floor.
    growing = [round(n0 * 2**t) for t in range(12)]
    assert D2.optimal_reward - D2.expected_final_reward(growing) < 0.2 * gaps[-1]


def test_constant_plateau_in_simulation():
    """Simulated through the loop: a constant schedule's mean gap at T=20 and T=40 are equal within
    noise, and both far above an exponential schedule of the same first size."""
    constant20 = fixed_planner(schedules.constant(50), budget=50 * 20)
    constant40 = fixed_planner(schedules.constant(50), budget=50 * 40)
    exponential = fixed_planner(schedules.exponential(50, 1.0), budget=50 * (2**10 - 1))
    gap = {}
    for name, p in {"c20": constant20, "c40": constant40, "exp": exponential}.items():
        finals, _ = final_rewards(D2, p, seeds=150)
        gap[name] = (D2.optimal_reward - finals.mean(), finals.std(ddof=1) / math.sqrt(len(finals)))
    difference = abs(gap["c20"][0] - gap["c40"][0])
    assert difference < 3 * math.hypot(gap["c20"][1], gap["c40"][1])
    assert gap["exp"][0] < 0.2 * gap["c40"][0]
