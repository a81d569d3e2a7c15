"""The kill test on the active family: the real CLI runs the tiny active config (student scoring,
the programmatic teacher, an accumulating training set), is SIGKILLed at random moments and resumed
after each, and ends exactly where an uninterrupted run ends: ledger, selected rows, the policy's
seen seeds, the pool and the student, byte for byte."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from crashsafe_support import FAST, ROOT, cli, cli_env, kill_repeatedly, snapshot
from synthloop.configs import load_config
from synthloop.experiments import run_config

CONFIG = ROOT / "tests" / "data" / "active-tiny.yaml"
PHASES = {"generate": 3, "verify": 2, "write": 3, "append": 2, "commit": 3, "checkpoint": 2, "train": 2}
DELAY = 0.05


def _spawn(runs_dir: Path, trace: Path, stderr: Path) -> subprocess.Popen[bytes]:
    run_dir = runs_dir / "active-tiny"
    args = ["resume", str(run_dir)] if (run_dir / "manifest.json").exists() else \
        ["run", str(CONFIG), "--runs-dir", str(runs_dir)]
    env = cli_env({"SYNTHLOOP_FAULT_DELAY": str(DELAY), "SYNTHLOOP_FAULT_TRACE": str(trace)})
    with open(stderr, "wb") as errors:
        return subprocess.Popen([sys.executable, "-m", "synthloop.cli", *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=errors)


@pytest.mark.slow
def test_sigkill_an_active_run_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    run_config(load_config(CONFIG), run_dir=tmp_path / "reference" / "active-tiny", open_store=FAST)
    reference = snapshot(tmp_path / "reference" / "active-tiny")
    runs_dir = tmp_path / "killed"
    run_dir = runs_dir / "active-tiny"
    killed_in = kill_repeatedly(lambda trace, stderr: _spawn(runs_dir, trace, stderr), run_dir, tmp_path,
                                phases=PHASES, kills=6, seed=20261201, delay=DELAY,
                                budget=load_config(CONFIG).budget.total)
    assert sum(killed_in.values()) >= 6, killed_in
    finished = cli("resume", run_dir) if (run_dir / "manifest.json").exists() else \
        cli("run", CONFIG, "--runs-dir", runs_dir)
    assert finished.returncode == 0
    result = snapshot(run_dir)
    assert result["ledger"] == reference["ledger"]  # the teacher and the scoring charged once each
    assert result["selected"] == reference["selected"]
    assert result["checkpoint"] == reference["checkpoint"]  # seen seeds, pool, student
    assert result == reference
