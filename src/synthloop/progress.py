"""Live progress of runs: a rich display on a terminal, plain periodic lines otherwise (CI logs)."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RunProgress:
    """Receives the loop's events (``start``, ``part``, ``iteration``, ``end``) and shows them.

    Use as a context manager; pass the instance as the loop's ``report`` callback.
    """

    def __init__(self, *, console: Console | None = None, interval: float = 10.0) -> None:
        self.console = console or Console(stderr=True)
        self.interval = interval
        self._live = self.console.is_terminal
        self._progress: Progress | None = None
        self._budget_task: Any = None
        self._iteration_task: Any = None
        self._last_line = 0.0

    def __enter__(self) -> RunProgress:
        if self._live:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, event: str, payload: Mapping[str, Any]) -> None:
        if event == "part":
            self._part(payload)
        elif event == "iteration":
            self._iteration(payload)
        elif event == "start":
            self._start(payload)

    def _start(self, payload: Mapping[str, Any]) -> None:
        plan = payload["plan"]
        total = plan[-1].cumulative_cost if plan else 0.0
        if self._progress is not None:
            self._budget_task = self._progress.add_task("budget", total=max(total, 1e-12), detail="")
            self._iteration_task = self._progress.add_task("iteration 0", total=1, detail="")
        else:
            self.console.print(f"plan: {len(plan)} iterations, expected cost {total:.6g}", soft_wrap=True)

    def _part(self, payload: Mapping[str, Any]) -> None:
        t, kept, target = payload["iteration"], payload["kept"], payload["target"]
        detail = f"kept {kept}/{target}, drawn {payload['generated']}, spent {payload['spent']:.6g}/{payload['total']:.6g}"
        if self._progress is not None:
            self._progress.update(self._iteration_task, description=f"iteration {t}", total=target,
                                  completed=kept, detail=f"drawn {payload['generated']}")
            self._progress.update(self._budget_task, total=payload["total"], completed=payload["spent"],
                                  detail=f"{payload['spent']:.6g}/{payload['total']:.6g}")
        elif time.monotonic() - self._last_line > self.interval:
            self._last_line = time.monotonic()
            print(f"[synthloop] iteration {t}: {detail}", file=sys.stderr, flush=True)

    def _iteration(self, m: Mapping[str, Any]) -> None:
        evaluation = ", ".join(f"{k}={v:.5g}" for k, v in m["eval"].items())
        line = (f"iteration {m['iteration']}: kept {m['n_selected']}/{m['n_target']} of "
                f"{m['n_generated']} drawn (acceptance {m['acceptance_rate']:.3f}), "
                f"cost {m['cumulative_cost']:.6g}/{m['budget']:.6g}"
                + (" [cut to fit the budget]" if m["cut"] else "") + (f"; {evaluation}" if evaluation else ""))
        if self._progress is not None:
            self._progress.console.print(line, soft_wrap=True)
        else:
            print(f"[synthloop] {line}", file=sys.stderr, flush=True)
