"""The contracts between the loop and its plug-ins.

Small structural protocols, duck-typed: a plug-in implements the methods, it does not inherit from
anything. ``synthloop.testing`` holds one conformance check per protocol; every plug-in's tests call
it (the scikit-learn ``check_estimator`` idea).

The model flows explicitly: the :class:`Learner` owns it and exposes it as ``learner.model``; the loop
passes that to :meth:`Generator.generate` and :meth:`Task.evaluate`. A teacher generator (Active
Synthetic Data Generation) simply ignores the model it is given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from synthloop.records import Candidates, Observations, Prompts, Scores, Usage


@runtime_checkable
class Generator(Protocol):
    """Draws candidates from a model (the one being improved, or a fixed teacher).

    The loop passes the student (``learner.model``); a teacher, labeler or judge ignores it. The
    stage its usage is charged to is named where the components are wired (``Components.stages``):
    ``generate`` for the student, ``label`` for a labeler, and so on.
    """

    def max_usage_per_draw(self) -> Mapping[str, float]:
        """An upper bound on what one draw can cost (``{"samples": 1, "tokens": 512}``).

        The loop uses it to size generation chunks so that a run never spends past its budget.
        """
        ...

    def generate(self, model: Any, prompts: Prompts, *, rng: np.random.Generator) -> Candidates:
        """One candidate per prompt, with its measured usage. Same ``rng`` state, same output."""
        ...


@runtime_checkable
class Verifier(Protocol):
    """Scores candidates: a reward in [0, 1] and a verdict (pass, fail or error) for each."""

    def verify(self, candidates: Candidates, prompts: Prompts) -> Scores:
        """``prompts`` are the prompts the candidates answered, row for row.

        Must not raise on bad candidates: an unparseable output, a timeout or a crash of the checker
        is an ``ERROR`` verdict with a NaN reward.
        """
        ...


@dataclass(frozen=True)
class Batch:
    """What a selector sees: scored candidates with their prompts, row for row.

    ``candidates.extra`` carries whatever per-candidate columns earlier stages added (student loss,
    uncertainty, embeddings, labeler provenance), so a selector can use them by name.
    """

    candidates: Candidates
    prompts: Prompts
    scores: Scores

    def __post_init__(self) -> None:
        if not len(self.candidates) == len(self.prompts) == len(self.scores):
            raise ValueError(f"a batch needs one prompt and one score per candidate, got "
                             f"{len(self.candidates)} / {len(self.prompts)} / {len(self.scores)}")

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, indices: npt.NDArray[np.int64]) -> Batch:
        return Batch(self.candidates.take(indices), self.prompts.take(indices), self.scores.take(indices))

    @staticmethod
    def concat(parts: Sequence[Batch]) -> Batch:
        return Batch(Candidates.concat([p.candidates for p in parts]), Prompts.concat([p.prompts for p in parts]),
                     Scores.concat([p.scores for p in parts]))


@runtime_checkable
class Selector(Protocol):
    """Chooses which scored candidates to keep.

    Whether a selector streams is a property of its kind (a class attribute, not an option): a
    streaming selector decides row by row, its decision on a row never depending on later rows, so
    the loop can apply it to each generated chunk (Algorithm 1's acceptance) or, just as well, to
    all N_t candidates at once; a batch selector (top-k) must see all N_t at once. A selector with
    state across iterations also implements :class:`~synthloop.state.Stateful`.
    """

    streaming: ClassVar[bool]

    def select(self, batch: Batch, *, n_wanted: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
        """Indices (ascending, into ``batch``) of at most ``n_wanted`` kept candidates."""
        ...


@runtime_checkable
class Learner(Protocol):
    """Updates the model on kept data and owns the model's state for checkpoints."""

    @property
    def model(self) -> Any:
        """The current model, to sample from and to evaluate. Not modified until ``update``."""
        ...

    def training_usage(self, candidates: Candidates) -> Usage:
        """What training on each candidate would cost (``{"samples": 1, "tokens": ...}`` per row)."""
        ...

    def update(
        self, selected: Candidates, prompts: Prompts, *, rng: np.random.Generator
    ) -> dict[str, float]:
        """Train on ``selected`` (answering ``prompts``, row for row); return training metrics."""
        ...

    def save(self, directory: Path) -> None:
        """Write the full state (model, optimizer, RNG, data position) into ``directory``."""
        ...

    def load(self, directory: Path) -> None:
        """Restore exactly the state ``save`` wrote: the next update gives the same result."""
        ...


@runtime_checkable
class Task(Protocol):
    """A prompt source with train and held-out splits, its verifier and its evaluation metric."""

    @property
    def name(self) -> str: ...

    @property
    def verifier(self) -> Verifier: ...

    @property
    def primary_metric(self) -> str:
        """The key of :meth:`evaluate`'s result that compares runs (for example ``"gap"``)."""
        ...

    @property
    def higher_is_better(self) -> bool: ...

    def sample_prompts(self, n: int, *, rng: np.random.Generator) -> Prompts:
        """``n`` prompts from the training split."""
        ...

    def evaluate(self, model: Any, *, rng: np.random.Generator) -> dict[str, float]:
        """Metrics of ``model`` on held-out data; must contain ``primary_metric``."""
        ...


@runtime_checkable
class PromptPool(Protocol):
    """A task whose training prompts form a finite, indexed pool (problems, seed examples, images).

    Prompt policies that weight or score prompts need it; uniform sampling does not.
    """

    @property
    def pool_size(self) -> int: ...

    def prompts_at(self, indices: npt.NDArray[np.int64]) -> Prompts:
        """The pool's prompts at ``indices`` (repeats allowed), with ``index`` set to them."""
        ...


@dataclass(frozen=True)
class Chosen:
    """The prompts a policy chose for one part, and what choosing them cost (stage ``score``)."""

    prompts: Prompts
    usage: Mapping[str, float]  # summed over the part: {"samples": 64, "tokens": 8192}


@runtime_checkable
class PromptPolicy(Protocol):
    """Chooses which prompts an iteration spends generation on, from the task's pool.

    ``choose`` must be deterministic for its ``rng`` and the policy's state; ``observe`` receives the
    iteration's verdict counts per prompt once the iteration's generation is over, and may update
    the state, which the journal then checkpoints (:class:`~synthloop.state.Stateful`). Scoring the
    pool with the student is compute: its usage bound per chosen prompt is ``usage_per_prompt`` and
    the loop charges it to the ``score`` stage.
    """

    def usage_per_prompt(self) -> Mapping[str, float]:
        """Upper bound on the ``score`` stage's usage per chosen prompt (empty: choosing is free)."""
        ...

    def choose(self, task: Task, n: int, *, model: Any, rng: np.random.Generator) -> Chosen: ...

    def observe(self, observations: Observations) -> None: ...

    def save(self, directory: Path) -> None: ...

    def load(self, directory: Path) -> None: ...


@dataclass(frozen=True)
class TrainingSet:
    """What the learner trains on in one iteration, and where each row came from."""

    candidates: Candidates
    prompts: Prompts
    n_selected: int  # rows from this iteration's selection
    n_carried: int  # rows from earlier iterations (accumulate)
    n_outside: int  # rows from an outside labeled source (mix)
    label_usage: Usage = field(default_factory=dict)  # the labeler's usage of each outside row (the last
    #                                                    n_outside), charged to the ``label`` stage


@runtime_checkable
class TrainingSetPolicy(Protocol):
    """Builds the training set from this iteration's selection (and its own carried state)."""

    def reserve(self, n_selected: int, *, rng: np.random.Generator) -> Candidates | None:
        """The rows, beyond the selection, that training on ``n_selected`` selected rows would add
        at most (accumulated or outside rows): the loop reserves their training cost up front, and
        for outside rows (``extra["outside"]`` true) their labeling cost (their ``usage``, priced as
        ``label``). ``build`` is later called with an rng in the same state; its rows are priced
        again exactly before training, as their labels may differ (hardest-first allocation)."""
        ...

    def build(self, selected: Candidates, prompts: Prompts, *, rng: np.random.Generator) -> TrainingSet:
        """The training set for this iteration; may update the policy's state (its pool)."""
        ...

    def save(self, directory: Path) -> None: ...

    def load(self, directory: Path) -> None: ...
