"""Reading finished or stopped runs: summaries for ``inspect`` and ``report``, and data export.

Everything here reads through :class:`~synthloop.store.RunStore` and checks what it reads: the size
of every file the run lists, always, and the sha256 of every file it opens (of every file at all for
``inspect``, which also checks ``manifest.backup.json``). A damaged file stops it with one line
naming the file. Readers take no lock: if a writer commits while they read (and deletes files the
state they started from listed), they read again from the new state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from synthloop.records import Verdict
from synthloop.store import (
    MANIFEST_BACKUP,
    RunDirectoryError,
    RunStore,
    atomic_write_bytes,
    read_consistently,
    table_bytes,
)
from synthloop.yamlio import load_yaml


@dataclass(frozen=True)
class RunSummary:
    path: Path
    name: str
    task: str  # the task section, as JSON text: runs compared in one report must share it
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
    schedule_config: dict[str, Any] = field(default_factory=dict)  # the schedule section as written
    task_config: dict[str, Any] = field(default_factory=dict)  # the task section, in the config's order

    @property
    def task_label(self) -> str:
        """The task section for a reader: ``gaussian: theta0 [3, 3], sigma 1, kappa 1``."""
        return section_label(self.task_config or json.loads(self.task) or {})

    @property
    def status(self) -> str:
        spent = self.iterations[-1]["cumulative_cost"] if self.iterations else 0.0
        state = "finished" if self.finished else "not finished (stopped, or still running)"
        more = f", {self.open_parts} parts of iteration {len(self.iterations)} committed" if self.open_parts else ""
        return (f"{len(self.iterations)} committed iterations{more}; spent {spent:.6g} of "
                f"{self.budget:g} {self.unit} ({100 * spent / self.budget:.1f}%); {state}")


def run_summary(run_dir: Path, *, content: bool = False) -> RunSummary:
    """A run's summary, after checking every file's size (``content``: every file's sha256 too)."""
    return read_consistently(Path(run_dir), lambda: _summary(RunStore(run_dir), content=content))


def _summary(store: RunStore, *, content: bool) -> RunSummary:
    manifest = store.manifest()
    config = load_yaml(store.config_text(), source=str(store.root / "config.yaml"))
    store.verify(content=content)
    if content:
        store.read_manifest(MANIFEST_BACKUP)
    open_ = store.open_iteration()
    initial = manifest.initial
    return RunSummary(
        path=store.root, name=str(config.get("name", store.root.name)),
        task=json.dumps(config.get("task"), sort_keys=True),
        primary=initial.primary_metric if initial else "",
        higher_is_better=initial.higher_is_better if initial else None,
        budget=float(config["budget"]["total"]), unit=str(config["budget"].get("unit", "samples")),
        schedule=section_label(config["schedule"]), initial=dict(initial.metrics) if initial else {},
        iterations=[store.metrics(e.iteration) for e in manifest.iterations],
        open_parts=len(open_.parts) if open_ else 0, finished=manifest.finished,
        ledger=store.ledger().to_pylist(), schedule_config=dict(config["schedule"]),
        task_config=dict(config.get("task") or {}),
    )


@dataclass(frozen=True)
class DiskUse:
    """Bytes a run directory takes on disk, by part. ``checkpoints``: every ``iter-*/checkpoint/``
    (``n_checkpoints`` of them; pruning keeps few, see ``docs/run-directory.md``); ``logs``: ``*.log``
    files and ``logs/`` folders; ``store``: everything else (manifests, ledger, records, candidates,
    selected sets, metrics, the config)."""

    store: int
    checkpoints: int
    logs: int
    n_checkpoints: int

    @property
    def total(self) -> int:
        return self.store + self.checkpoints + self.logs

    def line(self) -> str:
        return (f"disk: {human_bytes(self.total)} (store {human_bytes(self.store)}, checkpoints "
                f"{human_bytes(self.checkpoints)} in {self.n_checkpoints}, logs {human_bytes(self.logs)})")


def disk_use(run_dir: Path) -> DiskUse:
    """What ``run_dir`` takes on disk now (links are counted as links, never followed)."""
    sizes = {"store": 0, "checkpoints": 0, "logs": 0}
    checkpoints: set[str] = set()
    for path in Path(run_dir).rglob("*"):
        try:
            info = path.lstat()
        except FileNotFoundError:  # a writer deleted it since the listing: it takes nothing now
            continue
        if not path.is_file() or path.is_symlink():
            continue
        parts = path.relative_to(run_dir).parts
        if len(parts) > 2 and parts[0].startswith("iter-") and parts[1] == "checkpoint":
            part = "checkpoints"
            checkpoints.add(parts[0])
        elif path.suffix == ".log" or "logs" in parts[:-1]:
            part = "logs"
        else:
            part = "store"
        sizes[part] += info.st_size
    return DiskUse(**sizes, n_checkpoints=len(checkpoints))


def human_bytes(size: float) -> str:
    """``size`` bytes in the largest unit that keeps it at least 1 (powers of 1024).

    >>> human_bytes(512), human_bytes(1536), human_bytes(4.6 * 2**30)
    ('512 B', '1.5 KiB', '4.6 GiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


MAX_LABEL = 120  # characters of a section's label; the report shows the whole section on hover


def section_label(section: Mapping[str, Any]) -> str:
    """A config section as a reader wants it: its kind, then each setting as ``key value``.

    >>> section_label({"kind": "exponential", "growth": 1.0, "n0": "auto", "iterations": 6})
    'exponential: growth 1, n0 auto, iterations 6'
    >>> section_label({"kind": "math", "levels": [{"name": "add2"}, {"name": "add3"}], "shots": 0})
    'math: levels add2 + add3, shots 0'
    """
    settings = ", ".join(f"{key} {_compact(value)}" for key, value in section.items() if key != "kind")
    text = f"{section.get('kind', '?')}" + (f": {settings}" if settings else "")
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 3] + "..."


def _compact(value: Any, depth: int = 0) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, int | float):
        return f"{value:g}"
    if isinstance(value, list):
        if value and all(isinstance(v, dict) and "name" in v for v in value):
            return " + ".join(str(v["name"]) for v in value)  # named parts (a task's levels)
        return "[" + ", ".join(_compact(v, depth + 1) for v in value) + "]"
    if isinstance(value, dict):
        return "{...}" if depth > 0 else "{" + ", ".join(f"{k} {_compact(v, 1)}" for k, v in value.items()) + "}"
    return str(value)


def export_selected(run_dir: Path, *, iteration: int, out: Path) -> int:
    """Write an iteration's selected set (``-1``: the last) as Parquet or JSON Lines; return rows.

    Both load with ``datasets.load_dataset("parquet" | "json", data_files=...)``. Array samples become
    fixed-size lists (Parquet) or nested lists (JSON); ids are ``iteration``, ``part``, ``index``.
    """
    table = read_consistently(Path(run_dir), lambda: _selected(RunStore(run_dir), iteration))
    if out.suffix == ".jsonl":
        lines = [json.dumps(row, allow_nan=True) for row in table.to_pylist()]
        atomic_write_bytes(out, ("\n".join(lines) + "\n").encode() if lines else b"")
    elif out.suffix == ".parquet":
        atomic_write_bytes(out, table_bytes(table))
    else:
        raise RunDirectoryError(f"{out}: the export format comes from the suffix: .parquet or .jsonl")
    return table.num_rows


def _selected(store: RunStore, iteration: int) -> pa.Table:
    committed = [e.iteration for e in store.manifest().iterations]
    if not committed:
        raise RunDirectoryError(f"{store.root}: no committed iteration to export yet")
    chosen = committed[-1] if iteration == -1 else iteration
    if chosen not in committed:
        raise RunDirectoryError(f"{store.root}: iteration {chosen} is not committed (committed: "
                                f"{committed[0]}..{committed[-1]})")
    store.config_text()
    store.verify(content=False)
    return _plain(store.selected(chosen))


def _plain(table: pa.Table) -> pa.Table:
    """Column names without dots (``sample.x`` -> ``x``), no synthloop-only field metadata, and the
    verdict as its name (``pass``, ``fail``, ``error``) beside its code."""
    names = [n.removeprefix("sample.").replace(".", "_") for n in table.column_names]
    plain = pa.Table.from_arrays(table.columns, names=names)
    if "verdict" not in names:
        return plain
    labels = [Verdict(code).name.lower() for code in plain.column("verdict").to_pylist()]
    return plain.append_column("verdict_name", pa.array(labels, type=pa.string()))

