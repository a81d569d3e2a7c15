"""The bootstrapping loop: generate -> verify -> select -> update -> account, evaluate, commit.

Two ways to fill an iteration, both under one budget:
- ``accept`` (Spend Wisely, Algorithm 1): draw from the current model in chunks, let a streaming
  selector keep each draw (with probability R(x) for ``RewardProportional``) until n_t are kept.
- ``select``: draw N_t = ceil(oversample * n_t), then a selector keeps n_t of them (top-k...).

Budget rule: before a chunk is generated, its worst-case cost plus the training cost of everything
already kept must fit in what remains; a kept candidate is admitted only if its training still fits.
So a run never spends past its budget; an iteration that could not reach n_t is marked ``cut``.

Randomness: one ``SeedSequence`` tree, keyed by (iteration, stage, part), so any iteration or part
can be re-run alone and a resumed run draws exactly what an uninterrupted one would.

Crash safety: each generated part and each finished iteration is committed to the run directory by
a :class:`~synthloop.runs.Journal`. Given a store that already holds committed progress, ``run``
continues from it: committed parts are read back, never regenerated, so their budget is never spent
twice, and the run ends exactly where an uninterrupted one would (``docs/run-directory.md``).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from synthloop import faults
from synthloop.budget import TOLERANCE, CostModel, Ledger, Planner, UnitCosts
from synthloop.protocols import Generator, Learner, Selector, Task
from synthloop.records import Candidates, Prompts, Scores, Verdict
from synthloop.runs import Journal, Part, without_usage
from synthloop.store import RunStore

PROMPTS, GENERATE, SELECT, UPDATE, EVALUATE = range(5)
Report = Callable[[str, Mapping[str, Any]], None]


@dataclass(frozen=True)
class LoopSettings:
    mode: Literal["accept", "select"] = "accept"
    oversample: float = 2.0  # select mode: N_t = ceil(oversample * n_t)
    chunk_size: int = 65536  # most draws generated (and stored) as one part
    store_candidates: Literal["all", "selected", "none"] = "all"
    eval_every: int = 1
    max_draws_per_selected: float = 10_000.0  # give up on an iteration whose acceptance is ~0
    keep_checkpoints: int = 3  # learner checkpoints kept in the run directory (the last K iterations)


@dataclass
class Components:
    task: Task
    generator: Generator
    selector: Selector
    learner: Learner


@dataclass
class _Iteration:
    """What one iteration has drawn and kept so far."""

    target: int
    generated: int = 0
    parts: int = 0
    kept: list[tuple[int, np.ndarray, Candidates, Prompts, Scores]] = field(default_factory=list)
    pending: list[tuple[int, Candidates, Prompts, Scores]] = field(default_factory=list)  # select mode
    train_committed: float = 0.0  # training cost of what is kept
    acceptable: int = 0  # draws the streaming selector accepts, counted past the target
    verdicts: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.int64))

    @property
    def n_kept(self) -> int:
        return sum(len(ix) for _, ix, *_ in self.kept)

    def acceptance(self, mode: str, previous: float) -> float:
        """The acceptance estimate after this iteration's draws so far.

        Streaming: accepted / drawn, counting the draws the selector accepts beyond n_t, so a part
        that overshoots its target does not bias the estimate down (kept / drawn would: it can
        never exceed the estimate the part was sized with). Generate-then-select: unchanged.
        """
        if mode != "accept" or self.generated == 0:
            return previous
        return max(self.acceptable, 1) / self.generated


def rng_for(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def run(
    parts: Components,
    planner: Planner,
    costs: CostModel,
    settings: LoopSettings,
    *,
    seed: int,
    store: RunStore | None = None,
    report: Report | None = None,
) -> list[dict[str, Any]]:
    """Run until the budget or the plan ends; return each iteration's metrics.

    If ``store`` holds committed progress, the run continues from its last committed state.
    """
    ledger = Ledger(total=planner.budget, costs=costs)
    emit = report or (lambda event, payload: None)
    journal = Journal(store, store_candidates=settings.store_candidates,
                      keep_checkpoints=settings.keep_checkpoints)
    initial = journal.initial(
        parts.task, lambda: parts.task.evaluate(parts.learner.model, rng=rng_for(seed, 1, EVALUATE)))
    history = journal.restore({"learner": parts.learner}, ledger)
    acceptance, unit_costs = planner.acceptance_rate, planner.unit_costs
    for metrics in history:  # what the planner had measured when the run stopped
        acceptance, unit_costs = _measured(metrics, acceptance, unit_costs)
    emit("start", {"initial": initial, "plan": planner.plan(), "resumed": len(history),
                   "spent": ledger.spent, "total": ledger.total})
    t = len(history)
    while not (history and _last(history[-1])):
        upcoming = planner.refit(next_iteration=t, spent=ledger.spent, acceptance_rate=acceptance,
                                 unit_costs=unit_costs)
        if not upcoming:
            break
        metrics = run_iteration(t, upcoming[0].n_selected, parts, ledger, settings, seed=seed,
                                journal=journal, acceptance=acceptance, emit=emit,
                                planned_cut=upcoming[0].cut)
        history.append(metrics)
        emit("iteration", metrics)
        acceptance, unit_costs = _measured(metrics, acceptance, unit_costs)
        t += 1
    journal.finish()
    emit("end", {"history": history, "spent": ledger.spent})
    return history


def _last(metrics: Mapping[str, Any]) -> bool:
    """The run ends after an iteration the budget stopped short (or that kept nothing).

    An iteration the plan cut to fit what remained, but that reached its cut target for less than
    planned (its acceptance rose), leaves budget: the run goes on. Runs written before the
    ``exhausted`` field existed ended at any cut.
    """
    return bool(metrics.get("exhausted", metrics["cut"]) or metrics["n_selected"] == 0)


def _measured(metrics: Mapping[str, Any], acceptance: float, unit_costs: UnitCosts) -> tuple[float, UnitCosts]:
    if metrics["n_generated"] > 0 and metrics["n_selected"] > 0:
        accepted = metrics.get("n_accepted", metrics["n_selected"])  # runs written before the field: kept
        return accepted / metrics["n_generated"], _measured_unit_costs(metrics, unit_costs)
    return acceptance, unit_costs


def run_iteration(
    t: int,
    n_target: int,
    parts: Components,
    ledger: Ledger,
    settings: LoopSettings,
    *,
    seed: int,
    journal: Journal,
    acceptance: float,
    emit: Report,
    planned_cut: bool = False,
) -> dict[str, Any]:
    """One iteration; ``planned_cut`` says the plan already shrank n_t to fit the budget."""
    it = _Iteration(target=n_target)
    started = ledger.spent
    model = parts.learner.model
    for part in journal.resumed_parts(t, n_target):  # committed before a stop: read back, not redrawn
        ledger.restore(part.ledger_rows)
        _apply(it, part, _prompts(t, part.part, part.size, parts, seed=seed))
        acceptance = it.acceptance(settings.mode, acceptance)
    draw_bound = _draw_cost_bound(parts.generator, ledger.costs)
    wanted_draws = math.ceil(settings.oversample * n_target) if settings.mode == "select" else None
    max_draws = settings.max_draws_per_selected * n_target
    cut, refused = planned_cut, False
    while it.n_kept < n_target and it.generated < max_draws:
        # -- how many draws this part: what is still needed, what the budget affords -------------
        if wanted_draws is not None:
            need = wanted_draws - it.generated
            if need <= 0:
                break
        else:
            need = math.ceil((n_target - it.n_kept) / max(acceptance, 1e-6))
            if it.generated == 0:  # the model has changed since acceptance was measured: probe first
                need = min(need, max(n_target, 64))
        free = ledger.remaining - it.train_committed
        per_draw = draw_bound + acceptance * _mean_train_cost(it, parts, ledger.costs)
        affordable = math.floor(free / per_draw) if per_draw > 0 else settings.chunk_size
        size = min(need, settings.chunk_size, affordable)
        if size < 1:
            cut = refused = True
            break
        _generate_part(t, it, size, parts, ledger, seed=seed, model=model, journal=journal)
        acceptance = it.acceptance(settings.mode, acceptance)
        emit("part", {"iteration": t, "kept": it.n_kept, "target": n_target,
                      "generated": it.generated, "spent": ledger.spent, "total": ledger.total})
    if settings.mode == "select":
        _select_all(t, it, parts, ledger, seed=seed)
    exhausted = refused or it.n_kept < n_target
    return _finish(t, it, parts, ledger, settings, seed=seed, journal=journal, cut=cut or exhausted,
                   exhausted=exhausted, started=started)


def _prompts(t: int, p: int, size: int, parts: Components, *, seed: int) -> Prompts:
    return parts.task.sample_prompts(size, rng=rng_for(seed, 0, t, PROMPTS, p))


def _generate_part(
    t: int, it: _Iteration, size: int, parts: Components, ledger: Ledger,
    *, seed: int, model: Any, journal: Journal,
) -> None:
    p = it.parts
    first_row = len(ledger.rows)
    clock = time.perf_counter()
    prompts = _prompts(t, p, size, parts, seed=seed)
    candidates = parts.generator.generate(model, prompts, rng=rng_for(seed, 0, t, GENERATE, p))
    faults.point("generate", f"{t}/{p}")
    _charge(ledger, t, "generate", candidates.usage, len(candidates), time.perf_counter() - clock)
    clock = time.perf_counter()
    scores = parts.task.verifier.verify(candidates, prompts)
    faults.point("verify", f"{t}/{p}")
    verify_usage = scores.usage or {"samples": np.ones(len(scores))}
    _charge(ledger, t, "verify", verify_usage, len(scores), time.perf_counter() - clock)
    part = Part(part=p, size=len(candidates), ledger_rows=ledger.rows[first_row:],
                verdicts=np.bincount(scores.verdict, minlength=3)[:3].astype(np.int64),
                train_committed=it.train_committed)
    if parts.selector.streaming:
        # a streaming selector decides row by row in draw order, so asking for every acceptable row
        # and keeping the first n_t - kept gives the same rows as asking for n_t - kept
        accepted = parts.selector.select(scores, n_wanted=len(scores), rng=rng_for(seed, 0, t, SELECT, p))
        part.acceptable = len(accepted)
        chosen = accepted[:max(it.target - it.n_kept, 0)]
        part.kept, part.train_committed = _admit(it, chosen, candidates, scores, parts, ledger)
    else:
        part.pending = (candidates, without_usage(scores))
    journal.commit_part(t, it.target, part, candidates, scores)
    _apply(it, part, prompts)


def _apply(it: _Iteration, part: Part, prompts: Prompts) -> None:
    """Add a generated (or committed and read back) part to what the iteration holds."""
    it.generated += part.size
    it.parts += 1
    it.verdicts += part.verdicts
    it.acceptable += part.acceptable
    it.train_committed = part.train_committed
    if part.kept is not None:
        chosen, candidates, scores = part.kept
        it.kept.append((part.part, chosen, candidates, prompts.take(chosen), scores))
    if part.pending is not None:
        candidates, scores = part.pending
        it.pending.append((part.part, candidates, prompts, scores))


def _admit(
    it: _Iteration, chosen: np.ndarray, candidates: Candidates, scores: Scores, parts: Components,
    ledger: Ledger,
) -> tuple[tuple[np.ndarray, Candidates, Scores] | None, float]:
    """Keep ``chosen`` rows in order while their training cost still fits the budget; return them
    and the training cost reserved for the iteration's kept rows so far."""
    if len(chosen) == 0:
        return None, it.train_committed
    picked = candidates.take(chosen)
    train_cost = ledger.costs.per_item("train", parts.learner.training_usage(picked), len(picked))
    room = (ledger.remaining - it.train_committed) * (1 + TOLERANCE)
    total = float(train_cost.sum())
    fits = len(chosen) if total <= room else int(np.searchsorted(np.cumsum(train_cost), room, side="right"))
    if fits == 0:
        return None, it.train_committed
    if fits < len(chosen):
        chosen, picked = chosen[:fits], picked.take(np.arange(fits))
        total = float(train_cost[:fits].sum())
    return (chosen, picked, without_usage(scores.take(chosen))), it.train_committed + total


def _select_all(t: int, it: _Iteration, parts: Components, ledger: Ledger, *, seed: int) -> None:
    if not it.pending:
        return
    scores = Scores.concat([s for *_, s in it.pending])
    chosen = parts.selector.select(scores, n_wanted=it.target, rng=rng_for(seed, 0, t, SELECT, 0))
    offsets = np.cumsum([0] + [len(c) for _, c, _, _ in it.pending])
    for (part, candidates, prompts, part_scores), lo, hi in zip(it.pending, offsets[:-1], offsets[1:], strict=True):
        local = chosen[(chosen >= lo) & (chosen < hi)] - lo
        kept, it.train_committed = _admit(it, local, candidates, part_scores, parts, ledger)
        if kept is not None:
            it.kept.append((part, kept[0], kept[1], prompts.take(kept[0]), kept[2]))


def _finish(
    t: int, it: _Iteration, parts: Components, ledger: Ledger, settings: LoopSettings, *,
    seed: int, journal: Journal, cut: bool, exhausted: bool, started: float,
) -> dict[str, Any]:
    if it.kept:
        selected = Candidates.concat([c for *_, c, _, _ in it.kept])
        prompts = Prompts.concat([p for *_, p, _ in it.kept])
        clock = time.perf_counter()
        train_metrics = parts.learner.update(selected, prompts, rng=rng_for(seed, 0, t, UPDATE))
        faults.point("train", str(t))
        usage = parts.learner.training_usage(selected)
        _charge(ledger, t, "train", usage, len(selected), time.perf_counter() - clock)
    else:
        train_metrics = {}
    evaluation: dict[str, float] = {}
    if (t + 1) % settings.eval_every == 0 or cut:
        evaluation = parts.task.evaluate(parts.learner.model, rng=rng_for(seed, 0, t, EVALUATE))
        faults.point("evaluate", str(t))
    metrics = _metrics(t, it, ledger, cut=cut, started=started, train=train_metrics, evaluation=evaluation)
    metrics["exhausted"] = exhausted
    journal.commit_iteration(t, [(p, ix, c, s) for p, ix, c, _, s in it.kept], {"learner": parts.learner}, ledger,
                             metrics)
    return metrics


def _metrics(
    t: int, it: _Iteration, ledger: Ledger, *, cut: bool, started: float,
    train: Mapping[str, float], evaluation: Mapping[str, float],
) -> dict[str, Any]:
    by_stage = {s: 0.0 for s in ("generate", "verify", "train")}
    seconds = dict(by_stage)
    for row in ledger.rows:
        if row.iteration == t:
            by_stage[row.stage] += row.cost
            seconds[row.stage] += row.seconds
    ids = hashlib.sha256()
    for part, ix, *_ in it.kept:  # the selected set as (part, index) ids, in order
        ids.update(np.int64(part).tobytes())
        ids.update(ix.astype(np.int64).tobytes())
    return {
        "iteration": t,
        "n_target": it.target,
        "n_selected": it.n_kept,
        "n_generated": it.generated,
        "n_parts": it.parts,
        "n_accepted": max(it.acceptable, it.n_kept),  # streaming: accepted draws, past n_t too
        "acceptance_rate": max(it.acceptable, it.n_kept) / it.generated if it.generated else 0.0,
        "verdicts": {v.name.lower(): int(it.verdicts[v]) for v in Verdict},
        "cost": by_stage,
        "seconds": seconds,
        "iteration_cost": ledger.spent - started,
        "cumulative_cost": ledger.spent,
        "budget": ledger.total,
        "cut": cut,
        "selected_sha256": ids.hexdigest(),
        "train": dict(train),
        "eval": dict(evaluation),
    }


def _charge(ledger: Ledger, t: int, stage: str, usage: Mapping[str, np.ndarray], items: int,
            seconds: float) -> None:
    totals = {k: float(v.sum()) for k, v in usage.items()}
    ledger.charge(t, stage, items=items, quantities=totals, seconds=seconds)


def _draw_cost_bound(generator: Generator, costs: CostModel) -> float:
    return costs.per_unit("generate", generator.max_usage_per_draw()) + costs.per_unit(
        "verify", {"samples": 1.0}
    )


def _mean_train_cost(it: _Iteration, parts: Components, costs: CostModel) -> float:
    if not it.kept:
        return costs.per_unit("train", parts.generator.max_usage_per_draw())
    return it.train_committed / max(it.n_kept, 1)


def _measured_unit_costs(metrics: Mapping[str, Any], fallback: UnitCosts) -> UnitCosts:
    cost = metrics["cost"]
    per_draw = (cost["generate"] + cost["verify"]) / metrics["n_generated"]
    per_selected = cost["train"] / metrics["n_selected"]
    return UnitCosts(per_draw=per_draw, per_selected=per_selected) if per_draw + per_selected > 0 else fallback

