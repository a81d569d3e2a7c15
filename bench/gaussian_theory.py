"""Figures for the Gaussian warm-up (Spend Wisely, Theorem 3.1 and Theorem 4.1's plateau).

(a) At an equal total budget of selected samples, the expected final gap r* - r(theta_T) of each
    schedule family against its number of iterations T (closed form, lines) with the mean of
    simulated runs through synthloop's loop (markers, 95% intervals).
(b) At a fixed n0, a constant schedule's gap stops shrinking as T grows (the variance floor
    s^2 / (n0 (1 - rho^2))), while an exponential schedule from the same n0 keeps improving.

    python bench/gaussian_theory.py --seeds 200 --out docs/gaussian-theory.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from synthloop import schedules
from synthloop.budget import CostModel, Planner, UnitCosts
from synthloop.loop import Components, LoopSettings, run
from synthloop.select import RewardProportional
from synthloop.tasks.gaussian import GaussianGenerator, GaussianLearner, GaussianProblem, GaussianTask

PROBLEM = GaussianProblem(theta0=(3.0, 3.0), sigma=1.0, kappa=1.0)
COSTS = CostModel(unit="samples", prices={"train": {"samples": 1.0}})
FAMILIES = {
    "constant": schedules.constant,
    "linear": schedules.linear,
    "exponential (growth 0.5)": lambda n0: schedules.exponential(n0, 0.5),
    "exponential (growth 2)": lambda n0: schedules.exponential(n0, 2.0),
    "gaussian_optimal": lambda n0: schedules.gaussian_optimal(n0, PROBLEM.sigma, PROBLEM.kappa),
}


def fitted(make, budget: float, iterations: int) -> Planner:
    return Planner(make=make, budget=budget, unit_costs=UnitCosts(0, 1), acceptance_rate=0.5,
                   n_iterations=iterations)


def closed_gap(counts) -> float:
    return PROBLEM.optimal_reward - PROBLEM.expected_final_reward(counts)


def simulated_gap(planner: Planner, seeds: int) -> tuple[float, float]:
    finals = []
    for seed in range(seeds):
        parts = Components(GaussianTask(PROBLEM), GaussianGenerator(), RewardProportional(),
                           GaussianLearner(PROBLEM))
        finals.append(run(parts, planner, COSTS, LoopSettings(), seed=seed)[-1]["eval"]["gap"])
    data = np.asarray(finals)
    return float(data.mean()), float(1.96 * data.std(ddof=1) / math.sqrt(len(data)))


def equal_budget_panel(ax, budget: float, seeds: int) -> dict:
    results = {}
    for (name, make), color in zip(FAMILIES.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False):
        ts, gaps = [], []
        for T in range(2, 31):
            try:
                plan = fitted(make, budget, T).plan()
            except ValueError:
                break
            ts.append(T)
            gaps.append(closed_gap([p.n_selected for p in plan]))
        ax.plot(ts, gaps, color=color, label=name)
        marks = [T for T in (4, 8, 12, 20) if T in ts]
        sims = [simulated_gap(fitted(make, budget, T), seeds) for T in marks]
        ax.errorbar(marks, [m for m, _ in sims], yerr=[h for _, h in sims], fmt="o", color=color, ms=4,
                    capsize=2)
        results[name] = {"best_T": ts[int(np.argmin(gaps))], "best_gap": float(min(gaps)),
                         "simulated": {str(T): s for T, s in zip(marks, sims, strict=True)}}
    ax.set_yscale("log")
    ax.set_xlabel("iterations T (schedule fitted to the budget)")
    ax.set_ylabel("final gap r* - r(theta_T)")
    ax.set_title(f"(a) equal budget: {budget:g} selected samples")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return results


def plateau_panel(ax, n0: int, seeds: int) -> dict:
    ts = np.arange(1, 41)
    constant = [closed_gap([n0] * T) for T in ts]
    growing = [closed_gap([round(n0 * 2**t) for t in range(T)]) for T in ts[:16]]
    floor_v = PROBLEM.accepted_variance / (n0 * (1 - PROBLEM.rho**2))
    a = PROBLEM.sigma**2 + PROBLEM.kappa**2
    floor = PROBLEM.optimal_reward - (PROBLEM.kappa / math.sqrt(a + floor_v)) ** PROBLEM.dim
    ax.plot(ts, constant, label=f"constant n_t = {n0}")
    ax.plot(ts[:16], growing, label=f"exponential n_t = {n0} * 2^t")
    ax.axhline(floor, ls="--", color="grey", lw=1, label="constant's floor s^2/(n0(1-rho^2))")
    marks = [5, 10, 20, 40]
    sims = []
    for T in marks:
        planner = Planner(make=lambda _: schedules.constant(n0), budget=n0 * T, unit_costs=UnitCosts(0, 1),
                          acceptance_rate=0.5, n0=1.0)
        sims.append(simulated_gap(planner, seeds))
    ax.errorbar(marks, [m for m, _ in sims], yerr=[h for _, h in sims], fmt="o", ms=4, capsize=2,
                color="C0")
    ax.set_yscale("log")
    ax.set_xlabel("iterations T (n0 fixed, so cost grows with T)")
    ax.set_title("(b) constant schedules plateau (Theorem 4.1)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return {"floor": floor, "constant_T20": constant[19], "constant_T40": constant[39],
            "simulated_constant": {str(T): s for T, s in zip(marks, sims, strict=True)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--budget", type=float, default=20_000)
    parser.add_argument("--n0", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("docs/gaussian-theory.png"))
    args = parser.parse_args()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), dpi=120)
    results = {"equal_budget": equal_budget_panel(left, args.budget, args.seeds),
               "plateau": plateau_panel(right, args.n0, args.seeds)}
    fig.suptitle("Gaussian warm-up, d = 2, sigma = kappa = 1, theta0 = (3, 3): closed form (lines) and "
                 f"simulation through the loop (markers, mean and 95% interval over {args.seeds} seeds)",
                 fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
