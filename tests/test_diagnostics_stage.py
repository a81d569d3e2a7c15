"""The diagnose stage on real runs: in every record with its estimator labels, charged to the
ledger, in the report and ``inspect --samples``; and it sees collapse coming.

The collapse check uses a categorical "language model" over 40 answers that retrains on its own
unfiltered samples (the maximum-likelihood refit of Shumailov et al.'s collapse: finite samples
lose rare answers for good), against the same model refitted on its samples mixed with as many
fresh real samples (the remedy of Ferbach et al. / Bertrand et al.)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from synthloop.budget import CostModel
from synthloop.cli import app
from synthloop.configs import load_config
from synthloop.diagnostics.stage import ESTIMATORS, Diagnose, View
from synthloop.experiments import run_config
from synthloop.loop import Components, LoopSettings, run
from synthloop.records import Candidates, IterationRecord, Prompts, Scores, Usage, ones_usage
from synthloop.report import html_report
from synthloop.report_samples import terminal_samples
from synthloop.schedules import constant
from synthloop.select import Passed
from synthloop.tasks.gaussian import GaussianProblem

from helpers import fixed_planner, gaussian_components

ROOT = Path(__file__).resolve().parents[1]
ANSWERS = 40
FEATURES = np.random.default_rng(123).standard_normal((ANSWERS, 6))  # a fixed embedding per answer
COSTS = CostModel(unit="samples", prices={"train": {"samples": 1.0}, "diagnose": {"seconds": 1.0}})


class Categorical:
    """Generator and task in one: answers k ~ p, texts "the answer is k"; every draw passes."""

    primary_metric, higher_is_better, name = "entropy", True, "categorical"

    def max_usage_per_draw(self) -> dict[str, float]:
        return {"samples": 1.0}

    def generate(self, model: np.ndarray, prompts: Prompts, *, rng: np.random.Generator) -> Candidates:
        k = rng.choice(ANSWERS, size=len(prompts), p=model)
        return Candidates(samples={"k": k, "text": [f"the answer is {i}" for i in k]},
                          prompt_index=prompts.index, usage=ones_usage(len(prompts), samples=1))

    @property
    def verifier(self) -> Categorical:
        return self

    def verify(self, candidates: Candidates, prompts: Prompts) -> Scores:
        return Scores.from_rewards(np.ones(len(candidates)))

    def sample_prompts(self, n: int, *, rng: np.random.Generator) -> Prompts:
        return Prompts.unconditional(n)

    def evaluate(self, model: np.ndarray, *, rng: np.random.Generator) -> dict[str, float]:
        p = model[model > 0]
        return {"entropy": float(-(p * np.log2(p)).sum())}

    def diagnostic_view(self, candidates: Candidates, prompts: Prompts) -> View:
        k = candidates.samples["k"]
        return View(FEATURES[k], texts=list(candidates.samples["text"]), answers=[str(i) for i in k], space="fixed")

    def diagnostic_reference(self, n: int, *, rng: np.random.Generator) -> tuple[View, View]:
        return View(FEATURES[rng.integers(ANSWERS, size=n)]), View(FEATURES[rng.integers(ANSWERS, size=n)])


class Refit:
    """p <- empirical distribution of the kept answers, mixed with ``real`` fresh uniform draws per kept one."""

    def __init__(self, real: float) -> None:
        self.real, self.p = real, np.full(ANSWERS, 1.0 / ANSWERS)

    @property
    def model(self) -> np.ndarray:
        return self.p.copy()

    def training_usage(self, candidates: Candidates) -> Usage:
        return ones_usage(len(candidates), samples=1)

    def update(self, selected: Candidates, prompts: Prompts, *, rng: np.random.Generator) -> dict[str, float]:
        k = selected.samples["k"]
        fresh = rng.integers(ANSWERS, size=int(self.real * len(k)))
        counts = np.bincount(np.concatenate([k, fresh]), minlength=ANSWERS).astype(float)
        self.p = counts / counts.sum()
        return {}

    def save(self, directory: Path) -> None:
        np.save(directory / "p.npy", self.p)

    def load(self, directory: Path) -> None:
        self.p = np.load(directory / "p.npy")


def _categorical_run(real: float) -> list[IterationRecord]:
    task = Categorical()
    parts = Components(task=task, generator=task, selector=Passed(), learner=Refit(real), diagnose=Diagnose())
    return run(parts, fixed_planner(constant(60), budget=60 * 25), COSTS, LoopSettings(), seed=0)


def test_collapse_raises_the_collapse_indicators_and_a_healthy_run_does_not() -> None:
    collapsing, healthy = _categorical_run(real=0.0), _categorical_run(real=2.0)
    # diagnose is priced in measured seconds, so how the budget's last few samples split into a last
    # iteration depends on the machine's speed: 24 full iterations at least, whatever the load
    assert min(len(collapsing), len(healthy)) >= 24 and max(len(collapsing), len(healthy)) <= 26

    def early_late(history: list[IterationRecord], name: str) -> tuple[float, float]:
        values = [r.diagnostics[name] for r in history]
        return float(np.mean(values[:3])), float(np.mean(values[-3:]))

    entropy, duplicates, distinct = (early_late(collapsing, n) for n in ("answer_entropy", "duplicate_rate", "distinct_2"))
    assert entropy[1] < entropy[0] - 1.0  # bits of answer entropy lost
    assert duplicates[1] > duplicates[0] + 0.1 and distinct[1] < distinct[0]
    entropy, duplicates, distinct = (early_late(healthy, n) for n in ("answer_entropy", "duplicate_rate", "distinct_2"))
    assert entropy[1] > entropy[0] - 0.5 and duplicates[1] < duplicates[0] + 0.1 and distinct[1] > 0.85 * distinct[0]
    assert collapsing[-1].eval["entropy"] < healthy[-1].eval["entropy"] - 1.0  # the model itself collapsed


def test_every_record_carries_labelled_estimates_and_the_ledger_their_cost() -> None:
    problem = GaussianProblem(theta0=(3.0, 3.0))
    parts = gaussian_components(problem)
    parts.diagnose = Diagnose(max_samples=300, reference_samples=300)
    history = run(parts, fixed_planner(constant(200), budget=1000), COSTS, LoopSettings(), seed=0)
    for record in history:
        assert set(record.diagnostics) >= {"divergence_to_reference", "information_gain", "entropy", "dispersion"}
        assert all(record.diagnostic_labels[k].startswith("estimate: ") for k in record.diagnostics)
        assert "Wang-Kulkarni-Verdu" in record.diagnostic_labels["divergence_to_reference"]
        assert record.seconds["diagnose"] > 0 and record.cost["diagnose"] == record.seconds["diagnose"]
        assert IterationRecord.from_json(json.loads(json.dumps(record.to_json()))) == record
    # the selection moves towards what the best model keeps: divergence to the reference falls
    assert history[-1].diagnostics["divergence_to_reference"] < history[0].diagnostics["divergence_to_reference"]
    assert set(ESTIMATORS) >= set(history[0].diagnostics)


def test_the_report_and_inspect_show_diagnostics_and_samples(tmp_path: Path) -> None:
    config = load_config(ROOT / "examples" / "gaussian-diagnose.yaml")
    config = config.model_copy(update={"budget": config.budget.model_copy(update={"total": 2000})})
    run_dir = tmp_path / "run"
    run_config(config, run_dir=run_dir)
    out = tmp_path / "report.html"
    html_report([run_dir], out)
    page = out.read_text()
    assert "Diagnostics (estimates, per iteration)" in page and "Wang-Kulkarni-Verdu" in page
    n_iterations = len(list(run_dir.glob("iter-*")))
    assert page.count("<h4>iteration ") == n_iterations and "rejected" in page and "kept" in page
    text = terminal_samples(run_dir, 2)
    assert text.count("[kept    ]") == 2 * n_iterations and "[rejected]" in text and "reward=" in text
    result = CliRunner().invoke(app, ["inspect", str(run_dir), "--samples", "1"])
    assert result.exit_code == 0 and "[rejected]" in result.output and "verdict=fail" in result.output


def test_an_old_record_without_diagnostics_still_loads() -> None:
    payload = json.loads((ROOT / "tests" / "data" / "format2" / "iter-0000" / "metrics.json").read_text())
    record = IterationRecord.from_json(payload)
    assert record.diagnostics == {} and record.diagnostic_labels == {} and record.update_statistics == {}
