"""Labeling allocation (Escaping Collapse's boosting): the hardest-first prompt policy and the
labeled source that spends L labels a round where it says.

The policy passes the prompt-policy and stateful checks; on constructed observations hardest-first
picks exactly the prompts with the lowest measured pass rate, and the uniform baseline does not
look at them; weights carry across rounds; through the loop the labels go to the prompts the
filter failed most; YAML wires it; and a run SIGKILLed again and again resumes to the same weights,
pass rates, ledger and checkpoints as an uninterrupted one.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from collapse_support import BUDGET, TableTask, run_table, table_components
from crashsafe_support import ROOT, kill_repeatedly, snapshot, spawn_script
from synthloop.configs import ConfigError, parse_config
from synthloop.policies import HardestFirst, HardestFirstConfig, make_prompt_policy
from synthloop.records import Candidates, Observations, Prompts
from synthloop.signals.labelers import ControlledLabeler
from synthloop.signals.source import LabeledPrompts, UniformAllocation
from synthloop.store import RunStore
from synthloop.testing import check_prompt_policy, check_stateful, check_training_set
from synthloop.training_set import Mix


def observations(index: list[int], passed: list[int], failed: list[int]) -> Observations:
    return Observations(np.array(index, np.int64), np.array(passed, np.int64), np.array(failed, np.int64),
                        np.zeros(len(index), np.int64))


def test_hardest_first_passes_the_prompt_policy_and_stateful_checks(tmp_path: Path):
    task = TableTask(pool_size=30)
    check_prompt_policy(HardestFirst(pool_size=30, samples_per_prompt=4), task, None)

    def advance(policy: HardestFirst) -> object:
        policy.observe(observations([1, 2, 3], [0, 4, 2], [4, 0, 2]))
        return policy.allocate(10, rng=np.random.default_rng(0)), policy.weights_, policy.pass_rates_

    check_stateful(lambda: HardestFirst(pool_size=30), advance, tmp_path)


def test_choose_draws_k_samples_of_each_prompt():
    task = TableTask(pool_size=30)
    chosen = HardestFirst(pool_size=30, samples_per_prompt=4).choose(task, 18, model=None, rng=np.random.default_rng(1))
    index = chosen.prompts.index
    assert len(index) == 18 and len(np.unique(index)) == 5
    assert all(len(set(index[i:i + 4])) == 1 for i in range(0, 16, 4))


def test_hardest_first_picks_the_prompts_with_the_lowest_measured_pass_rate():
    policy = HardestFirst(pool_size=10, samples_per_prompt=8)
    # every prompt measured over 8 samples: pass counts 0..7 in a scrambled order, prompt 9 never decided
    passes = [5, 0, 7, 2, 6, 1, 3, 4, 4]
    policy.observe(observations(list(range(9)), passes, [8 - p for p in passes]))
    picked = policy.allocate(3, rng=np.random.default_rng(0))
    assert picked.tolist() == [1, 5, 3]  # pass rates 0/8, 1/8, 2/8
    assert np.isnan(policy.pass_rates_[9]) and policy.pass_rates_[1] == 0.0
    uniform = HardestFirst(pool_size=10, allocation="uniform")
    uniform.observe(observations(list(range(9)), passes, [8 - p for p in passes]))
    picks = {tuple(uniform.allocate(3, rng=np.random.default_rng(s)).tolist()) for s in range(20)}
    assert len(picks) > 10  # the baseline ignores the pass rates


def test_weights_carry_across_rounds():
    policy = HardestFirst(pool_size=4, eta=1.0)
    policy.observe(observations([0, 1], [0, 8], [8, 0]))  # 0 failed, 1 solved
    policy.observe(observations([2], [0], [8]))  # 2 failed once, later
    assert policy.weights_[0] == pytest.approx(policy.weights_[2])  # one failing round each
    assert policy.weights_[1] < policy.weights_[3] < policy.weights_[0]
    policy.observe(observations([0], [0], [8]))
    assert policy.allocate(1, rng=np.random.default_rng(0)).tolist() == [0]  # failed twice: first


def test_allocations_and_the_labeled_source_are_prefix_stable():
    task = TableTask(pool_size=40)
    policy = HardestFirst(pool_size=40)
    policy.observe(observations([3, 4, 5], [0, 1, 8], [8, 7, 0]))
    for allocation in (policy, UniformAllocation(40)):
        source = LabeledPrompts(task, ControlledLabeler(beta=0.5), allocation)
        many, _many_prompts = source.sample(25, rng=np.random.default_rng(4))
        few, _ = source.sample(10, rng=np.random.default_rng(4))
        assert np.array_equal(many.prompt_index[:10], few.prompt_index)
        assert list(many.samples["completion"][:10]) == list(few.samples["completion"])
    check_training_set(Mix(source, alpha=0.25), *source.sample(12, rng=np.random.default_rng(0)))


def test_in_the_loop_labels_go_to_the_prompts_the_filter_failed_most():
    components = table_components(allocation="hardest", beta=1.0, noise=0.0)
    policy = components.prompt_policy
    assert isinstance(policy, HardestFirst)
    seen: list[np.ndarray] = []
    mix = components.training_set
    assert isinstance(mix, Mix)
    inner = mix.source.sample

    def spy(n: int, *, rng: np.random.Generator) -> tuple[Candidates, Prompts]:
        rows, prompts = inner(n, rng=rng)
        seen.append(policy.pass_rates_[prompts.index].copy())
        return rows, prompts

    mix.source.sample = spy  # type: ignore[method-assign]
    from synthloop import schedules
    from synthloop.budget import CostModel, Planner, UnitCosts
    from synthloop.loop import LoopSettings, run

    planner = Planner(make=schedules.constant, budget=BUDGET, unit_costs=UnitCosts(0.07, 1.0),
                      acceptance_rate=0.3, n0=24.0, max_iterations=4)
    costs = CostModel(unit="samples", prices={"generate": {"samples": 0.05}, "train": {"samples": 1.0}})
    history = run(components, planner, costs, LoopSettings(chunk_size=16), seed=2)
    assert [r.n_outside for r in history] == [8] * 4  # L = alpha / (1 - alpha) n_t, every round
    built = seen[1::2]  # reserve, then build (after the policy observed the round), each round
    measured = policy.pass_rates_[~np.isnan(policy.pass_rates_)]
    assert all(np.nanmean(rates) < np.mean(measured) for rates in built[1:])


@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_hardest_first_beats_uniform_labels_on_the_table_task(noise: float):
    """Prompts differ in how often the model solves them: a label on a rarely solved one moves the
    mean accuracy most, so the same labels do more hardest first (same seed, same generation)."""
    hardest = run_table(None, allocation="hardest", beta=1.0, noise=noise)[-1].eval["accuracy"]
    uniform = run_table(None, allocation="uniform", beta=1.0, noise=noise)[-1].eval["accuracy"]
    assert hardest > uniform


MATH: dict[str, Any] = {"name": "m", "seed": 0, "schedule": {"kind": "constant", "n0": 8, "iterations": 2},
        "budget": {"total": 1000},
        "task": {"kind": "math", "levels": [{"name": "a", "dataset": "chain_sum"}], "train_size": 20,
                 "eval_size": 5, "filter": {"kind": "noisy", "false_accept": 0.1, "false_reject": 0.3},
                 "labeler": {"kind": "controlled", "beta": 0.5}},
        "model": {"kind": "tiny"}, "prompt_policy": {"kind": "hardest_first", "samples_per_prompt": 4},
        "training_set": {"kind": "mix", "alpha": 0.2}}


def test_yaml_wires_the_policy_filter_labeler_and_mix():
    from synthloop.families.math import FAMILY

    config = parse_config(MATH)
    settings = FAMILY.validate(config)
    assert settings.task.filter.kind == "noisy" and settings.task.labeler is not None
    assert isinstance(config.prompt_policy, HardestFirstConfig) and config.prompt_policy.allocation == "hardest"
    without_labels = {**MATH, "task": {k: v for k, v in MATH["task"].items() if k != "labeler"}}
    with pytest.raises(ConfigError, match=r"task\.labeler"):
        FAMILY.validate(parse_config(without_labels))
    with pytest.raises(ConfigError):
        parse_config({**MATH, "prompt_policy": {"kind": "hardest_first", "allocation": "easiest"}})


def test_make_prompt_policy_hands_the_policy_to_the_labeled_task():
    task = TableTask(pool_size=12)
    source = LabeledPrompts(task, ControlledLabeler(beta=1.0))

    class Labeled(TableTask):
        def use_allocation(self, allocation: HardestFirst) -> None:
            source.use_allocation(allocation)

    policy = make_prompt_policy(HardestFirstConfig(kind="hardest_first"), Labeled(pool_size=12))
    assert source.allocation is policy


PHASES = {"generate": 3, "verify": 2, "append": 2, "commit": 3, "checkpoint": 2, "train": 2, "evaluate": 1}
DELAY = 0.02
SCRIPT = ROOT / "tests" / "collapse_support.py"


def _spawn(run_dir: Path, trace: Path, stderr: Path) -> subprocess.Popen[bytes]:
    return spawn_script(SCRIPT, run_dir, trace, stderr, delay=DELAY)


def _policy_state(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    store = RunStore(run_dir)
    folder = store.checkpoint_folders(store.manifest().iterations[-1].iteration)["prompt_policy"]
    return np.load(folder / "weights.npy"), np.load(folder / "pass-rates.npy")


@pytest.mark.slow
def test_sigkilled_runs_resume_to_the_same_weights(tmp_path: Path):
    reference_dir = tmp_path / "reference"
    history = run_table(reference_dir, fsync=False)
    assert len(history) == 6 and all(r.n_outside > 0 for r in history)
    reference = snapshot(reference_dir)
    run_dir = tmp_path / "killed"
    killed_in = kill_repeatedly(lambda trace, stderr: _spawn(run_dir, trace, stderr), run_dir, tmp_path,
                                phases=PHASES, kills=8, seed=12, delay=DELAY, budget=BUDGET)
    assert sum(killed_in.values()) >= 8, killed_in
    finished = _spawn(run_dir, tmp_path / "trace-final", tmp_path / "stderr-final")
    assert finished.wait() == 0, (tmp_path / "stderr-final").read_text()
    (weights, rates), (weights_ref, rates_ref) = _policy_state(run_dir), _policy_state(reference_dir)
    assert np.array_equal(weights, weights_ref) and np.array_equal(rates, rates_ref, equal_nan=True)
    assert np.sum(~np.isnan(rates)) > 20 and weights.std() > 0.1  # the state is not trivially equal
    assert snapshot(run_dir) == reference  # metrics, ledger, selected ids, checkpoint bytes


def test_a_math_run_from_yaml_filters_labels_and_reports_pass_at_k():
    """The configured plug-ins end to end on a tiny untrained model: the noisy filter judges, the
    labeler adds L = alpha / (1 - alpha) n_t rows a round, chosen by the hardest-first policy."""
    from synthloop.experiments import build_components, make_planner
    from synthloop.loop import LoopSettings, run
    from synthloop.signals.filters import NoisyFilter

    raw = {**MATH, "model": {"kind": "tiny", "n_layer": 1, "n_embd": 16, "n_head": 2, "seed_problems": 50,
                             "n_positions": 128},
           "task": {**MATH["task"], "eval_samples": 2, "eval_train_size": 3, "shots": 0},
           "selector": {"kind": "threshold", "threshold": 0.0},
           "generator": {"kind": "hf", "max_new_tokens": 8, "batch_size": 32},
           "learner": {"kind": "sft", "batch_size": 8, "bf16": False},
           "budget": {"total": 1000, "costs": {"train": 1.0, "label": {"samples": 1.0, "completion_tokens": 0.5}}}}
    config = parse_config(raw)
    components = build_components(config)
    task, policy = components.task, components.prompt_policy
    assert isinstance(task.verifier, NoisyFilter) and isinstance(policy, HardestFirst)
    assert task.labels is not None and task.labels.allocation is policy  # type: ignore[attr-defined]
    labels, _ = task.sample(4, rng=np.random.default_rng(0))  # type: ignore[attr-defined]
    assert all(text.startswith(" ") and "####" in text for text in labels.samples["completion"])  # as "Answer: ..."
    history = run(components, make_planner(config), config.budget.cost_model(), LoopSettings(), seed=0)
    assert [r.n_outside for r in history] == [2, 2]  # round(0.2 / 0.8 * 8)
    assert all(r.cost["label"] > 2 * 1.0 for r in history)  # a sample each, and their tokens (the student's)
    assert {"pass@1", "train/pass@1"} <= set(history[-1].eval) and "pass@8" not in history[-1].eval  # k <= n
    assert np.sum(~np.isnan(policy.pass_rates_)) > 0
