"""Helpers for the crash-safety tests: run the real CLI, and reduce a run directory to what must match."""

from __future__ import annotations

import errno
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
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


def spawn_script(script: Path, run_dir: Path, trace: Path, stderr: Path, *, delay: float) -> subprocess.Popen[bytes]:
    """Start ``python SCRIPT RUN_DIR`` (a helper module of tests/) sleeping ``delay`` at every fault
    point and tracing them to ``trace``; its stderr goes to the file ``stderr``."""
    env = cli_env({"SYNTHLOOP_FAULT_DELAY": str(delay), "SYNTHLOOP_FAULT_TRACE": str(trace)})
    env["PYTHONPATH"] = f"{Path(__file__).resolve().parent}:{env['PYTHONPATH']}"
    with open(stderr, "wb") as errors:
        return subprocess.Popen([sys.executable, str(script), str(run_dir)], env=env, stdout=subprocess.DEVNULL,
                                stderr=errors)


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


def wait_for(process: subprocess.Popen[bytes], trace: Path, phase: str, occurrence: int) -> bool:
    """Wait until ``phase`` has been reached ``occurrence`` times; False if the process ended first."""
    while process.poll() is None:
        lines = trace.read_text().splitlines() if trace.exists() else []
        if sum(line.split(" ", 1)[0] == phase for line in lines) >= occurrence:
            return True
        time.sleep(0.002)
    return False


def kill_repeatedly(spawn: Callable[[Path, Path], subprocess.Popen[bytes]], run_dir: Path, tmp_path: Path, *,
                    phases: Mapping[str, int], kills: int, seed: int, delay: float, budget: float) -> Counter[str]:
    """Start the run with ``spawn(trace, stderr)`` and SIGKILL it at a random moment, again and again,
    until it has been killed ``kills`` times (or has finished); return where the kills landed.

    Each moment is a fault point drawn with ``phases``' weights, which occurrence of it, and a random
    offset inside its window (the run sleeps ``delay`` at every point). After every kill the
    committed state must be intact and within ``budget``.
    """
    names = list(phases)
    weights = np.array(list(phases.values()), dtype=float) / sum(phases.values())
    rng = np.random.default_rng(seed)
    killed_in: Counter[str] = Counter()
    attempts = 0
    while sum(killed_in.values()) < kills:
        attempts += 1
        assert attempts < 4 * kills, f"the run kept finishing before it could be killed: {killed_in}"
        trace, stderr = tmp_path / f"trace-{attempts}", tmp_path / f"stderr-{attempts}"
        phase = str(rng.choice(names, p=weights))
        process = spawn(trace, stderr)
        reached = wait_for(process, trace, phase, occurrence=int(rng.integers(1, 3)))
        time.sleep(float(rng.uniform(0.0, delay)))
        if not reached or process.poll() is not None:
            process.wait()
            assert process.returncode == 0, stderr.read_text()
            if (run_dir / "manifest.json").exists() and json.loads((run_dir / "manifest.json").read_text()).get("finished"):
                break
            continue
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed_in[trace.read_text().splitlines()[-1].split(" ", 1)[0]] += 1
        assert process.returncode == -signal.SIGKILL
        if (run_dir / "manifest.json").exists():  # the committed state is intact after every kill
            RunStore(run_dir).read_manifest()
            assert spent(run_dir) <= budget
    return killed_in
