"""Progress of one long step outside the loop (pretraining, exporting a model, an evaluation): a rich
bar on a terminal, plain periodic lines otherwise, as :class:`synthloop.progress.RunProgress` does
for the loop itself.

A first run prepares its model before the loop starts (a minute of pretraining, a SmolLM2 export);
without a word a user cannot tell that work from a hang. Plug-ins wrap such steps::

    with LongStep("pretraining the math model", total=steps) as step:
        for _ in range(steps):
            ...
            step.advance()
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class LongStep:
    """``description`` advancing towards ``total`` units (``total=None``: one unit, the whole step).

    Plain mode (not a terminal, as in CI logs and under ``subprocess``): a line when the step starts,
    at most one line per ``interval`` seconds while it runs (units done, elapsed, ETA), and one when
    it ends with its duration. With ``announce=False`` (a step that is often short, such as an
    evaluation inside a run) the first line waits for ``interval`` seconds and a step that ends before
    prints nothing; such a step never opens a bar of its own, even on a terminal, where the run's live
    display is already up (rich shows the lines above it). Lines go to ``stream`` or stderr, prefixed
    like the loop's.
    """

    def __init__(self, description: str, *, total: int | None = None, unit: str = "steps",
                 interval: float = 10.0, announce: bool = True, console: Console | None = None,
                 stream: TextIO | None = None) -> None:
        self.description = description
        self.total = total
        self.unit = unit
        self.interval = interval
        self.announce = announce
        self._printed = False
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self.console = console or Console(stderr=True)
        self.stream = stream
        self.done = 0
        self._progress: Progress | None = None
        self._task: Any = None
        self._start = 0.0
        self._last_line = 0.0

    def __enter__(self) -> LongStep:
        self._start = self._last_line = time.monotonic()
        if self.console.is_terminal and self.announce:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), console=self.console, transient=True)
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total or 1)
        elif self.announce:
            size = f" ({self.total} {self.unit})" if self.total else ""
            self._print(f"{self.description}{size} ...")
        if self._progress is None and not self.total:  # nothing advances: say it is alive every interval
            self._heartbeat = threading.Thread(target=self._beat, daemon=True)
            self._heartbeat.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self._print(f"{self.description}: still working, {_duration(time.monotonic() - self._start)} elapsed")

    def advance(self, units: int = 1) -> None:
        self.done += units
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done)
            return
        now = time.monotonic()
        if now - self._last_line >= self.interval:
            self._last_line = now
            self._print(f"{self.description}: {self._fraction()}, {_duration(now - self._start)} elapsed"
                        + (f", ETA {_duration(self.eta(now))}" if self.total else ""))

    def eta(self, now: float) -> float | None:
        """Seconds left at the rate so far (None before the first unit)."""
        if not self.total or self.done <= 0:
            return None
        return (now - self._start) / self.done * max(self.total - self.done, 0)

    def _fraction(self) -> str:
        if not self.total:
            return f"{self.done} {self.unit} done"
        return f"{self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%)"

    def __exit__(self, kind: object, *rest: object) -> None:
        elapsed = time.monotonic() - self._start
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self._progress is not None:
            self._progress.stop()
        if kind is None and (self.announce or self._printed):
            line = f"{self.description}: done in {_duration(elapsed)}"
            if self._progress is not None:
                self.console.print(f"[synthloop] {line}", soft_wrap=True)
            else:
                self._print(line)

    def _print(self, line: str) -> None:
        self._printed = True
        print(f"[synthloop] {line}", file=self.stream or sys.stderr, flush=True)


def _duration(seconds: float | None) -> str:
    """``m:ss`` or ``h:mm:ss``.

    >>> _duration(75.4), _duration(3725), _duration(None)
    ('1:15', '1:02:05', '?')
    """
    if seconds is None:
        return "?"
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
