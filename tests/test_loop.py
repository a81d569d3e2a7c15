"""The loop on the Gaussian task: determinism, both modes, the run directory, conformance."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from synthloop import schedules, testing
from synthloop.budget import CostModel, Planner, UnitCosts
from synthloop.loop import LoopSettings, run
from synthloop.records import Prompts
from synthloop.select import (
    Passed,
    RewardProportional,
    RewardProportionalWithoutReplacement,
    Threshold,
    TopK,
)
from synthloop.store import RunStore, column_to_numpy
from synthloop.tasks.gaussian import GaussianGenerator, GaussianLearner, GaussianProblem, GaussianTask

from helpers import TRAIN_ONLY, fitted_planner, gaussian_components

PROBLEM = GaussianProblem(theta0=(2.0, -1.0), sigma=1.0, kappa=1.0)


def _planner(budget=2000, iterations=5):
    return fitted_planner(lambda n0: schedules.exponential(n0, 1.0), budget=budget, iterations=iterations)


def test_gaussian_plugins_conform():
    task = GaussianTask(PROBLEM)
    testing.check_task(task)
    learner = GaussianLearner(PROBLEM)
    testing.check_evaluation(task, learner.model)
    prompts = task.sample_prompts(64, rng=np.random.default_rng(0))
    candidates = testing.check_generator(GaussianGenerator(), learner.model, prompts)
    testing.check_verifier(task.verifier, candidates, prompts)
    testing.check_learner(lambda: GaussianLearner(PROBLEM, step=0.5), candidates, prompts)


@pytest.mark.parametrize("selector", [RewardProportional(), Threshold(threshold=0.2), Passed(), TopK(),
                                      RewardProportionalWithoutReplacement()])
def test_selectors_conform(selector):
    testing.check_selector(selector)


def test_conformance_catches_a_nondeterministic_generator():
    class Noisy(GaussianGenerator):
        def generate(self, model, prompts, *, rng):
            return super().generate(model, prompts, rng=np.random.default_rng())

    prompts = Prompts.unconditional(8)
    with pytest.raises(AssertionError, match="not deterministic"):
        testing.check_generator(Noisy(), GaussianLearner(PROBLEM).model, prompts)


def _timeless(history):
    """Metrics without wall-clock seconds, the one thing a seed does not fix."""
    return [{k: v for k, v in m.to_json().items() if k != "seconds"} for m in history]


def test_same_seed_same_run_and_other_seed_differs():
    a = run(gaussian_components(PROBLEM), _planner(), TRAIN_ONLY, LoopSettings(chunk_size=50), seed=3)
    b = run(gaussian_components(PROBLEM), _planner(), TRAIN_ONLY, LoopSettings(chunk_size=50), seed=3)
    c = run(gaussian_components(PROBLEM), _planner(), TRAIN_ONLY, LoopSettings(chunk_size=50), seed=4)
    assert _timeless(a) == _timeless(b)
    assert [m.selected_sha256 for m in a] != [m.selected_sha256 for m in c]


def test_algorithm1_keeps_exactly_n_t_and_acceptance_matches_theory():
    """Accept mode keeps n_t per iteration, and the measured acceptance rate of a frozen model is
    r(theta) (Algorithm 1 accepts a draw with probability R(x))."""
    problem = GaussianProblem(theta0=(0.5,), sigma=1.0, kappa=1.0)
    planner = Planner(make=lambda n0: schedules.constant(n0), budget=20_000, unit_costs=UnitCosts(0, 1),
                      acceptance_rate=0.5, n0=20_000, max_iterations=1)
    history = run(gaussian_components(problem), planner, TRAIN_ONLY, LoopSettings(), seed=0)
    (first,) = history
    assert first.n_selected == first.n_target == 20_000
    expected = float(problem.reward_of(np.array([0.5])))
    # N_t is negative binomial: acceptance = n / N within a few standard errors of r(theta).
    assert first.acceptance_rate == pytest.approx(expected, rel=0.03)


def test_select_mode_draws_oversample_times_n_and_keeps_the_best():
    planner = Planner(make=schedules.constant, budget=300, unit_costs=UnitCosts(0, 1), acceptance_rate=0.25,
                      n0=100, max_iterations=3)
    history = run(gaussian_components(PROBLEM, selector=TopK()), planner, TRAIN_ONLY,
                  LoopSettings(mode="select", oversample=4.0, chunk_size=128), seed=0)
    assert [m.n_generated for m in history] == [400, 400, 400]
    assert [m.n_selected for m in history] == [100, 100, 100]


def test_the_last_iteration_is_cut_to_fit_and_recorded():
    planner = Planner(make=schedules.constant, budget=250, unit_costs=UnitCosts(0, 1), acceptance_rate=0.5,
                      n0=100)
    history = run(gaussian_components(PROBLEM), planner, TRAIN_ONLY, LoopSettings(), seed=0)
    assert [m.n_selected for m in history] == [100, 100, 50]
    assert [m.cut for m in history] == [False, False, True]
    assert history[-1].cumulative_cost == 250


@pytest.mark.parametrize("n0, iterations", [(100, None), (None, 6)])
def test_the_final_model_is_evaluated_whatever_eval_every_says(n0, iterations):
    """``eval_every = 4`` evaluates iterations 3, 7, ...; the run's last iteration is evaluated too,
    cut or not (a plan of six full iterations ends on an uncut one: its model went unmeasured, and
    the run's "final" metric was iteration 3's)."""
    planner = (Planner(make=schedules.constant, budget=500, unit_costs=UnitCosts(0, 1), acceptance_rate=0.5,
                       n0=n0) if n0 else fitted_planner(schedules.constant, budget=600, iterations=iterations))
    history = run(gaussian_components(PROBLEM), planner, TRAIN_ONLY, LoopSettings(eval_every=4), seed=0)
    assert len(history) in (5, 6) and not history[-1].cut
    assert [t for t, m in enumerate(history) if m.eval] == [3, len(history) - 1]


def test_a_run_that_ends_before_its_plan_still_evaluates_its_final_model():
    """Priced draws with a random acceptance: an iteration can spend what the plan kept for the next,
    so the run ends on an uncut iteration the plan did not call its last (seed 6 here); whatever ends
    it, the final model is evaluated, and with ``eval_every`` beyond the run nothing else is."""
    costs = CostModel(unit="samples", prices={"generate": {"samples": 1.0}, "train": {"samples": 1.0}})
    ended_uncut = 0
    for seed in range(8):
        planner = Planner(make=schedules.constant, budget=400, unit_costs=UnitCosts(1, 1), acceptance_rate=0.5,
                          n0=20)
        history = run(gaussian_components(GaussianProblem(theta0=(1.0, 0.0))), planner, costs,
                      LoopSettings(eval_every=1000, mode="accept"), seed=seed)
        assert [t for t, m in enumerate(history) if m.eval] == [len(history) - 1]
        ended_uncut += not history[-1].cut
    assert ended_uncut >= 1


def test_generation_cost_cuts_an_iteration_that_cannot_finish():
    """With costly draws and a planner that expects more acceptance than it gets, the loop stops
    drawing when the budget runs out, trains what it kept, and marks the iteration cut."""
    costs = CostModel(unit="samples", prices={"generate": {"samples": 1.0}, "train": {"samples": 1.0}})
    problem = GaussianProblem(theta0=(3.0, 3.0))  # acceptance ~0.006 at the start
    planner = Planner(make=schedules.constant, budget=500, unit_costs=UnitCosts(1, 1), acceptance_rate=1.0,
                      n0=100)
    history = run(gaussian_components(problem), planner, costs, LoopSettings(chunk_size=64), seed=0)
    assert history[-1].cut
    assert history[-1].n_selected < 100
    assert history[-1].cumulative_cost <= 500


def test_run_directory_layout_and_contents(tmp_path):
    store = RunStore(tmp_path / "run")
    store.create("name: test\n")
    history = run(gaussian_components(PROBLEM), _planner(), TRAIN_ONLY, LoopSettings(chunk_size=100), seed=0,
                  store=store)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert [e["iteration"] for e in manifest["iterations"]] == list(range(len(history)))
    assert manifest["initial"]["metrics"]["gap"] > 0
    for t, metrics in enumerate(history):
        folder = tmp_path / "run" / f"iter-{t:04d}"
        assert json.loads((folder / "metrics.json").read_text()) == json.loads(json.dumps(metrics.to_json()))
        parts = sorted((folder / "candidates").glob("part-*.parquet"))
        assert len(parts) == metrics.n_parts
        rows = sum(pq.read_metadata(p).num_rows for p in parts)
        assert rows == metrics.n_generated
        selected = pq.read_table(folder / "selected.parquet")
        assert selected.num_rows == metrics.n_selected
        x = column_to_numpy(selected, "sample.x")
        assert x.shape == (metrics.n_selected, 2)
        # Checkpoints of the last K (loop.keep_checkpoints, 2 by default) iterations are kept, older ones
        # pruned (every 5th is kept too; this run has none before the last K).
        keep = LoopSettings().keep_checkpoints
        assert keep == 2
        assert (folder / "checkpoint" / "learner" / "theta.json").exists() == (t >= len(history) - keep)
    # The learner checkpoint of the last iteration is the model the run ended with.
    last = json.loads((tmp_path / "run" / f"iter-{len(history) - 1:04d}" / "checkpoint" / "learner" / "theta.json").read_text())
    gap = PROBLEM.optimal_reward - float(PROBLEM.reward_of(np.array(last["theta"])))
    assert gap == pytest.approx(history[-1].eval["gap"])
    ledger = pq.read_table(tmp_path / "run" / "ledger.parquet").to_pylist()
    assert sum(r["cost"] for r in ledger) == pytest.approx(history[-1].cumulative_cost)


@pytest.mark.parametrize("storage", ["selected", "none"])
def test_candidate_storage_setting(tmp_path, storage):
    store = RunStore(tmp_path / storage)
    store.create("name: test\n")
    run(gaussian_components(PROBLEM), _planner(), TRAIN_ONLY, LoopSettings(store_candidates=storage), seed=0,
        store=store)
    folder = tmp_path / storage / "iter-0000"
    assert not (folder / "candidates").exists()
    assert (folder / "selected.parquet").exists() == (storage == "selected")


def test_selected_rows_are_the_accepted_draws(tmp_path):
    """The ids in selected.parquet point at candidate rows with the same payload and reward."""
    store = RunStore(tmp_path / "run")
    store.create("name: test\n")
    run(gaussian_components(PROBLEM), _planner(budget=300, iterations=3), TRAIN_ONLY,
        LoopSettings(chunk_size=40), seed=1, store=store)
    for t in range(3):
        folder = tmp_path / "run" / f"iter-{t:04d}"
        parts = {int(p.stem.split("-")[1]): pq.read_table(p) for p in (folder / "candidates").glob("*.parquet")}
        selected = pq.read_table(folder / "selected.parquet")
        for row in selected.to_pylist():
            source = parts[row["part"]].slice(row["index"], 1).to_pylist()[0]
            assert source["sample.x"] == row["sample.x"] and source["reward"] == row["reward"]


class _CoinVerifier:
    """Every candidate gets reward 1/2: reward-proportional acceptance is exactly 1/2."""

    def verify(self, candidates, prompts):
        from synthloop.records import Scores

        return Scores.from_rewards(np.full(len(candidates), 0.5))


class _CoinTask(GaussianTask):
    @property
    def verifier(self):
        return _CoinVerifier()


def test_acceptance_estimate_is_not_biased_by_parts_that_overshoot_small_targets():
    """n_t = 16 with a first guess of 0.1: each iteration's first part is sized for 16 kept at the
    current estimate, and any acceptances past 16 are discarded. Counting kept / drawn would lock
    the estimate at its first value (about 16 / 64 = 0.25) and spend twice the draws per kept
    sample; counting accepted / drawn finds the true 1/2 and sizes later parts for it."""
    problem = GaussianProblem(theta0=(0.0, 1.0))
    parts = gaussian_components(problem)
    parts = type(parts)(task=_CoinTask(problem), generator=parts.generator, selector=parts.selector,
                        learner=parts.learner)
    costs = CostModel(unit="samples", prices={"generate": {"samples": 1.0}, "train": {"samples": 1.0}})
    planner = Planner(make=lambda n: schedules.constant(n), budget=1e9, unit_costs=UnitCosts(1.0, 1.0),
                      acceptance_rate=0.1, n0=16, max_iterations=40)
    history = run(parts, planner, costs, LoopSettings(mode="accept", chunk_size=1024), seed=3)
    later = history[5:]
    assert all(m.n_selected == 16 for m in history)
    assert all(m.n_accepted >= m.n_selected for m in history)
    assert np.mean([m.acceptance_rate for m in later]) == pytest.approx(0.5, abs=0.05)
    draws_per_kept = sum(m.n_generated for m in later) / sum(m.n_selected for m in later)
    assert draws_per_kept < 2.6
