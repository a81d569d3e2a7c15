"""What the loop reports while it runs: typed events, each with one JSON form.

A report callback (progress display, trackers) receives them in order: one :class:`Started`, a
:class:`PartDone` per generated part, an :class:`IterationDone` per committed iteration, and one
:class:`Finished`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from synthloop.budget import PlannedIteration
from synthloop.records import IterationRecord

EVENT_VERSION = 1


@dataclass(frozen=True)
class Started:
    kind: ClassVar[str] = "start"
    initial: Mapping[str, float]  # the evaluation before iteration 0
    plan: Sequence[PlannedIteration]
    resumed: int  # committed iterations read back (0 for a new run)
    spent: float
    total: float

    def to_json(self) -> dict[str, Any]:
        return {"event": self.kind, "version": EVENT_VERSION, "initial": dict(self.initial),
                "plan": [asdict(p) for p in self.plan], "resumed": self.resumed, "spent": self.spent,
                "total": self.total}


@dataclass(frozen=True)
class PartDone:
    kind: ClassVar[str] = "part"
    iteration: int
    kept: int
    target: int
    generated: int
    spent: float
    total: float

    def to_json(self) -> dict[str, Any]:
        return {"event": self.kind, "version": EVENT_VERSION, **asdict(self)}


@dataclass(frozen=True)
class IterationDone:
    kind: ClassVar[str] = "iteration"
    record: IterationRecord

    def to_json(self) -> dict[str, Any]:
        return {"event": self.kind, "version": EVENT_VERSION, "record": self.record.to_json()}


@dataclass(frozen=True)
class Finished:
    kind: ClassVar[str] = "end"
    history: Sequence[IterationRecord]
    spent: float

    def to_json(self) -> dict[str, Any]:
        return {"event": self.kind, "version": EVENT_VERSION, "history": [r.to_json() for r in self.history],
                "spent": self.spent}


Event = Started | PartDone | IterationDone | Finished
