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

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from crashsafe_support import FAST, ROOT, candidate_ids, cli, cli_env, snapshot, spent
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


def _wait_for(process: subprocess.Popen[bytes], trace: Path, phase: str, occurrence: int) -> bool:
    """Wait until ``phase`` has been reached ``occurrence`` times; False if the process ended first."""
    while process.poll() is None:
        lines = trace.read_text().splitlines() if trace.exists() else []
        if sum(line.split(" ", 1)[0] == phase for line in lines) >= occurrence:
            return True
        time.sleep(0.002)
    return False


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_matches_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    reference_dir = tmp_path / "reference"
    # the uninterrupted run, in process: fsync changes no byte
    run_config(load_config(KILL_CONFIG), run_dir=reference_dir / "crash", open_store=FAST)
    reference = snapshot(reference_dir / "crash")
    budget = load_config(KILL_CONFIG).budget.total
    names = list(PHASES)
    weights = np.array(list(PHASES.values()), dtype=float) / sum(PHASES.values())

    rng = np.random.default_rng(20261123)  # its first 20 phases include every one asserted below
    runs_dir = tmp_path / "killed"
    run_dir = runs_dir / "crash"
    killed_in: Counter[str] = Counter()
    attempts = 0
    while sum(killed_in.values()) < KILLS:
        attempts += 1
        assert attempts < 4 * KILLS, f"the run kept finishing before it could be killed: {killed_in}"
        trace = tmp_path / f"trace-{attempts}"
        phase = str(rng.choice(names, p=weights))
        process = _spawn(runs_dir, trace, tmp_path / f"stderr-{attempts}")
        reached = _wait_for(process, trace, phase, occurrence=int(rng.integers(1, 3)))
        time.sleep(float(rng.uniform(0.0, DELAY)))
        if not reached or process.poll() is not None:
            process.wait()
            assert process.returncode == 0, (tmp_path / f"stderr-{attempts}").read_text()
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
