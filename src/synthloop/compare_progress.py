"""Live progress of a comparison: one line per cell start and end, and the whole with its ETA.

The same split as ``synthloop.progress.RunProgress``: on a terminal a rich bar of cells done (the
lines printed above it); otherwise plain ``[synthloop]`` lines, so CI logs say what runs. The ETA
counts only cells run by this process (a cell read back from an earlier run is not a measure of speed).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from synthloop.comparisons import Cell, CellResult, CellState
from synthloop.progress import _duration

STARTING = {"new": "started", "unfinished": "resuming from its last commit", "finished": "already finished"}


class CompareProgress:
    """Receives a comparison's reports (``synthloop.comparisons.CompareReport``) and shows them."""

    def __init__(self, *, console: Console | None = None, stream: TextIO | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.stream = stream
        self._live = self.console.is_terminal
        self._progress: Progress | None = None
        self._task: Any = None
        self._total = 0
        self._done = 0
        self._timed = 0  # cells this process ran (not read back), for the ETA
        self._clock = time.monotonic()

    def __enter__(self) -> CompareProgress:
        if self._live:
            self._progress = Progress(TextColumn("cells"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                                      console=self.console, transient=False)
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def begin(self, cells: Sequence[Cell], states: Mapping[str, CellState], *, workers: int) -> None:
        self._total, self._clock = len(cells), time.monotonic()
        schedules = len(dict.fromkeys(c.schedule for c in cells))
        counts = {state: sum(s == state for s in states.values()) for state in ("finished", "unfinished")}
        self._line(f"compare: {len(cells)} cells ({schedules} schedules x {len(cells) // max(schedules, 1)} "
                   f"seeds), {counts['finished']} already finished, {counts['unfinished']} to resume; "
                   f"{workers} at a time")
        if self._progress is not None:
            self._task = self._progress.add_task("cells", total=len(cells), detail="")

    def cell_started(self, cell: Cell, state: CellState) -> None:
        self._line(f"cell {cell.label}: {STARTING[state]}")

    def cell_finished(self, cell: Cell, result: CellResult) -> None:
        self._done += 1
        if result.state != "finished":
            self._timed += 1
        metrics = result.trajectory.metrics
        final = f"{result.metric}={metrics[-1]:.5g}" if metrics else "no evaluation"
        how = "read back" if result.state == "finished" else f"finished in {result.seconds:.1f} s"
        self._line(f"cell {cell.label}: {how}, {final}; {self._done}/{self._total} cells done, "
                   f"ETA {_duration(self.eta())}")
        if self._progress is not None:
            self._progress.update(self._task, completed=self._done, detail=f"ETA {_duration(self.eta())}")

    def eta(self) -> float | None:
        """Seconds until every cell is done, at the pace of the cells run so far (None: no pace yet)."""
        remaining = self._total - self._done
        if remaining == 0:
            return 0.0
        if self._timed == 0:
            return None
        return (time.monotonic() - self._clock) / self._timed * remaining

    def _line(self, line: str) -> None:
        if self._progress is not None:
            self._progress.console.print(line, soft_wrap=True)
        else:
            print(f"[synthloop] {line}", file=self.stream or sys.stderr, flush=True)
