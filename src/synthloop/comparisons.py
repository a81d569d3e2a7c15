"""Schedule comparisons at equal budget: cells (schedule x seed) that resume and run in parallel.

A comparison folder (``synthloop compare CONFIG --out OUT``)::

    OUT/compare.yaml              the resolved config compared, and what was asked (schedules, seeds)
    OUT/runs/SCHEDULE/seed-K/     one ordinary run directory per cell
    OUT/compare.json, table.md, compare.png    written once every cell has finished

Each cell is an ordinary run with its own seed (``config.seed + K``), so cells can run in any order,
in any number of processes, and the table is the same. Running the command again (or
``synthloop resume OUT``) reads a finished cell back, resumes an unfinished one from its last commit
(the exact resume of ``runs.py``) and starts the rest. A folder or a cell that holds a run of another
config (another budget, another schedule) is refused before anything runs: a summary never mixes
configs or budgets.

Cells run in this process (``workers=1``), in local processes (``workers=N``), or as Ray tasks
(``ray="local"`` or a cluster address, ``synthloop.engines.ray``); at most ``workers`` at a time, so
the progress shown (``synthloop.compare_progress``) says which cells are really running.
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import multiprocessing
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml

from synthloop.configs import (
    ConfigError,
    RunConfig,
    ScheduleConfig,
    family_for,
    make_planner,
    mark_stored_adaptive,
    parse_config,
    to_yaml,
    with_schedule,
    with_updates_resolved,
)
from synthloop.experiments import (
    Trajectory,
    config_from_run_text,
    markdown_table,
    resume_run,
    run_config,
    summarize,
)
from synthloop.names import child_path
from synthloop.records import IterationRecord
from synthloop.store import RunDirectoryError, RunStore, RunStoreFactory, atomic_write_bytes
from synthloop.yamlio import load_yaml, shown

COMPARE_FILE = "compare.yaml"
CellState = Literal["new", "unfinished", "finished"]


@dataclass(frozen=True)
class Cell:
    """One run of a comparison: a schedule at one seed, in its own run directory."""

    schedule: str
    index: int  # the seed is config.seed + index
    config: RunConfig
    run_dir: Path

    @property
    def label(self) -> str:
        return f"{self.schedule}/seed-{self.index}"


@dataclass(frozen=True)
class CellResult:
    """What a finished cell contributes to the table, and how it got there."""

    schedule: str
    index: int
    trajectory: Trajectory
    initial: float
    metric: str
    higher_is_better: bool
    state: CellState  # what the cell's directory held when this run of it began
    seconds: float


class CompareReport(Protocol):
    """What a comparison reports as it goes (``synthloop.compare_progress.CompareProgress``)."""

    def begin(self, cells: Sequence[Cell], states: Mapping[str, CellState], *, workers: int) -> None: ...

    def cell_started(self, cell: Cell, state: CellState) -> None: ...

    def cell_finished(self, cell: Cell, result: CellResult) -> None: ...


@dataclass(frozen=True)
class Request:
    """What was asked of a comparison folder; kept in ``compare.yaml`` so ``resume`` can repeat it."""

    schedules: tuple[str, ...]
    seeds: int
    store_candidates: str
    workers: int


def compare(
    config: RunConfig, *, schedules: Sequence[str] | None, seeds: int, out: Path, store_candidates: str = "none",
    workers: int | None = None, ray: str | None = None, progress: CompareReport | None = None,
    open_store: RunStoreFactory = RunStore,
) -> dict[str, Any]:
    """Run (or finish) each named schedule of ``config.compare`` over ``seeds`` seeds at the same budget.

    ``workers``: cells at a time (default 1; with ``ray``, the cluster's CPUs).
    """
    if config.compare is None:
        raise ConfigError("compare: the config has no 'compare' section naming the schedules")
    names = list(schedules or config.compare.schedules)
    request = Request(tuple(names), seeds, store_candidates, workers or 1)
    cells = plan_cells(config, config.compare.schedules, request, out=out)
    check_claim(out, config)
    states = {cell.label: cell_state(cell) for cell in cells}  # refusals come before any write
    claim(out, config, request)
    results = run_cells(cells, states, workers=workers, ray=ray, progress=progress, open_store=open_store)
    return write_summary(config, names, [results[cell.label] for cell in cells], out=out)


def resume_compare(out: Path, *, workers: int | None = None, ray: str | None = None,
                   progress: CompareReport | None = None, open_store: RunStoreFactory = RunStore) -> dict[str, Any]:
    """Finish the comparison in ``out`` with the config and request its ``compare.yaml`` holds."""
    config, request = read_claim(out)
    return compare(config, schedules=request.schedules, seeds=request.seeds, out=out,
                   store_candidates=request.store_candidates, workers=workers or request.workers, ray=ray,
                   progress=progress, open_store=open_store)


def is_comparison(folder: Path) -> bool:
    return (Path(folder) / COMPARE_FILE).is_file()


# -- cells ---------------------------------------------------------------------------------------

def plan_cells(config: RunConfig, schedules: Mapping[str, ScheduleConfig], request: Request, *,
               out: Path) -> list[Cell]:
    """Each named schedule's cells, one per seed; every plan is checked before anything is written."""
    unknown = [n for n in request.schedules if n not in schedules]
    if unknown:
        raise ConfigError(
            f"--schedules: unknown schedule {shown(unknown[0])}; the config names {', '.join(schedules)}")
    runs = child_path(out, "runs", what="--out")
    loop = config.loop.model_copy(update={"store_candidates": request.store_candidates})
    cells = []
    for name in request.schedules:
        folder = child_path(runs, name, what="compare.schedules")
        for k in range(request.seeds):
            variant = with_schedule(config, schedules[name], seed=config.seed + k,
                                    name=f"{config.name}-{name}-seed{k}").model_copy(update={"loop": loop})
            cells.append(Cell(name, k, variant, child_path(folder, f"seed-{k}")))
        make_planner(cells[-1].config)
    if cells:  # the family's own sections, checked as a run would before it writes anything
        family_for(cells[0].config).validate(cells[0].config)
    return cells


def cell_state(cell: Cell) -> CellState:
    """What the cell's directory holds; a run of another config there is refused (one line)."""
    store = RunStore(cell.run_dir)
    if not store.holds_run():
        return "new"
    source = str(store.root / "config.yaml")
    try:
        held = config_from_run_text(store.config_text(), source=source)
    except ConfigError as error:
        raise RunDirectoryError(f"{source}: {error}") from None
    difference = first_difference(with_updates_resolved(held).model_dump(mode="json"),
                                  with_updates_resolved(cell.config).model_dump(mode="json"))
    if difference is not None:
        raise RunDirectoryError(f"{cell.run_dir} holds a run of another config ({difference}); use another "
                                "--out, or remove that folder to run the cell again")
    return "finished" if store.manifest().finished else "unfinished"


def first_difference(held: Any, wanted: Any, where: str = "") -> str | None:
    """The first dotted key whose value differs, as ``key: X there, Y here``; None if equal.

    >>> first_difference({"budget": {"total": 600}}, {"budget": {"total": 800}})
    'budget.total: 600 there, 800 here'
    """
    if isinstance(held, dict) and isinstance(wanted, dict):
        for key in dict.fromkeys([*held, *wanted]):
            found = first_difference(held.get(key), wanted.get(key), f"{where}.{key}" if where else str(key))
            if found is not None:
                return found
        return None
    if held == wanted:
        return None
    return f"{where or 'config'}: {json.dumps(held)} there, {json.dumps(wanted)} here"


def run_cell(cell: Cell, *, open_store: RunStoreFactory = RunStore) -> CellResult:
    """Bring one cell to its end: read back if finished, resume if started, start it otherwise.

    The state is read here, where the cell runs, so a retried cell (a Ray worker that died) resumes.
    """
    clock = time.perf_counter()
    state = cell_state(cell)
    if state == "finished":
        history = committed_history(cell.run_dir)
    elif state == "unfinished":
        history = resume_run(cell.run_dir, open_store=open_store)[1]
    else:
        history = run_config(cell.config, run_dir=cell.run_dir, overwrite=True, open_store=open_store)
    initial = RunStore(cell.run_dir).manifest().initial
    assert initial is not None  # committed before the first iteration
    trajectory = _trajectory(cell.schedule, cell.config.seed, history, initial.primary_metric,
                             cell.config.budget.total)
    return CellResult(cell.schedule, cell.index, trajectory, initial.metrics[initial.primary_metric],
                      initial.primary_metric, initial.higher_is_better, state, time.perf_counter() - clock)


def committed_history(run_dir: Path) -> list[IterationRecord]:
    """A finished run's iteration records, from its manifest (no model is loaded)."""
    store = RunStore(run_dir)
    store.verify(content=False)
    return [IterationRecord.from_json(entry.summary) for entry in store.manifest().iterations]


def _trajectory(name: str, seed: int, history: Sequence[IterationRecord], metric: str,
                budget: float) -> Trajectory:
    evaluated = [m for m in history if metric in m.eval]
    return Trajectory(
        schedule=name,
        seed=seed,
        costs=[m.cumulative_cost for m in evaluated],
        metrics=[m.eval[metric] for m in evaluated],
        n_selected=[m.n_selected for m in history],
        budget_used=(history[-1].cumulative_cost / budget) if history else 0.0,
    )


# -- the comparison folder's own file --------------------------------------------------------------

def check_claim(out: Path, config: RunConfig) -> None:
    """Refuse a folder whose ``compare.yaml`` is of another config (one line naming the first key)."""
    if is_comparison(out):
        held, _ = read_claim(out)
        difference = first_difference(with_updates_resolved(held).model_dump(mode="json"),
                                      with_updates_resolved(config).model_dump(mode="json"))
        if difference is not None:
            raise RunDirectoryError(f"{out} holds a comparison of another config ({difference}); use another --out")


def claim(out: Path, config: RunConfig, request: Request) -> None:
    """Write ``compare.yaml`` (what was asked this time), once the folder is known to be this config's."""
    check_claim(out, config)
    body = {"request": {"schedules": list(request.schedules), "seeds": request.seeds,
                        "store": request.store_candidates, "workers": request.workers},
            "config": yaml.safe_load(to_yaml(config))}
    atomic_write_bytes(out / COMPARE_FILE, yaml.safe_dump(body, sort_keys=False).encode())


def read_claim(out: Path) -> tuple[RunConfig, Request]:
    path = Path(out) / COMPARE_FILE
    if not path.is_file():
        raise RunDirectoryError(f"{path} is missing: {out} is not a comparison folder")
    data = load_yaml(path.read_text(), source=str(path))
    try:
        asked = data["request"]
        request = Request(tuple(asked["schedules"]), int(asked["seeds"]), str(asked["store"]),
                          int(asked["workers"]))
        config = parse_config(mark_stored_adaptive(data["config"]), source=str(path))
    except (KeyError, TypeError, ValueError, ConfigError) as error:
        raise RunDirectoryError(f"{path} is damaged ({error}); run `synthloop compare CONFIG --out {out}` "
                                "to start it again") from None
    return config, request


# -- running the cells -----------------------------------------------------------------------------

class CellPool(Protocol):
    """Runs cells somewhere: ``submit`` one, ``wait`` for any of those in flight to end; ``width``
    cells at a time."""

    width: int

    def submit(self, cell: Cell) -> Any: ...

    def wait(self, handles: Sequence[Any]) -> tuple[Any, CellResult]: ...

    def close(self) -> None: ...


def run_cells(cells: Sequence[Cell], states: Mapping[str, CellState], *, workers: int | None, ray: str | None,
              progress: CompareReport | None, open_store: RunStoreFactory) -> dict[str, CellResult]:
    """Every cell's result, by label; at most the pool's width of cells are running at any moment."""
    pool = make_pool(workers=workers, ray=ray, open_store=open_store)
    if progress is not None:
        progress.begin(cells, states, workers=pool.width)
    waiting = started_order(cells, states)
    flying: dict[Any, Cell] = {}
    results: dict[str, CellResult] = {}
    try:
        while waiting or flying:
            while waiting and len(flying) < pool.width:
                cell = waiting.pop(0)
                if progress is not None:
                    progress.cell_started(cell, states[cell.label])
                flying[pool.submit(cell)] = cell
            handle, result = pool.wait(list(flying))
            cell = flying.pop(handle)
            results[cell.label] = result
            if progress is not None:
                progress.cell_finished(cell, result)
    finally:
        pool.close()
    return results


def started_order(cells: Sequence[Cell], states: Mapping[str, CellState]) -> list[Cell]:
    """Unfinished cells first, then seed by seed (every schedule's first seed before any second), so
    that a comparison stopped part-way already holds a whole table at fewer seeds.

    >>> from types import SimpleNamespace as Cellish
    >>> cells = [Cellish(schedule=s, index=k, label=f"{s}/{k}") for s in "ab" for k in range(2)]
    >>> [c.label for c in started_order(cells, {"b/1": "unfinished"})]
    ['b/1', 'a/0', 'b/0', 'a/1']
    """
    return sorted(cells, key=lambda cell: (states.get(cell.label) != "unfinished", cell.index))


def make_pool(*, workers: int | None, ray: str | None, open_store: RunStoreFactory) -> CellPool:
    if ray is not None:
        from synthloop.engines.ray import RayCellPool

        return RayCellPool(run_cell, address=ray, workers=workers, open_store=open_store)
    if workers is None or workers <= 1:
        return InlinePool(open_store)
    return ProcessPool(workers, open_store)


@dataclass(eq=False)
class Pending:
    """A cell submitted to the inline pool (it runs when waited for)."""

    cell: Cell


class InlinePool:
    """Cells run one after another in this process (the default: nothing to start)."""

    def __init__(self, open_store: RunStoreFactory) -> None:
        self.open_store = open_store
        self.width = 1

    def submit(self, cell: Cell) -> Pending:
        return Pending(cell)

    def wait(self, handles: Sequence[Any]) -> tuple[Any, CellResult]:
        return handles[0], run_cell(handles[0].cell, open_store=self.open_store)

    def close(self) -> None:
        return None


class ProcessPool:
    """Cells in ``workers`` local processes, started fresh (spawn: no state is inherited by a fork)."""

    def __init__(self, workers: int, open_store: RunStoreFactory) -> None:
        self.open_store = open_store
        self.width = workers
        self._executor = futures.ProcessPoolExecutor(max_workers=workers,
                                                     mp_context=multiprocessing.get_context("spawn"))

    def submit(self, cell: Cell) -> futures.Future[CellResult]:
        return self._executor.submit(run_cell, cell, open_store=self.open_store)

    def wait(self, handles: Sequence[Any]) -> tuple[Any, CellResult]:
        done, _ = futures.wait(handles, return_when=futures.FIRST_COMPLETED)
        handle = next(h for h in handles if h in done)  # the first in submission order among those done
        return handle, handle.result()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


# -- the summary -----------------------------------------------------------------------------------

def write_summary(config: RunConfig, names: Sequence[str], results: Sequence[CellResult], *,
                  out: Path) -> dict[str, Any]:
    """compare.json, table.md and compare.png from the cells' results, in the cells' order."""
    assert config.compare is not None and results
    last = results[-1]
    trajectories = [r.trajectory for r in results]
    summary = summarize(trajectories, metric=last.metric, higher_is_better=last.higher_is_better,
                        budget=config.budget.total, initial=last.initial)
    summary["config"] = config.name
    summary["schedules"] = {n: config.compare.schedules[n].model_dump(mode="json") for n in names}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "compare.json", json.dumps(
        {**summary, "trajectories": [t.__dict__ for t in trajectories]}, indent=1).encode())
    atomic_write_bytes(out / "table.md", markdown_table(summary).encode())
    from synthloop.report import plot_comparison

    plot_comparison(trajectories, summary, out / "compare.png")
    return summary

