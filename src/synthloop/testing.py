"""Conformance checks for plug-ins: call them from every plug-in's tests.

Each ``check_*`` function exercises one protocol on a real implementation and raises
``AssertionError`` naming the broken rule. They check behaviour, not types: determinism for a seed,
row counts, reward ranges, the error verdict, checkpoint round trips.

    from synthloop.testing import check_task, check_generator, check_learner
    check_task(MyTask())
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from synthloop.protocols import Generator, Learner, Selector, Task, Verifier
from synthloop.records import Candidates, Prompts, Scores, Verdict, column_length


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _equal_columns(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    return list(a) == list(b)


def check_task(task: Task, *, n_prompts: int = 4) -> None:
    """Prompts come in the asked number and reproducibly; evaluation reports the primary metric."""
    assert isinstance(task, Task), f"{type(task).__name__} does not implement the Task protocol"
    assert isinstance(task.name, str) and task.name, "Task.name must be a non-empty string"
    assert isinstance(task.verifier, Verifier), "Task.verifier must implement the Verifier protocol"
    first = task.sample_prompts(n_prompts, rng=_rng(1))
    again = task.sample_prompts(n_prompts, rng=_rng(1))
    assert isinstance(first, Prompts), "sample_prompts must return Prompts"
    assert len(first) == n_prompts, f"sample_prompts({n_prompts}) returned {len(first)} prompts"
    assert np.array_equal(first.index, again.index), "sample_prompts is not deterministic for a seed"
    for name, column in first.items.items():
        assert _equal_columns(column, again.items[name]), f"prompt column {name!r} not deterministic"


def check_evaluation(task: Task, model: Any) -> dict[str, float]:
    """Evaluation of ``model`` is a dict of finite floats holding the primary metric."""
    metrics = task.evaluate(model, rng=_rng(2))
    assert task.primary_metric in metrics, (
        f"evaluate() returned {sorted(metrics)} without the primary metric {task.primary_metric!r}"
    )
    for key, value in metrics.items():
        assert isinstance(value, float) and np.isfinite(value), f"metric {key!r} = {value!r}"
    return metrics


def check_generator(generator: Generator, model: Any, prompts: Prompts) -> Candidates:
    """One candidate per prompt, usage per row within ``max_usage_per_draw``, same seed same output."""
    assert isinstance(generator, Generator), "does not implement the Generator protocol"
    bound = generator.max_usage_per_draw()
    assert bound, "max_usage_per_draw() must name at least one quantity (samples)"
    first = generator.generate(model, prompts, rng=_rng(3))
    again = generator.generate(model, prompts, rng=_rng(3))
    assert isinstance(first, Candidates), "generate must return Candidates"
    assert len(first) == len(prompts), f"{len(prompts)} prompts gave {len(first)} candidates"
    assert np.array_equal(first.prompt_index, prompts.index), "prompt_index must follow the prompts"
    for name, column in first.samples.items():
        assert _equal_columns(column, again.samples[name]), f"sample column {name!r} not deterministic"
    for quantity, per_row in first.usage.items():
        assert np.all(per_row >= 0), f"negative {quantity} usage"
        if quantity in bound:
            assert np.all(per_row <= bound[quantity] + 1e-9), (
                f"a draw used {per_row.max()} {quantity}, above max_usage_per_draw {bound[quantity]}"
            )
    return first


def check_verifier(verifier: Verifier, candidates: Candidates, prompts: Prompts) -> Scores:
    """Rewards in [0, 1] where the verdict is pass or fail, NaN exactly where it is error."""
    assert isinstance(verifier, Verifier), "does not implement the Verifier protocol"
    scores = verifier.verify(candidates, prompts)
    assert isinstance(scores, Scores), "verify must return Scores"
    assert len(scores) == len(candidates), f"{len(candidates)} candidates gave {len(scores)} scores"
    allowed = {int(v) for v in Verdict}
    assert set(np.unique(scores.verdict).tolist()) <= allowed, "verdicts must be Verdict values"
    error = scores.verdict == Verdict.ERROR
    assert np.all(np.isnan(scores.reward[error])), "an ERROR verdict must carry a NaN reward"
    ok = scores.reward[~error]
    assert np.all((ok >= 0) & (ok <= 1)), "rewards must lie in [0, 1]"
    return scores


def check_selector(selector: Selector) -> None:
    """Indices ascending, unique, at most n_wanted, never an ERROR candidate, same seed same choice."""
    assert isinstance(selector, Selector), "does not implement the Selector protocol"
    rng = _rng(4)
    reward = rng.random(200)
    verdict = np.where(reward > 0.5, Verdict.PASS, Verdict.FAIL).astype(np.int8)
    verdict[::7] = Verdict.ERROR
    reward[::7] = np.nan
    scores = Scores(reward=reward, verdict=verdict)
    for n_wanted in (0, 1, 10, 500):
        first = selector.select(scores, n_wanted=n_wanted, rng=_rng(5))
        again = selector.select(scores, n_wanted=n_wanted, rng=_rng(5))
        assert np.array_equal(first, again), "select is not deterministic for a seed"
        assert len(first) <= n_wanted, f"kept {len(first)} > n_wanted {n_wanted}"
        assert np.all(np.diff(first) > 0), "indices must be ascending and unique"
        assert not np.any(verdict[first] == Verdict.ERROR), "an ERROR candidate was kept"


def check_learner(
    learner_factory: Any, selected: Candidates, prompts: Prompts, *, atol: float = 0.0
) -> None:
    """``update`` changes the model; ``save``/``load`` restore it so the next update is identical.

    ``learner_factory()`` must build a fresh learner in its initial state each call.
    """
    learner = learner_factory()
    assert isinstance(learner, Learner), "does not implement the Learner protocol"
    usage = learner.training_usage(selected)
    for quantity, per_row in usage.items():
        assert column_length(per_row) == len(selected), f"training usage {quantity!r} needs a row each"
    learner.update(selected, prompts, rng=_rng(6))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint"
        path.mkdir()
        learner.save(path)
        after_a = learner.update(selected, prompts, rng=_rng(7))
        restored = learner_factory()
        restored.load(path)
        after_b = restored.update(selected, prompts, rng=_rng(7))
    assert set(after_a) == set(after_b), "update metrics differ in keys after a checkpoint round trip"
    for key in after_a:
        assert abs(after_a[key] - after_b[key]) <= atol, (
            f"after save/load the next update gave {key}={after_b[key]} instead of {after_a[key]}"
        )
