"""Helpers for the crash-safety tests: run the real CLI, and reduce a run directory to what must match."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
CRASH_CONFIG = ROOT / "tests" / "data" / "crash.yaml"


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
    and payload), the last checkpoint's bytes."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    iterations = manifest["iterations"]
    candidates, selected = [], []
    for entry in iterations:
        for file in entry["files"]:
            if "/candidates/" in file["path"]:
                candidates.append(pq.read_table(run_dir / file["path"]).to_pydict())
            elif file["path"].endswith("selected.parquet"):
                selected.append(pq.read_table(run_dir / file["path"]).to_pydict())
    last = iterations[-1]
    checkpoint = {f["path"]: (run_dir / f["path"]).read_bytes() for f in last["files"] if "/checkpoint/" in f["path"]}
    return {
        "initial": manifest["initial"],
        "summaries": [without_seconds(e["summary"]) for e in iterations],
        "ledger": [without_seconds(e["ledger"]) for e in iterations],
        "candidates": candidates,
        "selected": selected,
        "checkpoint": checkpoint,
        "finished": manifest.get("finished", False),
    }


def candidate_ids(run_dir: Path) -> list[tuple[int, int, int]]:
    ids = []
    for path in sorted(run_dir.glob("iter-*/candidates/part-*.parquet")):
        table = pq.read_table(path, columns=["iteration", "part", "index"]).to_pydict()
        ids.extend(zip(table["iteration"], table["part"], table["index"], strict=True))
    return ids
