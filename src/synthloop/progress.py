"""Live progress of runs: a rich display on a terminal, plain periodic lines otherwise (CI logs)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from synthloop.events import Event, IterationDone, PartDone, Started
from synthloop.records import IterationRecord

Report = Callable[[Event], None]


def fan_out(*reports: Report) -> Report:
    """One ``report`` callback that passes every event to each of ``reports`` in turn."""

    def report(event: Event) -> None:
        for each in reports:
            each(event)

    return report


class RunProgress:
    """Receives the loop's events (``start``, ``part``, ``iteration``, ``end``) and shows them.

    On a terminal: a live display of the iteration (kept / target, drawn), the budget used, the rate
    of spending and the ETA of the budget. Otherwise one plain line per iteration, and at most one
    line per ``interval`` seconds within an iteration, so CI logs stay readable. The rate and ETA
    count only spending since this process started (a resumed run does not claim its past).

    Use as a context manager; pass the instance as the loop's ``report`` callback.
    """

    def __init__(self, *, console: Console | None = None, interval: float = 10.0,
                 stream: TextIO | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.interval = interval
        self.stream = stream
        self._live = self.console.is_terminal
        self._progress: Progress | None = None
        self._budget_task: Any = None
        self._iteration_task: Any = None
        self._last_line = 0.0
        self._clock = time.monotonic()
        self._spent_at_start = 0.0

    def __enter__(self) -> RunProgress:
        if self._live:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(), console=self.console, transient=False,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, event: Event) -> None:
        if isinstance(event, PartDone):
            self._part(event)
        elif isinstance(event, IterationDone):
            self._iteration(event.record)
        elif isinstance(event, Started):
            self._start(event)

    def rate_and_eta(self, spent: float, total: float) -> tuple[float, float | None]:
        """Budget units spent per second since the start, and seconds until the budget is spent."""
        elapsed = max(time.monotonic() - self._clock, 1e-9)
        rate = (spent - self._spent_at_start) / elapsed
        eta = (total - spent) / rate if rate > 0 else None
        return rate, eta

    def _start(self, event: Started) -> None:
        plan = event.plan
        self._clock, self._spent_at_start = time.monotonic(), float(event.spent)
        resumed = event.resumed
        line = (f"plan: {len(plan)} iterations, expected cost {plan[-1].cumulative_cost if plan else 0.0:.6g}"
                + (f"; resuming after {resumed} committed iterations, {self._spent_at_start:.6g} spent"
                   if resumed else ""))
        if self._progress is not None:
            total = float(event.total)
            self._budget_task = self._progress.add_task("budget", total=max(total, 1e-12),
                                                        detail="")
            self._progress.update(self._budget_task, completed=self._spent_at_start)
            self._iteration_task = self._progress.add_task(f"iteration {resumed}", total=1, detail="")
            self._progress.console.print(line, soft_wrap=True)
        else:
            self._print(line)

    def _part(self, event: PartDone) -> None:
        t, kept, target = event.iteration, event.kept, event.target
        spent, total = event.spent, event.total
        rate, eta = self.rate_and_eta(spent, total)
        timing = f"rate {rate:.4g}/s, ETA {_duration(eta)}"
        if self._progress is not None:
            self._progress.update(self._iteration_task, description=f"iteration {t}", total=target,
                                  completed=kept, detail=f"kept {kept}/{target}, drawn {event.generated}")
            self._progress.update(self._budget_task, total=total, completed=spent,
                                  detail=f"{spent:.6g}/{total:.6g} ({100 * spent / total:.1f}%), {timing}")
        elif time.monotonic() - self._last_line > self.interval:
            self._last_line = time.monotonic()
            self._print(f"iteration {t}: kept {kept}/{target}, drawn {event.generated}, "
                        f"budget {spent:.6g}/{total:.6g} ({100 * spent / total:.1f}%), {timing}")

    def _iteration(self, m: IterationRecord) -> None:
        evaluation = ", ".join(f"{k}={v:.5g}" for k, v in m.eval.items())
        line = (f"iteration {m.iteration}: kept {m.n_selected}/{m.n_target} of "
                f"{m.n_generated} drawn (acceptance {m.acceptance_rate:.3f}), "
                f"cost {m.cumulative_cost:.6g}/{m.budget:.6g}"
                + (" [cut to fit the budget]" if m.cut else "") + (f"; {evaluation}" if evaluation else ""))
        if self._progress is not None:
            self._progress.console.print(line, soft_wrap=True)
        else:
            self._print(line)

    def _print(self, line: str) -> None:
        print(f"[synthloop] {line}", file=self.stream or sys.stderr, flush=True)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
