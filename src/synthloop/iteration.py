"""One iteration of the loop: parts of prompts -> candidates -> scores -> kept rows, then training.

An :class:`Iteration` is filled part by part until n_t are kept (streaming), or until N_t =
ceil(oversample * n_t) are drawn and the selector has seen them all (batch). Each part is committed
by the journal as soon as it is verified; a resumed iteration reads its committed parts back and
continues at the next one. The budget rule is in ``loop.py``'s docstring.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from synthloop.budget import TOLERANCE, Ledger, by_stage
from synthloop.events import Event, PartDone
from synthloop.protocols import Batch, TrainingSet
from synthloop.records import Candidates, IterationRecord, Observations, Prompts, Verdict
from synthloop.runs import Journal, Part, without_usage

if TYPE_CHECKING:
    from synthloop.loop import Components, LoopSettings

PROMPTS, GENERATE, SELECT, UPDATE, EVALUATE, TRAINING_SET, DIAGNOSE = range(7)


def rng_for(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


@dataclass
class Kept:
    """Rows kept from one part: their indices within the part, and the batch they came from."""

    part: int
    index: npt.NDArray[np.int64]
    batch: Batch


@dataclass
class Iteration:
    t: int
    target: int
    parts: Components
    ledger: Ledger
    settings: LoopSettings
    seed: int
    journal: Journal
    streaming: bool
    acceptance: float
    emit: Callable[[Event], None]
    final: Callable[[IterationRecord], bool]  # whether the run stops after this record (its model is the last)
    generated: int = 0
    n_parts: int = 0
    kept: list[Kept] = field(default_factory=list)
    pending: list[tuple[int, Batch]] = field(default_factory=list)  # batch: every part's candidates
    observed: list[Observations] = field(default_factory=list)
    train_committed: float = 0.0  # training cost reserved: kept rows and the policy's added rows
    reserved: float = 0.0  # of which the training-set policy's added rows
    acceptable: int = 0  # draws the streaming selector accepts, counted past the target
    verdicts: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(3, dtype=np.int64))

    @property
    def n_kept(self) -> int:
        return sum(len(k.index) for k in self.kept)

    def rng(self, stage: int, part: int | None = None) -> np.random.Generator:
        key = (0, self.t, stage) if part is None else (0, self.t, stage, part)
        return rng_for(self.seed, *key)

    def run(self, *, planned_cut: bool) -> IterationRecord:
        """Fill, select, train, evaluate and commit; ``planned_cut``: the plan shrank n_t to fit."""
        started = self.ledger.spent
        model = self.parts.learner.model
        refused = not self._reserve_training_set()
        for part in self.journal.resumed_parts(self.t, self.target):  # committed: read back, not redrawn
            self.ledger.restore(part.ledger_rows)
            self._apply(part, self._choose(part.part, part.size, model).prompts)
        while not refused and self._wants_more():
            size = self._affordable(self._needed())
            if size < 1:
                refused = True
                break
            self._generate_part(size, model)
        if not self.streaming:
            self._select_all()
        # streaming stops short only when the budget or a near-zero acceptance stops it: the run
        # ends; a batch selector may keep fewer than n_t of N_t on its own, and the run goes on
        exhausted = refused or (self.streaming and self.n_kept < self.target)
        self.parts.prompt_policy.observe(Observations.concat(self.observed))
        return self._finish(cut=planned_cut or exhausted, exhausted=exhausted, started=started)

    # -- sizing ------------------------------------------------------------------------------------

    def _reserve_training_set(self) -> bool:
        """Reserve the training cost of the rows the training-set policy adds; False if it cannot."""
        added = self.parts.training_set.reserve(self.target, rng=self.rng(TRAINING_SET))
        if added is None or len(added) == 0:
            return True
        self.reserved = self.train_committed = float(self._train_cost(added).sum() + self._label_cost(added).sum())
        return self.train_committed <= self.ledger.remaining * (1 + TOLERANCE)

    def _wants_more(self) -> bool:
        if self.generated >= self.settings.max_draws_per_selected * self.target:
            return False
        if self.streaming:
            return self.n_kept < self.target
        return self.generated < math.ceil(self.settings.oversample * self.target)

    def _needed(self) -> int:
        if not self.streaming:
            return math.ceil(self.settings.oversample * self.target) - self.generated
        need = math.ceil((self.target - self.n_kept) / max(self.acceptance, 1e-6))
        if self.generated == 0:  # the model has changed since acceptance was measured: probe first
            need = min(need, max(self.target, 64))
        return need

    def _affordable(self, need: int) -> int:
        """The largest part (at most ``need`` and a chunk) whose worst case fits the budget."""
        free = self.ledger.remaining - self.train_committed
        per_draw = self._draw_cost_bound() + self.acceptance * self._mean_train_cost()
        affordable = math.floor(free / per_draw) if per_draw > 0 else self.settings.chunk_size
        return min(need, self.settings.chunk_size, affordable)

    def _draw_cost_bound(self) -> float:
        """Worst-case cost of one draw (prompt scoring, generation, verification), plus the time
        one draw has taken so far where a stage is priced in seconds."""
        costs, stages = self.ledger.costs, self.parts.stages
        bound = sum(costs.per_unit(stage, usage)
                    for stage, usage in by_stage(self.parts.generator.max_usage_per_draw(), stages.generate).items())
        bound += costs.per_unit(stages.verify, self.parts.verify_usage_per_candidate)
        bound += costs.per_unit(stages.score, self.parts.prompt_policy.usage_per_prompt())
        return bound + sum(self.ledger.seconds_cost_per_item(s) for s in (stages.generate, stages.verify))

    def _mean_train_cost(self) -> float:
        stages = self.parts.stages
        measured_time = self.ledger.seconds_cost_per_item(stages.train)
        if not self.kept:
            return self.ledger.costs.per_unit(stages.train, self.parts.generator.max_usage_per_draw()) + measured_time
        return max(self.train_committed - self.reserved, 0.0) / max(self.n_kept, 1) + measured_time

    def _train_cost(self, rows: Candidates) -> npt.NDArray[np.float64]:
        usage = self.parts.learner.training_usage(rows)
        return self.ledger.costs.per_item(self.parts.stages.train, usage, len(rows))

    def _label_cost(self, rows: Candidates) -> npt.NDArray[np.float64]:
        """Each reserved row's labeling cost: an outside row's (``extra["outside"]``) own usage, the
        labeler's, priced as ``label``; 0 for any other row."""
        outside = np.asarray(rows.extra.get("outside", np.zeros(len(rows), dtype=bool)), dtype=bool)
        cost = np.zeros(len(rows), dtype=np.float64)
        if outside.any():
            usage = {k: np.asarray(v, dtype=np.float64)[outside] for k, v in rows.usage.items()}
            cost[outside] = self.ledger.costs.per_item(self.parts.stages.label, usage, int(outside.sum()))
        return cost

    # -- parts -------------------------------------------------------------------------------------

    def _choose(self, part: int, size: int, model: Any) -> Any:
        return self.parts.prompt_policy.choose(self.parts.task, size, model=model, rng=self.rng(PROMPTS, part))

    def _generate_part(self, size: int, model: Any) -> None:
        p, stages, first_row = self.n_parts, self.parts.stages, len(self.ledger.rows)
        clock = time.perf_counter()
        chosen = self._choose(p, size, model)
        if chosen.usage or self.parts.prompt_policy.usage_per_prompt():
            self._charge(stages.score, chosen.usage, len(chosen.prompts), time.perf_counter() - clock)
        clock = time.perf_counter()
        candidates = self.parts.generator.generate(model, chosen.prompts, rng=self.rng(GENERATE, p))
        self.journal.point("generate", f"{self.t}/{p}")
        generated = by_stage(_totals(candidates.usage), stages.generate)
        checked_inside = generated.pop(stages.verify, {})  # charged with the verifier's own usage below
        for stage, usage in generated.items():
            self._charge(stage, usage, len(candidates), time.perf_counter() - clock if stage == stages.generate else 0.0)
        clock = time.perf_counter()
        scores = self.parts.task.verifier.verify(candidates, chosen.prompts)
        self.journal.point("verify", f"{self.t}/{p}")
        verified = _totals(scores.usage) or {"samples": float(len(scores))}
        for quantity, amount in checked_inside.items():
            verified[quantity] = verified.get(quantity, 0.0) + amount
        self._charge(stages.verify, verified, len(scores), time.perf_counter() - clock)
        batch = Batch(candidates, chosen.prompts, without_usage(scores))
        part = Part(part=p, size=len(candidates), ledger_rows=self.ledger.rows[first_row:],
                    verdicts=np.bincount(scores.verdict, minlength=3)[:3].astype(np.int64),
                    train_committed=self.train_committed)
        part.observed = Observations.of(chosen.prompts.index, scores.verdict)
        if self.streaming:
            self._keep_streamed(part, batch)
        else:
            part.pending = (candidates, batch.scores)
        self.journal.commit_part(self.t, self.target, part, candidates, scores)
        self._apply(part, chosen.prompts)
        self.emit(PartDone(iteration=self.t, kept=self.n_kept, target=self.target, generated=self.generated,
                           spent=self.ledger.spent, total=self.ledger.total))

    def _keep_streamed(self, part: Part, batch: Batch) -> None:
        # a streaming selector decides row by row in draw order, so asking for every acceptable row
        # and keeping the first n_t - kept gives the same rows as asking for n_t - kept
        accepted = self.parts.selector.select(batch, n_wanted=len(batch), rng=self.rng(SELECT, part.part))
        part.acceptable = len(accepted)
        chosen, kept = self._admit(accepted[:max(self.target - self.n_kept, 0)], batch)
        if len(chosen) > 0:
            part.kept = (chosen, kept.candidates, kept.scores)
        part.train_committed = self.train_committed

    def _apply(self, part: Part, prompts: Prompts) -> None:
        """Add a generated (or committed and read back) part to what the iteration holds."""
        self.generated += part.size
        self.n_parts += 1
        self.verdicts += part.verdicts
        self.acceptable += part.acceptable
        self.train_committed = part.train_committed
        if part.observed is not None:
            self.observed.append(part.observed)
        if part.kept is not None:
            index, candidates, scores = part.kept
            self.kept.append(Kept(part.part, index, Batch(candidates, prompts.take(index), scores)))
        if part.pending is not None:
            candidates, scores = part.pending
            self.pending.append((part.part, Batch(candidates, prompts, scores)))
        self.acceptance = self._acceptance()

    def _acceptance(self) -> float:
        """Streaming: accepted / drawn, counting the draws the selector accepts beyond n_t, so a part
        that overshoots its target does not bias the estimate down. Batch: unchanged."""
        if not self.streaming or self.generated == 0:
            return self.acceptance
        return max(self.acceptable, 1) / self.generated

    def _admit(self, chosen: npt.NDArray[np.int64], batch: Batch) -> tuple[npt.NDArray[np.int64], Batch]:
        """The prefix of ``chosen`` whose training cost still fits the budget, and its rows; reserves it."""
        picked = batch.take(chosen)
        if len(chosen) == 0:
            return chosen, picked
        train_cost = self._train_cost(picked.candidates)
        room = (self.ledger.remaining - self.train_committed) * (1 + TOLERANCE)
        fits = int(np.searchsorted(np.cumsum(train_cost), room, side="right"))
        if train_cost.sum() <= room:
            fits = len(chosen)
        self.train_committed += float(train_cost[:fits].sum())
        if fits < len(chosen):
            return chosen[:fits], picked.take(np.arange(fits))
        return chosen, picked

    def _select_all(self) -> None:
        if not self.pending:
            return
        everything = Batch.concat([b for _, b in self.pending])
        chosen = self.parts.selector.select(everything, n_wanted=self.target, rng=self.rng(SELECT, 0))
        offsets = np.cumsum([0] + [len(b) for _, b in self.pending])
        for (part, batch), lo, hi in zip(self.pending, offsets[:-1], offsets[1:], strict=True):
            admitted, rows = self._admit(chosen[(chosen >= lo) & (chosen < hi)] - lo, batch)
            if len(admitted) > 0:
                self.kept.append(Kept(part, admitted, rows))

    # -- training, evaluation, commit --------------------------------------------------------------

    def _finish(self, *, cut: bool, exhausted: bool, started: float) -> IterationRecord:
        training = self._train()
        diagnostics = self._diagnose()
        _, (n_trained, _, _) = training
        # the learner's statistics are its last update's: none this iteration, none to report
        statistics = getattr(self.parts.learner, "update_statistics", None) if n_trained else None
        record = replace(self._record(cut=cut, exhausted=exhausted, started=started, training=training,
                                      evaluation={}), diagnostics=diagnostics[0],
                         diagnostic_labels=diagnostics[1], update_statistics=statistics() if statistics else {})
        # every eval_every iterations, on a cut one, and on the run's last whatever ended it: the final
        # model is always measured (a run's last iteration can spend what the plan kept for another)
        if (self.t + 1) % self.settings.eval_every == 0 or cut or self.final(record):
            record = replace(record, eval=self.parts.task.evaluate(self.parts.learner.model, rng=self.rng(EVALUATE)))
            self.journal.point("evaluate", str(self.t))
        kept = [(k.part, k.index, k.batch.candidates, k.batch.scores) for k in self.kept]
        self.journal.commit_iteration(self.t, kept, self.parts.stateful(), self.ledger, record.to_json())
        return record

    def _train(self) -> tuple[dict[str, float], tuple[int, int, int]]:
        if not self.kept:
            return {}, (0, 0, 0)
        selected = Candidates.concat([k.batch.candidates for k in self.kept])
        prompts = Prompts.concat([k.batch.prompts for k in self.kept])
        clock = time.perf_counter()  # a mix's labels are made here, after the round was observed
        training_set = self._affordable_training(
            self.parts.training_set.build(selected, prompts, rng=self.rng(TRAINING_SET)))
        if len(training_set.candidates) == 0:  # what is left of the budget pays for no row: no update
            return {}, (0, 0, 0)
        if training_set.n_outside > 0:  # charged with the iteration's commit, so never twice
            self._charge(self.parts.stages.label, _totals(training_set.label_usage), training_set.n_outside,
                         time.perf_counter() - clock)
            self.journal.point("label", str(self.t))
        clock = time.perf_counter()
        metrics = self.parts.learner.update(training_set.candidates, training_set.prompts, rng=self.rng(UPDATE))
        self.journal.point("train", str(self.t))
        usage = _totals(self.parts.learner.training_usage(training_set.candidates))
        self._charge(self.parts.stages.train, usage, len(training_set.candidates), time.perf_counter() - clock)
        return metrics, (len(training_set.candidates), training_set.n_carried, training_set.n_outside)

    def _diagnose(self) -> tuple[dict[str, float], dict[str, str]]:
        """The optional diagnose stage on the selection, after training (it never takes budget
        reserved for training); skipped where its priced cost no longer fits. Charged as ``diagnose``."""
        diagnose = self.parts.diagnose
        if diagnose is None or not self.kept:
            return {}, {}
        n = min(self.n_kept, diagnose.max_samples) + diagnose.reference_samples
        if self.ledger.costs.per_unit("diagnose", {"samples": float(n)}) > self.ledger.remaining:
            return {}, {}
        clock = time.perf_counter()
        selected = Candidates.concat([k.batch.candidates for k in self.kept])
        values, labels = diagnose(self.parts.task, selected, Prompts.concat([k.batch.prompts for k in self.kept]),
                                  rng=self.rng(DIAGNOSE))
        self._charge("diagnose", {"samples": float(n)}, n, time.perf_counter() - clock)
        return values, labels

    def _affordable_training(self, training_set: TrainingSet) -> TrainingSet:
        """The training set priced exactly (every row's training, an outside row's label too), its
        last rows dropped if their cost no longer fits: where measured seconds of this iteration's
        parts ate into the reservation, or where labels placed after the round was observed (hardest
        first) cost more than the ones reserved before it."""
        cost = self._train_cost(training_set.candidates)
        n_outside = training_set.n_outside
        if n_outside > 0:
            cost[len(cost) - n_outside:] += self.ledger.costs.per_item(
                self.parts.stages.label, training_set.label_usage, n_outside)
        room = self.ledger.remaining * (1 + TOLERANCE)
        if cost.sum() <= room:
            return training_set
        fits = np.arange(int(np.searchsorted(np.cumsum(cost), room, side="right")))
        # rows are carried ones first (accumulate), then the selection, then outside ones (mix)
        n_carried = min(training_set.n_carried, len(fits))
        n_selected = min(training_set.n_selected, len(fits) - n_carried)
        kept_outside = len(fits) - n_carried - n_selected
        return replace(training_set, candidates=training_set.candidates.take(fits),
                       prompts=training_set.prompts.take(fits), n_selected=n_selected, n_carried=n_carried,
                       n_outside=kept_outside,
                       label_usage={k: np.asarray(v)[:kept_outside] for k, v in training_set.label_usage.items()})

    def _record(self, *, cut: bool, exhausted: bool, started: float,
                training: tuple[dict[str, float], tuple[int, int, int]],
                evaluation: Mapping[str, float]) -> IterationRecord:
        stages = self.parts.stages
        cost = dict.fromkeys((stages.generate, stages.verify, stages.train, *self.ledger.costs.prices), 0.0)
        seconds = dict(cost)
        for row in self.ledger.rows_of(self.t):
            cost[row.stage] = cost.get(row.stage, 0.0) + row.cost
            seconds[row.stage] = seconds.get(row.stage, 0.0) + row.seconds
        ids = hashlib.sha256()
        for k in self.kept:  # the selected set as (part, index) ids, in order
            ids.update(np.int64(k.part).tobytes())
            ids.update(k.index.astype(np.int64).tobytes())
        accepted = max(self.acceptable, self.n_kept)
        train, (n_trained, n_carried, n_outside) = training
        return IterationRecord(
            iteration=self.t, n_target=self.target, n_selected=self.n_kept, n_generated=self.generated,
            n_parts=self.n_parts, n_accepted=accepted,
            acceptance_rate=accepted / self.generated if self.generated else 0.0,
            verdicts={v.name.lower(): int(self.verdicts[v]) for v in Verdict}, cost=cost, seconds=seconds,
            iteration_cost=self.ledger.spent - started, cumulative_cost=self.ledger.spent,
            budget=self.ledger.total, cut=cut, exhausted=exhausted, selected_sha256=ids.hexdigest(),
            train=dict(train), eval=dict(evaluation), n_trained=n_trained, n_carried=n_carried,
            n_outside=n_outside)

    def _charge(self, stage: str, quantities: Mapping[str, float], items: int, seconds: float) -> None:
        self.ledger.charge(self.t, stage, items=items, quantities=quantities, seconds=seconds)


def _totals(usage: Mapping[str, np.ndarray]) -> dict[str, float]:
    return {k: float(np.sum(v)) for k, v in usage.items()}
