"""Conformance checks for plug-ins: call them from every plug-in's tests.

Each ``check_*`` function exercises one protocol on a real implementation and raises
``AssertionError`` naming the broken rule. They check behaviour, not types: determinism for a seed,
row counts, reward ranges, the error verdict, checkpoint round trips.

    from synthloop.testing import check_task, check_generator, check_learner
    check_task(MyTask())
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from synthloop.protocols import (
    Batch,
    Generator,
    Learner,
    PromptPolicy,
    Selector,
    Task,
    TrainingSetPolicy,
    Verifier,
)
from synthloop.records import Candidates, Observations, Prompts, Scores, Verdict, column_length, ones_usage
from synthloop.state import Stateful


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


def _scored_batch(n: int) -> Batch:
    rng = _rng(4)
    reward = rng.random(n)
    verdict = np.where(reward > 0.5, Verdict.PASS, Verdict.FAIL).astype(np.int8)
    verdict[::7] = Verdict.ERROR
    reward[::7] = np.nan
    candidates = Candidates(samples={"x": rng.standard_normal((n, 2))}, prompt_index=np.arange(n),
                            usage=ones_usage(n, samples=1), extra={"loss": rng.random(n)})
    return Batch(candidates, Prompts(index=np.arange(n)), Scores(reward=reward, verdict=verdict))


def check_selector(selector: Selector) -> None:
    """Indices ascending, unique, at most n_wanted, never an ERROR candidate, same seed same choice;
    a streaming selector's decision on a row does not depend on the rows after it (so the loop may
    apply it part by part)."""
    assert isinstance(selector, Selector), "does not implement the Selector protocol"
    assert isinstance(type(selector).streaming, bool), "streaming must be a class attribute of the kind"
    batch = _scored_batch(200)
    for n_wanted in (0, 1, 10, 500):
        first = selector.select(batch, n_wanted=n_wanted, rng=_rng(5))
        again = selector.select(batch, n_wanted=n_wanted, rng=_rng(5))
        assert np.array_equal(first, again), "select is not deterministic for a seed"
        assert len(first) <= n_wanted, f"kept {len(first)} > n_wanted {n_wanted}"
        assert np.all(np.diff(first) > 0), "indices must be ascending and unique"
        assert not np.any(batch.scores.verdict[first] == Verdict.ERROR), "an ERROR candidate was kept"
    if selector.streaming:
        everything = selector.select(batch, n_wanted=len(batch), rng=_rng(5))
        prefix = selector.select(batch.take(np.arange(120)), n_wanted=120, rng=_rng(5))
        assert np.array_equal(prefix, everything[everything < 120]), \
            "a streaming selector's choice among the first rows changed when later rows were added"


def check_stateful(make: Callable[[], Stateful], advance: Callable[[Any], Any], tmp: Path) -> None:
    """``save`` then ``load`` into a fresh component gives the same next output as the original."""
    original = make()
    advance(original)
    (tmp / "state").mkdir(parents=True)
    original.save(tmp / "state")
    restored = make()
    restored.load(tmp / "state")
    assert _equal_outputs(advance(original), advance(restored)), "a restored component behaves differently"


def _equal_outputs(a: Any, b: Any) -> bool:
    if isinstance(a, Prompts | Candidates):
        return _equal_columns(a.index if isinstance(a, Prompts) else a.prompt_index,
                              b.index if isinstance(b, Prompts) else b.prompt_index)
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(_equal_outputs(x, y) for x, y in zip(a, b, strict=True))
    return bool(_equal_columns(a, b))


def check_prompt_policy(policy: PromptPolicy, task: Task, model: Any) -> None:
    """Deterministic for a seed; n prompts; usage only in quantities the policy declares; a policy
    restored from its saved state chooses what the original would."""
    assert isinstance(policy, PromptPolicy), "does not implement the PromptPolicy protocol"
    first = policy.choose(task, 16, model=model, rng=_rng(8))
    again = policy.choose(task, 16, model=model, rng=_rng(8))
    assert len(first.prompts) == 16, f"asked for 16 prompts, got {len(first.prompts)}"
    assert _equal_columns(first.prompts.index, again.prompts.index), "choose is not deterministic for a seed"
    with tempfile.TemporaryDirectory() as folder:
        policy.save(Path(folder))
        index = first.prompts.index
        policy.observe(Observations(index[:1], np.zeros(1, np.int64), np.full(1, 5, np.int64),
                                    np.zeros(1, np.int64)))  # state moves on ...
        policy.load(Path(folder))  # ... and comes back
    restored = policy.choose(task, 16, model=model, rng=_rng(8))
    assert _equal_columns(first.prompts.index, restored.prompts.index), \
        "a policy loaded from its saved state chooses differently"
    declared = policy.usage_per_prompt()
    for quantity, amount in first.usage.items():
        assert quantity in declared, f"usage {quantity!r} is reported but not declared in usage_per_prompt"
        assert amount <= declared[quantity] * 16 * (1 + 1e-9), f"{quantity} usage exceeds its declared bound"


def check_training_set(policy: TrainingSetPolicy, selected: Candidates, prompts: Prompts) -> None:
    """The training set holds the selection; what it adds beyond it was reserved up front."""
    assert isinstance(policy, TrainingSetPolicy), "does not implement the TrainingSetPolicy protocol"
    reserved = policy.reserve(len(selected), rng=_rng(9))
    built = policy.build(selected, prompts, rng=_rng(9))
    assert built.n_selected == len(selected), "the training set must hold this iteration's selection"
    added = len(built.candidates) - built.n_selected
    assert added == built.n_carried + built.n_outside, "rows beyond the selection must be counted"
    assert added <= (0 if reserved is None else len(reserved)), "the training set adds rows it did not reserve"
    assert len(built.prompts) == len(built.candidates), "one prompt per training row"


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
