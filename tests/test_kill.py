"""The kill test: a real run, killed with SIGKILL at >= 20 random moments, resumed after each kill,
ends exactly where an uninterrupted run with the same seed ends.

Kill moments are drawn from a fixed RNG: a fault point (generation, verification, a file written
but not yet renamed, half of a part's journal record appended, a checkpoint, training, evaluation, a
commit about to be made, old files about to be deleted), which occurrence of it, and a random offset
inside its window. The run sleeps
``SYNTHLOOP_FAULT_DELAY`` at every point and traces them (``synthloop.faults``), so the windows are
wide enough to hit on a shared CI machine. fsync stays on: this is the real commit protocol.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from crashsafe_support import FAST, ROOT, candidate_ids, cli, cli_env, kill_repeatedly, snapshot
from synthloop.configs import load_config
from synthloop.experiments import run_config
from synthloop.store import RunStore

# Per-part windows come up often, per-iteration ones (checkpoint, train, evaluate) once an iteration:
# weights keep the run from finishing before it has been killed often enough.
PHASES = {"generate": 3, "verify": 2, "write": 4, "append": 2, "commit": 3, "cleanup": 2, "checkpoint": 1,
          "train": 1, "evaluate": 1}
DELAY = 0.02
KILL_CONFIG = ROOT / "tests" / "data" / "kill.yaml"
KILLS = 20


def _spawn(runs_dir: Path, trace: Path, stderr: Path) -> subprocess.Popen[bytes]:
    run_dir = runs_dir / "crash"
    args = ["resume", str(run_dir)] if (run_dir / "manifest.json").exists() else \
        ["run", str(KILL_CONFIG), "--runs-dir", str(runs_dir)]
    env = cli_env({"SYNTHLOOP_FAULT_DELAY": str(DELAY), "SYNTHLOOP_FAULT_TRACE": str(trace)})
    with open(stderr, "wb") as errors:
        return subprocess.Popen([sys.executable, "-m", "synthloop.cli", *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=errors)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_matches_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    reference_dir = tmp_path / "reference"
    # the uninterrupted run, in process: fsync changes no byte
    run_config(load_config(KILL_CONFIG), run_dir=reference_dir / "crash", open_store=FAST)
    reference = snapshot(reference_dir / "crash")
    budget = load_config(KILL_CONFIG).budget.total
    runs_dir = tmp_path / "killed"
    run_dir = runs_dir / "crash"
    killed_in = kill_repeatedly(lambda trace, stderr: _spawn(runs_dir, trace, stderr), run_dir, tmp_path,
                                phases=PHASES, kills=KILLS, seed=20261123, delay=DELAY, budget=budget)
    print(f"killed {sum(killed_in.values())} times, in: {dict(killed_in)}")
    assert sum(killed_in.values()) >= 20, killed_in
    assert {"generate", "write", "append", "train", "commit"} <= set(killed_in), killed_in

    finished = cli("resume", run_dir) if (run_dir / "manifest.json").exists() else \
        cli("run", KILL_CONFIG, "--runs-dir", runs_dir)
    assert finished.returncode == 0
    result = snapshot(run_dir)
    assert result["summaries"] == reference["summaries"]  # metrics, selected-set hashes, costs
    assert result["ledger"] == reference["ledger"]  # every charge once: no budget spent twice
    assert result["candidates"] == reference["candidates"]  # every sample, same ids, same payload
    assert result["selected"] == reference["selected"]
    assert result["checkpoint"] == reference["checkpoint"]  # the final model, byte for byte
    assert result == reference
    ids = candidate_ids(run_dir)
    assert len(ids) == len(set(ids)) == len(candidate_ids(reference_dir / "crash"))  # none lost or duplicated
    assert result["summaries"][-1]["cumulative_cost"] <= budget
    assert RunStore(run_dir).clean() == []
