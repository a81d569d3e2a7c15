"""The bootstrapping loop, one iteration after another until the budget or the plan ends:

    choose prompts -> generate -> verify -> select -> build the training set -> update
      -> account, evaluate, commit

Two ways to fill an iteration, both under one budget (``iteration.py``):
- streaming (Spend Wisely, Algorithm 1): draw in chunks, let a streaming selector keep each draw
  (with probability R(x) for ``RewardProportional``) until n_t are kept;
- batch: draw N_t = ceil(oversample * n_t), then a selector keeps n_t of them (top-k...).
A selector's kind says whether it streams; a streaming one may also be used in batch.

Budget rule: before a part is generated, its worst-case cost plus the training cost of everything
already kept (and of the rows the training-set policy adds) must fit in what remains; a kept
candidate is admitted only if its training still fits. So a run never spends past its budget
(a budget priced in measured seconds may overrun by at most one part and one update,
``docs/architecture.md``); an iteration that could not reach n_t is marked ``cut``.

Randomness: one ``SeedSequence`` tree keyed by (iteration, stage, part), so any iteration or part
can be re-run alone and a resumed run draws exactly what an uninterrupted one would.

Crash safety: the :class:`~synthloop.runs.Journal` commits each part and each iteration, with the
state of every stateful component (learner, prompt policy, selector, training set). Given a store
that holds committed progress, ``run`` continues from it: committed parts are read back, never
regenerated, so their budget is never spent twice (``docs/run-directory.md``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

from synthloop.budget import AnyPlanner, CostModel, Ledger, UnitCosts, by_stage, check_priced
from synthloop.diagnostics.stage import Diagnose
from synthloop.events import Event, Finished, IterationDone, Started
from synthloop.iteration import Iteration, rng_for
from synthloop.policies import UniformPrompts
from synthloop.protocols import Generator, Learner, PromptPolicy, Selector, Task, TrainingSetPolicy
from synthloop.records import IterationRecord
from synthloop.runs import Journal
from synthloop.state import Stateful
from synthloop.store import RunStore
from synthloop.training_set import PricedLabels, ThisIteration

EVALUATE = 4
Report = Callable[[Event], None]


@dataclass(frozen=True)
class LoopSettings:
    mode: Literal["accept", "select"] | None = None  # None: streaming if the selector's kind streams
    oversample: float = 2.0  # batch: N_t = ceil(oversample * n_t)
    chunk_size: int = 65536  # most draws generated (and stored) as one part
    store_candidates: Literal["all", "selected", "none"] = "all"
    eval_every: int = 1
    max_draws_per_selected: float = 10_000.0  # give up on an iteration whose acceptance is ~0
    keep_checkpoints: int = 2  # checkpoints kept in the run directory (the last K; runs.Journal)


@dataclass(frozen=True)
class Stages:
    """The ledger stage each component's usage is charged to (a teacher's may be ``label``)."""

    generate: str = "generate"
    verify: str = "verify"
    score: str = "score"
    train: str = "train"
    label: str = "label"  # a mix's outside labels (``TrainingSet.label_usage``)


@dataclass
class Components:
    task: Task
    generator: Generator
    selector: Selector
    learner: Learner
    prompt_policy: PromptPolicy = field(default_factory=UniformPrompts)
    training_set: TrainingSetPolicy = field(default_factory=ThisIteration)
    stages: Stages = Stages()
    verify_usage_per_candidate: Mapping[str, float] = field(default_factory=lambda: {"samples": 1.0})
    diagnose: Diagnose | None = None  # the optional diagnose stage (``synthloop.diagnostics.stage``)

    def stateful(self) -> dict[str, Stateful]:
        """Every component with state, by the name of its checkpoint folder."""
        states: dict[str, Stateful] = {"learner": self.learner, "prompt_policy": self.prompt_policy,
                                       "training_set": self.training_set}
        if isinstance(self.selector, Stateful):
            states["selector"] = self.selector
        return states


def streaming(mode: str | None, selector: Selector) -> bool:
    """Whether iterations stream; a batch selector cannot, and saying so is an error."""
    if mode == "accept" and not selector.streaming:
        raise ValueError(f"loop.mode: 'accept' needs a streaming selector; {type(selector).__name__} "
                         "must see all N_t candidates (use mode 'select', or leave mode unset)")
    return mode != "select" and selector.streaming


def run(
    parts: Components, planner: AnyPlanner, costs: CostModel, settings: LoopSettings, *,
    seed: int, store: RunStore | None = None, report: Report | None = None,
) -> list[IterationRecord]:
    """Run until the budget or the plan ends; return each iteration's record.

    If ``store`` holds committed progress, the run continues from its last committed state.
    """
    stream = streaming(settings.mode, parts.selector)
    check_priced(costs.prices, declared_usage(parts, costs))
    ledger = Ledger(total=planner.budget, costs=costs)
    emit = report or (lambda event: None)
    journal = Journal(store, store_candidates=settings.store_candidates,
                      keep_checkpoints=settings.keep_checkpoints)
    initial = journal.initial(
        parts.task, lambda: parts.task.evaluate(parts.learner.model, rng=rng_for(seed, 1, EVALUATE)))
    history = [IterationRecord.from_json(m) for m in journal.restore(parts.stateful(), ledger)]
    acceptance, unit_costs = planner.acceptance_rate, planner.unit_costs
    for record in history:  # what the planner had measured when the run stopped
        acceptance, unit_costs = measured(record, acceptance, unit_costs, parts.stages)
        planner.observe(record)
    emit(Started(initial=initial, plan=planner.plan(), resumed=len(history), spent=ledger.spent,
                 total=ledger.total))
    while not (history and history[-1].ends_run):
        t = len(history)
        upcoming = planner.refit(next_iteration=t, spent=ledger.spent, acceptance_rate=acceptance,
                                 unit_costs=unit_costs)
        if not upcoming:
            break
        iteration = Iteration(t, upcoming[0].n_selected, parts, ledger, settings, seed=seed, journal=journal,
                              streaming=stream, acceptance=acceptance, emit=emit,
                              final=partial(ends_after, planner=planner, ledger=ledger, acceptance=acceptance,
                                            unit_costs=unit_costs, stages=parts.stages))
        record = iteration.run(planned_cut=upcoming[0].cut)
        history.append(record)
        emit(IterationDone(record))
        acceptance, unit_costs = measured(record, acceptance, unit_costs, parts.stages)
        planner.observe(record)
    journal.finish()
    emit(Finished(history=history, spent=ledger.spent))
    return history


def ends_after(record: IterationRecord, *, planner: AnyPlanner, ledger: Ledger, acceptance: float,
               unit_costs: UnitCosts, stages: Stages) -> bool:
    """Whether the run stops after ``record`` (``acceptance``, ``unit_costs``: as measured before it):
    what the loop's next refit will say, asked of a copy of the planner."""
    if record.ends_run:
        return True
    ahead = copy.deepcopy(planner)
    ahead.observe(record)
    rate, costs = measured(record, acceptance, unit_costs, stages)
    return not ahead.refit(next_iteration=record.iteration + 1, spent=ledger.spent, acceptance_rate=rate,
                           unit_costs=costs)


def declared_usage(parts: Components, costs: CostModel) -> dict[str, dict[str, float]]:
    """Stage -> quantity -> usage bound per draw that the components report, for ``check_priced``.

    Training usage depends on the rows trained on, so its quantities are checked at each charge.
    """
    stages = parts.stages
    declared = by_stage(parts.generator.max_usage_per_draw(), stages.generate)
    declared.setdefault(stages.verify, {}).update(parts.verify_usage_per_candidate)
    declared.setdefault(stages.score, {}).update(parts.prompt_policy.usage_per_prompt())
    declared[stages.train] = dict(costs.prices.get(stages.train, {}))
    if isinstance(parts.training_set, PricedLabels):  # a mix: its labels are charged to ``label``
        declared.setdefault(stages.label, {}).update(parts.training_set.usage_per_label())
    if parts.diagnose is not None:
        declared["diagnose"] = {"samples": 1.0}
    return declared


def measured(record: IterationRecord, acceptance: float, unit_costs: UnitCosts,
             stages: Stages) -> tuple[float, UnitCosts]:
    """The acceptance rate and unit costs the planner re-fits with after ``record``."""
    if record.n_generated == 0 or record.n_selected == 0:
        return acceptance, unit_costs
    per_draw = sum(cost for stage, cost in record.cost.items() if stage != stages.train) / record.n_generated
    per_selected = record.cost.get(stages.train, 0.0) / record.n_selected
    if per_draw + per_selected > 0:
        unit_costs = UnitCosts(per_draw=per_draw, per_selected=per_selected)
    return record.n_accepted / record.n_generated, unit_costs
