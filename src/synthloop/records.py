"""The records that flow through the loop: prompts, candidates, scores and usage.

Everything is columnar. A batch of 10^6 Gaussian draws is one NumPy array, a batch of language-model
completions is a list of strings; per-row Python objects would cost more than the math they carry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any

import numpy as np
import numpy.typing as npt

Column = Any  # an np.ndarray with one row per item, or a list with one entry per item
Usage = Mapping[str, npt.NDArray[np.float64]]  # quantity name -> amount per item (samples, tokens, ...)


class Verdict(IntEnum):
    """What a verifier concluded about one candidate.

    ``ERROR`` means the verifier could not decide (timeout, crash, unparseable answer). It is never
    folded into a reward of 0: its reward is NaN, it is counted on its own, and selectors reject it
    unless told otherwise.
    """

    PASS = 0
    FAIL = 1
    ERROR = 2


def column_length(column: Column) -> int:
    return int(column.shape[0]) if isinstance(column, np.ndarray) else len(column)


def take_column(column: Column, indices: npt.NDArray[np.int64]) -> Column:
    if isinstance(column, np.ndarray):
        return column[indices]
    return [column[i] for i in indices]


def concat_columns(columns: Sequence[Column]) -> Column:
    if all(isinstance(c, np.ndarray) for c in columns):
        return np.concatenate(columns, axis=0)
    return [item for c in columns for item in c]


def _check_lengths(n: int, columns: Mapping[str, Column], what: str) -> None:
    for name, column in columns.items():
        if column_length(column) != n:
            raise ValueError(f"{what} column {name!r} has {column_length(column)} rows, expected {n}")


@dataclass(frozen=True)
class Prompts:
    """A batch of prompts drawn from a task's training pool.

    ``index`` identifies each prompt in the pool (-1 for unconditional generation, as in the
    Gaussian task); ``items`` holds the prompt payload columns (text, clean image, gold answer...).
    """

    index: npt.NDArray[np.int64]
    items: Mapping[str, Column] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_lengths(len(self.index), self.items, "prompt")

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def unconditional(cls, n: int) -> Prompts:
        return cls(index=np.broadcast_to(np.int64(-1), (n,)))  # a read-only view: no allocation

    def take(self, indices: npt.NDArray[np.int64]) -> Prompts:
        return Prompts(
            index=self.index[indices],
            items={k: take_column(v, indices) for k, v in self.items.items()},
        )

    @staticmethod
    def concat(parts: Sequence[Prompts]) -> Prompts:
        if not parts:
            raise ValueError("cannot concatenate zero prompt batches")
        return Prompts(
            index=np.concatenate([p.index for p in parts]),
            items={k: concat_columns([p.items[k] for p in parts]) for k in parts[0].items},
        )


@dataclass(frozen=True)
class Candidates:
    """Generated candidates, one row each.

    ``samples`` are the payload columns (for example ``{"x": array[n, d]}`` or
    ``{"prompt": [...], "completion": [...]}``); ``prompt_index`` says which prompt each came from;
    ``usage`` is what generating each one cost (``{"samples": 1, "tokens": ...}`` per row);
    ``extra`` holds per-candidate columns that stages add on the way (student loss, uncertainty,
    embeddings, labeler provenance): selectors, policies and the store carry them by name, with no
    schema edit.
    """

    samples: Mapping[str, Column]
    prompt_index: npt.NDArray[np.int64]
    usage: Usage
    extra: Mapping[str, Column] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.prompt_index)
        _check_lengths(n, self.samples, "sample")
        _check_lengths(n, self.usage, "usage")
        _check_lengths(n, self.extra, "extra")

    def with_extra(self, **columns: Column) -> Candidates:
        """The same candidates with more (or replaced) extra columns."""
        return replace(self, extra={**self.extra, **columns})

    def __len__(self) -> int:
        return len(self.prompt_index)

    def take(self, indices: npt.NDArray[np.int64]) -> Candidates:
        return Candidates(
            samples={k: take_column(v, indices) for k, v in self.samples.items()},
            prompt_index=self.prompt_index[indices],
            usage={k: v[indices] for k, v in self.usage.items()},
            extra={k: take_column(v, indices) for k, v in self.extra.items()},
        )

    @staticmethod
    def concat(parts: Sequence[Candidates]) -> Candidates:
        if not parts:
            raise ValueError("cannot concatenate zero candidate batches")
        return Candidates(
            samples={k: concat_columns([p.samples[k] for p in parts]) for k in parts[0].samples},
            prompt_index=np.concatenate([p.prompt_index for p in parts]),
            usage={k: np.concatenate([p.usage[k] for p in parts]) for k in parts[0].usage},
            extra={k: concat_columns([p.extra[k] for p in parts]) for k in parts[0].extra},
        )


@dataclass(frozen=True)
class Scores:
    """A verifier's judgement of a batch: reward in [0, 1] (NaN where the verdict is ERROR)."""

    reward: npt.NDArray[np.float64]
    verdict: npt.NDArray[np.int8]
    usage: Usage = field(default_factory=dict)
    detail: Sequence[str] | None = None  # optional per-row explanation (why an ERROR happened)

    def __post_init__(self) -> None:
        if self.reward.shape != self.verdict.shape:
            raise ValueError(
                f"reward has shape {self.reward.shape} but verdict has shape {self.verdict.shape}"
            )
        _check_lengths(len(self.reward), self.usage, "verification usage")
        if self.detail is not None and len(self.detail) != len(self.reward):
            raise ValueError("detail must have one entry per scored candidate")

    def __len__(self) -> int:
        return len(self.reward)

    @classmethod
    def from_rewards(cls, reward: npt.NDArray[np.float64], *, pass_at: float = 0.5) -> Scores:
        """Scores for a verifier that never errs: PASS where reward >= ``pass_at``."""
        verdict = (reward < pass_at).view(np.int8)  # PASS = 0, FAIL = 1, in one pass
        return cls(reward=reward.astype(np.float64, copy=False), verdict=verdict)

    def take(self, indices: npt.NDArray[np.int64]) -> Scores:
        return Scores(
            reward=self.reward[indices],
            verdict=self.verdict[indices],
            usage={k: v[indices] for k, v in self.usage.items()},
            detail=None if self.detail is None else [self.detail[i] for i in indices],
        )

    @staticmethod
    def concat(parts: Sequence[Scores]) -> Scores:
        if not parts:
            raise ValueError("cannot concatenate zero score batches")
        details = [p.detail for p in parts]
        return Scores(
            reward=np.concatenate([p.reward for p in parts]),
            verdict=np.concatenate([p.verdict for p in parts]),
            usage={k: np.concatenate([p.usage[k] for p in parts]) for k in parts[0].usage},
            detail=None if any(d is None for d in details) else [x for d in details for x in d],  # type: ignore[union-attr]
        )

    def count(self, verdict: Verdict) -> int:
        return int(np.count_nonzero(self.verdict == verdict))


def ones_usage(n: int, **per_item: float) -> dict[str, npt.NDArray[np.float64]]:
    """Usage where every item costs the same: ``ones_usage(3, samples=1)`` (read-only views)."""
    return {name: np.broadcast_to(np.float64(amount), (n,)) for name, amount in per_item.items()}


@dataclass(frozen=True)
class Observations:
    """Verdict counts per distinct prompt of a batch: what a prompt policy learns from.

    One row per prompt index that appears in the batch, ascending. Small (at most one row per
    prompt), so a part commits it whatever ``store_candidates`` says, and a resumed iteration hands
    the policy exactly what an uninterrupted one would.
    """

    prompt_index: npt.NDArray[np.int64]
    n_pass: npt.NDArray[np.int64]
    n_fail: npt.NDArray[np.int64]
    n_error: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.prompt_index)

    @classmethod
    def of(cls, prompt_index: npt.NDArray[np.int64], verdict: npt.NDArray[np.int8]) -> Observations:
        prompt_index = np.asarray(prompt_index, dtype=np.int64)
        if len(prompt_index) > 0 and prompt_index.min() == prompt_index.max():  # one prompt (unconditional)
            counts = np.bincount(np.asarray(verdict, dtype=np.int64), minlength=3)[:3].reshape(1, 3)
            return cls(prompt_index[:1].copy(), counts[:, Verdict.PASS], counts[:, Verdict.FAIL],
                       counts[:, Verdict.ERROR])
        index, inverse = np.unique(prompt_index, return_inverse=True)
        counts = np.zeros((len(index), 3), dtype=np.int64)
        np.add.at(counts, (inverse, np.asarray(verdict, dtype=np.int64)), 1)
        return cls(index, counts[:, Verdict.PASS], counts[:, Verdict.FAIL], counts[:, Verdict.ERROR])

    @staticmethod
    def concat(parts: Sequence[Observations]) -> Observations:
        """Counts summed over batches (a prompt seen in several parts gets one row)."""
        if not parts:
            empty = np.empty(0, dtype=np.int64)
            return Observations(empty, empty, empty, empty)
        index = np.concatenate([p.prompt_index for p in parts])
        unique, inverse = np.unique(index, return_inverse=True)
        totals = []
        for column in ("n_pass", "n_fail", "n_error"):
            summed = np.zeros(len(unique), dtype=np.int64)
            np.add.at(summed, inverse, np.concatenate([getattr(p, column) for p in parts]))
            totals.append(summed)
        return Observations(unique, *totals)


RECORD_VERSION = 3  # 3: diagnostics and their estimator labels


@dataclass(frozen=True)
class IterationRecord:
    """What one iteration did, as committed in ``metrics.json`` and the manifest's summary.

    One versioned JSON form (``to_json`` / ``from_json``); records written before a field existed
    are read in :meth:`from_json`, the one place that knows older forms.
    """

    iteration: int
    n_target: int
    n_selected: int
    n_generated: int
    n_parts: int
    n_accepted: int  # streaming: draws the selector accepted, counted past n_t too
    acceptance_rate: float
    verdicts: Mapping[str, int]
    cost: Mapping[str, float]  # per stage
    seconds: Mapping[str, float]  # per stage
    iteration_cost: float
    cumulative_cost: float
    budget: float
    cut: bool
    exhausted: bool  # the budget (or a near-zero acceptance) stopped the iteration short: the run ends
    selected_sha256: str
    train: Mapping[str, float]
    eval: Mapping[str, float]
    n_trained: int = 0  # rows the learner trained on (selection + carried + outside)
    n_carried: int = 0
    n_outside: int = 0
    update_statistics: Mapping[str, float] = field(default_factory=dict)  # per-sample update stats (format 3)
    diagnostics: Mapping[str, float] = field(default_factory=dict)  # estimates (format 3; {} before)
    diagnostic_labels: Mapping[str, str] = field(default_factory=dict)  # name -> estimator of each

    @property
    def ends_run(self) -> bool:
        return self.exhausted or self.n_selected == 0

    def to_json(self) -> dict[str, Any]:
        payload = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name in ("verdicts", "cost", "seconds", "train", "eval", "update_statistics", "diagnostics",
                     "diagnostic_labels"):
            payload[name] = dict(payload[name])
        return {**payload, "version": RECORD_VERSION}

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> IterationRecord:
        data = {k: v for k, v in payload.items() if k in cls.__dataclass_fields__}
        if payload.get("version", 1) < 2:  # format 1: no n_accepted (kept), no exhausted (cut)
            data.setdefault("n_accepted", payload["n_selected"])
            data.setdefault("exhausted", payload["cut"])
            data.setdefault("n_trained", payload["n_selected"])
        try:
            return cls(**data)
        except TypeError as error:
            raise ValueError(f"not an iteration record: {error}") from None
