"""Helpers for the crash-safety tests: run the real CLI, and reduce a run directory to what must match."""

from __future__ import annotations

import errno
import functools
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from synthloop.faults import Faults
from synthloop.store import RunStore, RunStoreFactory

ROOT = Path(__file__).resolve().parents[1]
CRASH_CONFIG = ROOT / "tests" / "data" / "crash.yaml"


def stores(faults: Faults | None = None) -> RunStoreFactory:
    """Stores for in-process tests: no fsync (what these tests inject are exceptions, not power cuts;
    the subprocess kill test keeps fsync on), and the given fault-injection hook."""
    return functools.partial(RunStore, fsync=False, faults=faults or Faults())


def failing_at(fault: str, code: int = errno.EIO) -> Faults:
    """Faults that raise an injected ``OSError`` at ``NAME:N``, the N-th time point NAME is reached."""
    name, _, count = fault.partition(":")
    return Faults(oserror=(name, int(count), code))


FAST = stores()


def cli(*args: str | Path, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``python -m synthloop.cli ARGS`` in a subprocess, with this checkout's sources first."""
    return subprocess.run([sys.executable, "-m", "synthloop.cli", *map(str, args)], env=cli_env(env),
                          capture_output=True, text=True, check=check, timeout=300)


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNTHLOOP_FAULT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra or {})
    return env


def without_seconds(value: Any) -> Any:
    """Wall-clock times differ between any two runs; everything else must not."""
    if isinstance(value, dict):
        return {k: without_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [without_seconds(v) for v in value]
    return value


def snapshot(run_dir: Path) -> dict[str, Any]:
    """What an exact resume must reproduce: metrics, ledger, every candidate and selected row (ids
    and payload), the last checkpoint's bytes (every component's)."""
    store = RunStore(run_dir)
    manifest = store.manifest()
    candidates, selected, ledger = [], [], []
    for entry in manifest.iterations:
        record = store.iteration_record(entry.iteration)
        ledger.append(without_seconds([asdict(row) for row in record.ledger]))
        for file in record.files:
            if "/candidates/" in file.path:
                candidates.append(pq.read_table(run_dir / file.path).to_pydict())
            elif file.path.endswith("selected.parquet"):
                selected.append(pq.read_table(run_dir / file.path).to_pydict())
    last = manifest.iterations[-1].checkpoint
    assert last is not None
    return {
        "initial": manifest.initial.model_dump() if manifest.initial else None,
        "summaries": [without_seconds(e.summary) for e in manifest.iterations],
        "ledger": ledger,
        "candidates": candidates,
        "selected": selected,
        "checkpoint": {f.path: (run_dir / f.path).read_bytes() for f in last.files},
        "checkpoints_kept": [e.iteration for e in manifest.iterations if e.checkpoint is not None],
        "finished": manifest.finished,
    }


def spent(run_dir: Path) -> float:
    """What the committed state has spent: committed iterations and parts of the open one."""
    store = RunStore(run_dir)
    rows = store.committed_ledger_rows()
    open_ = store.open_iteration()
    rows += [r for p in (open_.parts if open_ else ()) for r in p.ledger]
    return float(sum(r.cost for r in rows))


def candidate_ids(run_dir: Path) -> list[tuple[int, int, int]]:
    ids: list[tuple[int, int, int]] = []
    for path in sorted(run_dir.glob("iter-*/candidates/part-*.parquet")):
        table = pq.read_table(path, columns=["iteration", "part", "index"]).to_pydict()
        ids.extend(zip(table["iteration"], table["part"], table["index"], strict=True))
    return ids
