"""Training-set policies: what the learner trains on in an iteration.

- :class:`ThisIteration`: the iteration's selection only (Spend Wisely, STaR). Stateless.
- :class:`Accumulate`: everything selected so far (Active Synthetic Data Generation trains on the
  growing set of teacher examples). Its pool is state, checkpointed with every iteration.
- :class:`Mix`: the selection plus rows from an outside labeled source, so that a share ``alpha``
  of the training set is outside data (Escaping Collapse: a small outside signal prevents collapse).
  n_outside = round(alpha / (1 - alpha) * n_selected).

Whether the learner continues from its current model or restarts from the base model (STaR) is
the learner's own option (``reset: restart`` in the math family's learner config), since only it knows its base model.

The loop reserves, before generating, the training cost of the rows a policy adds beyond the
selection (``reserve``), so a run never spends past its budget on training it cannot pay for.
A mix's outside rows are labels: ``reserve`` returns them marked ``extra["outside"]`` with the
labeler's usage of each (``Candidates.usage``), and ``build`` hands the same usage of the rows it
trains on to the loop (``TrainingSet.label_usage``), which charges it to the ``label`` stage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from synthloop.protocols import TrainingSet
from synthloop.records import Candidates, Prompts, Scores
from synthloop.store import candidates_table, records_from_table
from synthloop.strict import Strict

POOL, POOL_PROMPTS = "pool.parquet", "pool-prompts.parquet"


@runtime_checkable
class LabeledSource(Protocol):
    """Outside labeled examples (gold solutions, clean data): the outside signal of a mix.

    ``sample`` is prefix-stable: the first k rows of ``sample(n, rng)`` are ``sample(k, rng)`` for
    the same rng state, so the loop can reserve for n_t and train on fewer.
    """

    def sample(self, n: int, *, rng: np.random.Generator) -> tuple[Candidates, Prompts]: ...


@runtime_checkable
class PricedLabels(Protocol):
    """A labeled source that says which quantities its labels report (``label:`` prices may name
    them); a source that does not reports one sample per label."""

    def usage_per_label(self) -> Mapping[str, float]: ...


class ThisIteration:
    """Train on this iteration's selection only."""

    def reserve(self, n_selected: int, *, rng: np.random.Generator) -> Candidates | None:
        return None

    def build(self, selected: Candidates, prompts: Prompts, *, rng: np.random.Generator) -> TrainingSet:
        return TrainingSet(selected, prompts, n_selected=len(selected), n_carried=0, n_outside=0)

    def save(self, directory: Path) -> None:
        return None

    def load(self, directory: Path) -> None:
        return None


class Accumulate:
    """Train on everything selected so far, this iteration's selection last."""

    def __init__(self) -> None:
        self.pool_: tuple[Candidates, Prompts] | None = None

    def reserve(self, n_selected: int, *, rng: np.random.Generator) -> Candidates | None:
        return None if self.pool_ is None else self.pool_[0]

    def build(self, selected: Candidates, prompts: Prompts, *, rng: np.random.Generator) -> TrainingSet:
        carried = 0 if self.pool_ is None else len(self.pool_[0])
        if len(selected) > 0:
            self.pool_ = (selected, prompts) if self.pool_ is None else (
                Candidates.concat([self.pool_[0], selected]), Prompts.concat([self.pool_[1], prompts]))
        if self.pool_ is None:
            return TrainingSet(selected, prompts, n_selected=0, n_carried=0, n_outside=0)
        return TrainingSet(*self.pool_, n_selected=len(selected), n_carried=carried, n_outside=0)

    def save(self, directory: Path) -> None:
        if self.pool_ is None:
            return
        candidates, prompts = self.pool_
        _write(directory / POOL, candidates)
        _write(directory / POOL_PROMPTS, Candidates(samples=prompts.items, prompt_index=prompts.index, usage={}))

    def load(self, directory: Path) -> None:
        if not (directory / POOL).exists():
            self.pool_ = None
            return
        candidates = _read(directory / POOL)
        as_prompts = _read(directory / POOL_PROMPTS)
        self.pool_ = (candidates, Prompts(index=as_prompts.prompt_index, items=dict(as_prompts.samples)))


class Mix:
    """This iteration's selection plus outside labeled rows at share ``alpha`` of the training set."""

    def __init__(self, source: LabeledSource, *, alpha: float) -> None:
        if not 0 <= alpha < 1:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        self.source = source
        self.alpha = alpha

    def n_outside(self, n_selected: int) -> int:
        return round(self.alpha / (1 - self.alpha) * n_selected)

    def usage_per_label(self) -> Mapping[str, float]:
        """What one label reports (``label`` stage quantities): the source's, or one sample."""
        return self.source.usage_per_label() if isinstance(self.source, PricedLabels) else {"samples": 1.0}

    def reserve(self, n_selected: int, *, rng: np.random.Generator) -> Candidates | None:
        """The labels for ``n_selected`` selected rows as the allocation would place them now, marked
        outside, with the labeler's usage of each. A hardest-first allocation places the labels of
        ``build`` after the round is observed, so those may differ: the loop prices them again."""
        n = self.n_outside(n_selected)
        if n == 0:
            return None
        outside = self.source.sample(n, rng=rng)[0]
        return outside.with_extra(outside=np.ones(n, dtype=bool))

    def build(self, selected: Candidates, prompts: Prompts, *, rng: np.random.Generator) -> TrainingSet:
        n = self.n_outside(len(selected))
        if n == 0:
            return TrainingSet(selected, prompts, n_selected=len(selected), n_carried=0, n_outside=0)
        outside, outside_prompts = self.source.sample(n, rng=rng)
        usage = {k: np.asarray(v, dtype=np.float64) for k, v in outside.usage.items()}
        if len(selected) == 0:
            return TrainingSet(outside.with_extra(outside=np.ones(n, dtype=bool)), outside_prompts,
                               n_selected=0, n_carried=0, n_outside=n, label_usage=usage)
        return TrainingSet(_concat(selected, outside), Prompts.concat([prompts, outside_prompts]),
                           n_selected=len(selected), n_carried=0, n_outside=n, label_usage=usage)

    def save(self, directory: Path) -> None:
        return None

    def load(self, directory: Path) -> None:
        return None


def _concat(selected: Candidates, outside: Candidates) -> Candidates:
    """Selected rows then outside rows; columns one side lacks are dropped, so a learner sees only
    what both have (the outside rows are marked in ``extra["outside"]``)."""
    samples = {k: v for k, v in selected.samples.items() if k in outside.samples}
    usage = {k: v for k, v in selected.usage.items() if k in outside.usage}
    left = Candidates(samples, selected.prompt_index, usage, {"outside": np.zeros(len(selected), dtype=bool)})
    right = Candidates({k: outside.samples[k] for k in samples}, outside.prompt_index,
                       {k: outside.usage[k] for k in usage}, {"outside": np.ones(len(outside), dtype=bool)})
    return Candidates.concat([left, right])


def _write(path: Path, candidates: Candidates) -> None:
    n = len(candidates)
    scores = Scores(reward=np.zeros(n), verdict=np.zeros(n, dtype=np.int8))
    table = candidates_table(iteration=0, part=0, candidates=candidates, scores=scores)
    pq.write_table(table, path, compression="zstd")


def _read(path: Path) -> Candidates:
    table: pa.Table = pq.read_table(path)
    return records_from_table(table)[0]


# -- config -------------------------------------------------------------------------------------


class ThisIterationConfig(Strict):
    """``training_set: {kind: this_iteration}``: the iteration's selection (the default)."""

    kind: Literal["this_iteration"]


class AccumulateConfig(Strict):
    """``training_set: {kind: accumulate}``: everything selected so far."""

    kind: Literal["accumulate"]


class MixConfig(Strict):
    """``training_set: {kind: mix, alpha: 0.2}``: a share alpha of outside labeled rows."""

    kind: Literal["mix"]
    alpha: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]


TrainingSetConfig = Annotated[ThisIterationConfig | AccumulateConfig | MixConfig, Field(discriminator="kind")]


def make_training_set(config: ThisIterationConfig | AccumulateConfig | MixConfig,
                      source: LabeledSource | None = None) -> ThisIteration | Accumulate | Mix:
    if isinstance(config, ThisIterationConfig):
        return ThisIteration()
    if isinstance(config, AccumulateConfig):
        return Accumulate()
    if source is None:
        raise ValueError("training_set.kind: 'mix' needs an outside labeled source, which this task has not")
    if math.isclose(config.alpha, 0.0):
        return ThisIteration()
    return Mix(source, alpha=config.alpha)
