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
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from synthloop.budget import CostModel, Ledger, Planner, UnitCosts
from synthloop.protocols import Generator, Learner, Selector, Task
from synthloop.records import Candidates, Prompts, Scores, Verdict
from synthloop.store import FileEntry, RunStore, candidates_table, iteration_dir

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
    verdicts: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.int64))
    files: list[FileEntry] = field(default_factory=list)

    @property
    def n_kept(self) -> int:
        return sum(len(ix) for _, ix, *_ in self.kept)


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
    """Run until the budget or the plan ends; return each iteration's metrics."""
    ledger = Ledger(total=planner.budget, costs=costs)
    emit = report or (lambda event, payload: None)
    initial = parts.task.evaluate(parts.learner.model, rng=rng_for(seed, 1, EVALUATE))
    if store is not None:
        store.commit_initial(initial)
    emit("start", {"initial": initial, "plan": planner.plan()})
    history: list[dict[str, Any]] = []
    acceptance, unit_costs = planner.acceptance_rate, planner.unit_costs
    t = 0
    while True:
        upcoming = planner.refit(next_iteration=t, spent=ledger.spent, acceptance_rate=acceptance,
                                 unit_costs=unit_costs)
        if not upcoming:
            break
        metrics = run_iteration(t, upcoming[0].n_selected, parts, ledger, settings, seed=seed,
                                store=store, acceptance=acceptance, emit=emit)
        history.append(metrics)
        emit("iteration", metrics)
        if metrics["n_generated"] > 0 and metrics["n_selected"] > 0:
            acceptance = metrics["n_selected"] / metrics["n_generated"]
            unit_costs = _measured_unit_costs(metrics, unit_costs)
        if metrics["cut"] or metrics["n_selected"] == 0:
            break
        t += 1
    emit("end", {"history": history, "spent": ledger.spent})
    return history


def run_iteration(
    t: int,
    n_target: int,
    parts: Components,
    ledger: Ledger,
    settings: LoopSettings,
    *,
    seed: int,
    store: RunStore | None,
    acceptance: float,
    emit: Report,
) -> dict[str, Any]:
    it = _Iteration(target=n_target)
    started = ledger.spent
    model = parts.learner.model
    draw_bound = _draw_cost_bound(parts.generator, ledger.costs)
    wanted_draws = math.ceil(settings.oversample * n_target) if settings.mode == "select" else None
    max_draws = settings.max_draws_per_selected * n_target
    cut = False
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
            cut = True
            break
        _generate_part(t, it, size, parts, ledger, settings, seed=seed, model=model, store=store)
        acceptance = max(it.n_kept, 1) / it.generated if settings.mode == "accept" else acceptance
        emit("part", {"iteration": t, "kept": it.n_kept, "target": n_target,
                      "generated": it.generated, "spent": ledger.spent, "total": ledger.total})
    if settings.mode == "select":
        _select_all(t, it, parts, ledger, seed=seed)
    cut = cut or it.n_kept < n_target
    return _finish(t, it, parts, ledger, settings, seed=seed, store=store, cut=cut, started=started)


def _generate_part(
    t: int, it: _Iteration, size: int, parts: Components, ledger: Ledger, settings: LoopSettings,
    *, seed: int, model: Any, store: RunStore | None,
) -> None:
    p = it.parts
    clock = time.perf_counter()
    prompts = parts.task.sample_prompts(size, rng=rng_for(seed, 0, t, PROMPTS, p))
    candidates = parts.generator.generate(model, prompts, rng=rng_for(seed, 0, t, GENERATE, p))
    _charge(ledger, t, "generate", candidates.usage, len(candidates), time.perf_counter() - clock)
    clock = time.perf_counter()
    scores = parts.task.verifier.verify(candidates, prompts)
    verify_usage = scores.usage or {"samples": np.ones(len(scores))}
    _charge(ledger, t, "verify", verify_usage, len(scores), time.perf_counter() - clock)
    it.generated += len(candidates)
    it.parts += 1
    it.verdicts += np.bincount(scores.verdict, minlength=3)[:3]
    if parts.selector.streaming:
        chosen = parts.selector.select(scores, n_wanted=it.target - it.n_kept,
                                       rng=rng_for(seed, 0, t, SELECT, p))
        _admit(it, p, chosen, candidates, prompts, scores, parts, ledger)
    else:
        it.pending.append((p, candidates, prompts, scores))
    if store is not None and settings.store_candidates == "all":
        table = candidates_table(iteration=t, part=p, candidates=candidates, scores=scores)
        it.files.append(store.write_table(f"{iteration_dir(t)}/candidates/part-{p:04d}.parquet", table))


def _admit(
    it: _Iteration, part: int, chosen: np.ndarray, candidates: Candidates, prompts: Prompts,
    scores: Scores, parts: Components, ledger: Ledger,
) -> None:
    """Keep ``chosen`` rows in order while their training cost still fits the budget."""
    if len(chosen) == 0:
        return
    picked = candidates.take(chosen)
    train_cost = ledger.costs.per_item("train", parts.learner.training_usage(picked), len(picked))
    room = ledger.remaining - it.train_committed
    fits = int(np.searchsorted(np.cumsum(train_cost), room * (1 + 1e-12), side="right"))
    if fits < len(chosen):
        chosen, picked = chosen[:fits], picked.take(np.arange(fits))
    it.train_committed += float(train_cost[:fits].sum())
    it.kept.append((part, chosen, picked, prompts.take(chosen), scores.take(chosen)))


def _select_all(t: int, it: _Iteration, parts: Components, ledger: Ledger, *, seed: int) -> None:
    if not it.pending:
        return
    scores = Scores.concat([s for *_, s in it.pending])
    chosen = parts.selector.select(scores, n_wanted=it.target, rng=rng_for(seed, 0, t, SELECT, 0))
    offsets = np.cumsum([0] + [len(c) for _, c, _, _ in it.pending])
    for (part, candidates, prompts, part_scores), lo, hi in zip(it.pending, offsets[:-1], offsets[1:], strict=False):
        local = chosen[(chosen >= lo) & (chosen < hi)] - lo
        _admit(it, part, local, candidates, prompts, part_scores, parts, ledger)


def _finish(
    t: int, it: _Iteration, parts: Components, ledger: Ledger, settings: LoopSettings, *,
    seed: int, store: RunStore | None, cut: bool, started: float,
) -> dict[str, Any]:
    if it.kept:
        selected = Candidates.concat([c for *_, c, _, _ in it.kept])
        prompts = Prompts.concat([p for *_, p, _ in it.kept])
        clock = time.perf_counter()
        train_metrics = parts.learner.update(selected, prompts, rng=rng_for(seed, 0, t, UPDATE))
        usage = parts.learner.training_usage(selected)
        _charge(ledger, t, "train", usage, len(selected), time.perf_counter() - clock)
    else:
        train_metrics = {}
    evaluation: dict[str, float] = {}
    if (t + 1) % settings.eval_every == 0 or cut:
        evaluation = parts.task.evaluate(parts.learner.model, rng=rng_for(seed, 0, t, EVALUATE))
    metrics = _metrics(t, it, ledger, cut=cut, started=started, train=train_metrics, evaluation=evaluation)
    if store is not None:
        _write_iteration(t, it, parts, ledger, settings, store, metrics)
    return metrics


def _write_iteration(
    t: int, it: _Iteration, parts: Components, ledger: Ledger, settings: LoopSettings,
    store: RunStore, metrics: dict[str, Any],
) -> None:
    files = list(it.files)
    if settings.store_candidates != "none" and it.kept:
        import pyarrow as pa

        tables = [candidates_table(iteration=t, part=part, candidates=c, scores=s, indices=ix)
                  for part, ix, c, _, s in it.kept]
        files.append(store.write_table(f"{iteration_dir(t)}/selected.parquet", pa.concat_tables(tables)))
    checkpoint = store.root / iteration_dir(t) / "checkpoint"
    checkpoint.mkdir(parents=True, exist_ok=True)
    parts.learner.save(checkpoint)
    files.extend(store.entry_for(str(p.relative_to(store.root)))
                 for p in sorted(checkpoint.rglob("*")) if p.is_file())
    files.append(store.write_json(f"{iteration_dir(t)}/metrics.json", metrics))
    store.commit_iteration(t, files, metrics, ledger)


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
    ids = np.concatenate([np.stack([np.full(len(ix), part), ix], axis=1).ravel()
                          for part, ix, *_ in it.kept]) if it.kept else np.empty(0)
    return {
        "iteration": t,
        "n_target": it.target,
        "n_selected": it.n_kept,
        "n_generated": it.generated,
        "n_parts": it.parts,
        "acceptance_rate": it.n_kept / it.generated if it.generated else 0.0,
        "verdicts": {v.name.lower(): int(it.verdicts[v]) for v in Verdict},
        "cost": by_stage,
        "seconds": seconds,
        "iteration_cost": ledger.spent - started,
        "cumulative_cost": ledger.spent,
        "budget": ledger.total,
        "cut": cut,
        "selected_sha256": hashlib.sha256(ids.astype(np.int64).tobytes()).hexdigest(),
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

