"""Reading finished or stopped runs: summaries for ``inspect`` and ``report``, and data export.

Everything here reads through :class:`~synthloop.store.RunStore`, so every file is checked against
the manifest before use; iteration summaries come from the manifest, which carries its own sha256.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from synthloop.store import RunDirectoryError, RunStore, atomic_write_bytes, table_bytes


@dataclass(frozen=True)
class RunSummary:
    path: Path
    name: str
    task: str  # the task section, as text: runs compared in one report must share it
    primary: str  # the metric runs are compared on
    higher_is_better: bool | None
    budget: float
    unit: str
    schedule: str
    initial: dict[str, float]
    iterations: list[dict[str, Any]]  # each committed iteration's metrics
    open_parts: int  # committed parts of an iteration in progress
    finished: bool
    ledger: list[dict[str, Any]]

    @property
    def status(self) -> str:
        spent = self.iterations[-1]["cumulative_cost"] if self.iterations else 0.0
        state = "finished" if self.finished else "not finished (stopped, or still running)"
        more = f", {self.open_parts} parts of iteration {len(self.iterations)} committed" if self.open_parts else ""
        return (f"{len(self.iterations)} committed iterations{more}; spent {spent:.6g} of "
                f"{self.budget:g} {self.unit} ({100 * spent / self.budget:.1f}%); {state}")


def run_summary(run_dir: Path) -> RunSummary:
    store = RunStore(run_dir)
    manifest = store.manifest()
    config = yaml.safe_load(store.config_text())
    task = json.dumps(config.get("task"), sort_keys=True)
    committed_initial = manifest.get("initial") or {}
    initial = committed_initial.get("metrics", {})
    primary, higher = committed_initial.get("primary_metric", ""), committed_initial.get("higher_is_better")
    return RunSummary(
        path=Path(run_dir), name=str(config.get("name", Path(run_dir).name)), task=task,
        primary=primary, higher_is_better=higher, budget=float(config["budget"]["total"]),
        unit=str(config["budget"].get("unit", "samples")), schedule=_schedule_label(config["schedule"]),
        initial=dict(initial), iterations=[dict(e["summary"]) for e in manifest["iterations"]],
        open_parts=len(manifest["open"]["parts"]) if manifest.get("open") else 0,
        finished=bool(manifest.get("finished")),
        ledger=[r for e in manifest["iterations"] for r in e["ledger"]],
    )


def _schedule_label(schedule: Mapping[str, Any]) -> str:
    details = ", ".join(f"{k}={v}" for k, v in schedule.items() if k != "kind")
    return f"{schedule['kind']}({details})"


def export_selected(run_dir: Path, *, iteration: int, out: Path) -> int:
    """Write an iteration's selected set (``-1``: the last) as Parquet or JSON Lines; return rows.

    Both load with ``datasets.load_dataset("parquet" | "json", data_files=...)``. Array samples become
    fixed-size lists (Parquet) or nested lists (JSON); ids are ``iteration``, ``part``, ``index``.
    """
    store = RunStore(run_dir)
    committed = [e["iteration"] for e in store.manifest()["iterations"]]
    if not committed:
        raise RunDirectoryError(f"{run_dir}: no committed iteration to export yet")
    chosen = committed[-1] if iteration == -1 else iteration
    if chosen not in committed:
        raise RunDirectoryError(f"{run_dir}: iteration {chosen} is not committed (committed: "
                                f"{committed[0]}..{committed[-1]})")
    table = _plain(store.selected(chosen))
    if out.suffix == ".jsonl":
        lines = [json.dumps(row, allow_nan=True) for row in table.to_pylist()]
        atomic_write_bytes(out, ("\n".join(lines) + "\n").encode() if lines else b"")
    elif out.suffix == ".parquet":
        atomic_write_bytes(out, table_bytes(table))
    else:
        raise RunDirectoryError(f"{out}: the export format comes from the suffix: .parquet or .jsonl")
    return table.num_rows


def _plain(table: pa.Table) -> pa.Table:
    """Column names without dots (``sample.x`` -> ``x``) and no synthloop-only field metadata."""
    names = [n.removeprefix("sample.").replace(".", "_") for n in table.column_names]
    return pa.Table.from_arrays(table.columns, names=names)

