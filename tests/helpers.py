"""Small builders shared by the tests."""

from __future__ import annotations

import numpy as np

from synthloop.budget import CostModel, Planner, UnitCosts
from synthloop.loop import Components, LoopSettings, run
from synthloop.schedules import Schedule
from synthloop.select import RewardProportional
from synthloop.tasks.gaussian import GaussianGenerator, GaussianLearner, GaussianProblem, GaussianTask

TRAIN_ONLY = CostModel(unit="samples", prices={"train": {"samples": 1.0}})


def gaussian_components(problem: GaussianProblem, *, selector=None, step: float = 1.0) -> Components:
    return Components(
        task=GaussianTask(problem),
        generator=GaussianGenerator(),
        selector=selector or RewardProportional(),
        learner=GaussianLearner(problem, step=step),
    )


def fitted_planner(make, *, budget: float, iterations: int) -> Planner:
    """A schedule family scaled to spend ``budget`` selected samples in ``iterations`` iterations."""
    return Planner(make=make, budget=budget, unit_costs=UnitCosts(0.0, 1.0), acceptance_rate=0.5,
                   n_iterations=iterations)


def fixed_planner(schedule: Schedule, *, budget: float, max_iterations: int | None = None) -> Planner:
    return Planner(make=lambda n0: schedule, budget=budget, unit_costs=UnitCosts(0.0, 1.0),
                   acceptance_rate=0.5, n0=1.0, max_iterations=max_iterations)


def final_rewards(problem: GaussianProblem, planner: Planner, *, seeds: int, step: float = 1.0):
    """Final r(theta_T) of ``seeds`` runs through the real loop, and each run's n_t list."""
    finals, counts = [], set()
    for seed in range(seeds):
        history = run(gaussian_components(problem, step=step), planner, TRAIN_ONLY,
                      LoopSettings(), seed=seed)
        finals.append(history[-1].eval["reward"])
        counts.add(tuple(m.n_selected for m in history))
    return np.asarray(finals), counts
