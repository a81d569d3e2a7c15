"""The contracts between the loop and its plug-ins.

Small structural protocols, duck-typed: a plug-in implements the methods, it does not inherit from
anything. ``synthloop.testing`` holds one conformance check per protocol; every plug-in's tests call
it (the scikit-learn ``check_estimator`` idea).

The model flows explicitly: the :class:`Learner` owns it and exposes it as ``learner.model``; the loop
passes that to :meth:`Generator.generate` and :meth:`Task.evaluate`. A teacher generator (Active
Synthetic Data Generation) simply ignores the model it is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from synthloop.records import Candidates, Prompts, Scores, Usage


@runtime_checkable
class Generator(Protocol):
    """Draws candidates from a model (the one being improved, or a fixed teacher)."""

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


@runtime_checkable
class Selector(Protocol):
    """Chooses which scored candidates to keep."""

    @property
    def streaming(self) -> bool:
        """True if the selector decides row by row (Algorithm 1's acceptance), so the loop can apply
        it to each generated chunk; False if it must see all N_t candidates at once (top-k)."""
        ...

    def select(
        self, scores: Scores, *, n_wanted: int, rng: np.random.Generator
    ) -> npt.NDArray[np.int64]:
        """Indices (ascending, into ``scores``) of at most ``n_wanted`` kept candidates."""
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
