"""A run of every new stage, started from Python as a library user would: ``python stages_run.py
RUN_DIR`` starts it, or resumes it if RUN_DIR already holds it. The kill test runs it as a
subprocess (with the ``SYNTHLOOP_FAULT_*`` variables) and in process (``run_stages``).

The weighted prompt policy scores twice as many prompts as it keeps with the student (a priced
``score`` stage), and the training set accumulates every selection so far.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pool_task import pool_components
from synthloop import schedules
from synthloop.budget import CostModel, Planner, UnitCosts
from synthloop.faults import Faults, fsync_from_environment
from synthloop.loop import LoopSettings, run
from synthloop.records import IterationRecord
from synthloop.store import RunStore

BUDGET = 1500.0
COSTS = CostModel(unit="samples", prices={"generate": {"samples": 0.05}, "verify": {"samples": 0.02},
                                          "score": {"samples": 0.03}, "train": {"samples": 1.0}})


def run_stages(run_dir: Path, *, faults: Faults | None = None, fsync: bool = True) -> list[IterationRecord]:
    store = RunStore(run_dir, fsync=fsync, faults=faults or Faults())
    if not store.holds_run():
        store.create("name: stages\n")
    planner = Planner(make=lambda n0: schedules.exponential(n0, 0.4), budget=BUDGET,
                      unit_costs=UnitCosts(0.13, 1.0), acceptance_rate=0.3, n0=30.0, max_iterations=6)
    return run(pool_components(pool_size=50), planner, COSTS,
               LoopSettings(chunk_size=24, keep_checkpoints=2), seed=11, store=store)


if __name__ == "__main__":
    run_stages(Path(sys.argv[1]), faults=Faults.from_environment(), fsync=fsync_from_environment())
