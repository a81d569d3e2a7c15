"""The loop's own overhead on the Gaussian task, against a bare NumPy script doing the same math.

Measures, in one process and interleaved (the machine is shared, so only ratios are trusted):
- bare: a plain NumPy implementation of Algorithm 1 + MLE (draw, reward, accept, mean);
- loop, storage off: synthloop's loop with ``store_candidates: none`` and no run directory;
- loop, storage all: the loop writing every candidate, the selected set, ledger, metrics,
  checkpoint and manifest to a run directory.

Reports draws per second for each, the throughput ratio loop/bare (target >= 0.8), and the loop's own
time per generated candidate with storage, (t_loop_all - t_bare) / draws, in microseconds
(target <= 20 us).

    python bench/loop_overhead.py --n-selected 100000 --iterations 5 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from synthloop import schedules
from synthloop.budget import CostModel, Planner, UnitCosts
from synthloop.loop import Components, LoopSettings, run
from synthloop.select import RewardProportional
from synthloop.store import RunStore
from synthloop.tasks.gaussian import GaussianGenerator, GaussianLearner, GaussianProblem, GaussianTask

PROBLEM = GaussianProblem(theta0=(0.3, -0.2), sigma=1.0, kappa=1.0)  # acceptance ~0.5 throughout


def bare_numpy(n_selected: int, iterations: int, seed: int) -> int:
    """Algorithm 1 with MLE updates, written directly in NumPy. Returns the number of draws."""
    rng = np.random.default_rng(seed)
    theta = np.array(PROBLEM.theta0)
    draws, acceptance = 0, 0.5
    for _ in range(iterations):
        kept: list[np.ndarray] = []
        n_kept = 0
        while n_kept < n_selected:
            m = math.ceil((n_selected - n_kept) / acceptance)
            x = theta + PROBLEM.sigma * rng.standard_normal((m, 2))
            reward = np.exp(-np.einsum("ij,ij->i", x, x) / (2 * PROBLEM.kappa**2))
            accepted = x[rng.random(m) < reward][: n_selected - n_kept]
            kept.append(accepted)
            n_kept += len(accepted)
            draws += m
            acceptance = max(n_kept, 1) / m
        theta = np.concatenate(kept).mean(axis=0)
    return draws


def through_loop(n_selected: int, iterations: int, seed: int, run_dir: Path | None) -> int:
    components = Components(GaussianTask(PROBLEM), GaussianGenerator(), RewardProportional(),
                            GaussianLearner(PROBLEM))
    planner = Planner(make=schedules.constant, budget=n_selected * iterations, unit_costs=UnitCosts(0, 1),
                      acceptance_rate=0.5, n0=n_selected)
    costs = CostModel(unit="samples", prices={"train": {"samples": 1.0}})
    store = None
    storage = "none"
    if run_dir is not None:
        store, storage = RunStore(run_dir), "all"
        store.create("name: bench\n", overwrite=True)
    settings = LoopSettings(chunk_size=1 << 20, store_candidates=storage)  # type: ignore[arg-type]
    history = run(components, planner, costs, settings, seed=seed, store=store)
    return sum(m.n_generated for m in history)


def timed(fn, *args) -> tuple[float, int]:
    start = time.perf_counter()
    draws = fn(*args)
    return time.perf_counter() - start, draws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-selected", type=int, default=100_000)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"bare": [], "loop_no_storage": [], "loop_storage_all": []}
    overhead_us: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):  # interleaved, so drifts in machine load hit all three alike
            t_bare, d_bare = timed(bare_numpy, args.n_selected, args.iterations, repeat)
            t_off, d_off = timed(through_loop, args.n_selected, args.iterations, repeat, None)
            t_all, d_all = timed(through_loop, args.n_selected, args.iterations, repeat, Path(tmp) / "run")
            rates["bare"].append(d_bare / t_bare)
            rates["loop_no_storage"].append(d_off / t_off)
            rates["loop_storage_all"].append(d_all / t_all)
            # The loop's own time per candidate: its time minus what the bare math needs for as many draws.
            overhead_us.append((t_all - t_bare * d_all / d_bare) / d_all * 1e6)
    median = {k: statistics.median(v) for k, v in rates.items()}
    result = {
        "n_selected": args.n_selected,
        "iterations": args.iterations,
        "repeats": args.repeats,
        "draws_per_second": median,
        "ratio_loop_no_storage_vs_bare": median["loop_no_storage"] / median["bare"],
        "ratio_loop_storage_all_vs_bare": median["loop_storage_all"] / median["bare"],
        "loop_overhead_us_per_candidate_with_storage": statistics.median(overhead_us),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
