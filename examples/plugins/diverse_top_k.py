"""A selector in one file: the most informative passed answers, spread over as many prompts as possible.

Among the candidates the verifier passed, :class:`DiverseTopK` ranks by an extra column that an
earlier stage wrote (``loss`` by default: the student's loss on its own answer, so the correct answers
it found least likely, whose cross-entropy gradient is largest, come first) and keeps at most one per
prompt until every prompt with a passed answer has one, then a second per prompt, and so on. A plain
top-k spends the selection on the prompts the model already answers most often; this one keeps n_t
distinct prompts whenever n_t of them have a passed answer.

It must see every candidate of the iteration before it can rank them, so its kind does not stream
(``streaming = False``): the loop draws N_t = oversample * n_t first, then selects. Use it from Python::

    Components(task, generator, DiverseTopK(by="loss"), learner)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from synthloop.protocols import Batch
from synthloop.records import Verdict


@dataclass(frozen=True)
class DiverseTopK:
    """Passed candidates by descending ``extra[by]``, one per prompt per round (ties: earlier draw)."""

    by: str = "loss"
    streaming: ClassVar[bool] = False

    def select(self, batch: Batch, *, n_wanted: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
        if self.by not in batch.candidates.extra:
            raise KeyError(f"DiverseTopK(by={self.by!r}) ranks by the extra column {self.by!r}, but the "
                           f"candidates carry only {sorted(batch.candidates.extra) or 'none'}")
        passed = np.flatnonzero(batch.scores.verdict == Verdict.PASS)  # never an ERROR, never a FAIL
        value = np.asarray(batch.candidates.extra[self.by], dtype=np.float64)[passed]
        prompt = batch.prompts.index[passed]
        by_prompt = np.lexsort((-value, prompt))  # grouped by prompt, best first (stable: earlier draw)
        rank = _rank_within_groups(prompt[by_prompt])
        order = by_prompt[np.lexsort((by_prompt, -value[by_prompt], rank))]  # round by round, best first
        return np.sort(passed[order[: max(n_wanted, 0)]]).astype(np.int64)


def _rank_within_groups(sorted_keys: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """0, 1, 2... within each run of equal keys: ``[4, 4, 7, 9, 9, 9] -> [0, 1, 0, 0, 1, 2]``."""
    if len(sorted_keys) == 0:
        return np.empty(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    lengths = np.diff(np.r_[starts, len(sorted_keys)])
    return (np.arange(len(sorted_keys)) - np.repeat(starts, lengths)).astype(np.int64)
