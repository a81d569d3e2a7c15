"""The kill test on the loop's new stages: a run with the weighted prompt policy scored by the
student (a priced ``score`` stage) and an accumulating training set, started from Python
(``stages_run.py``), SIGKILLed at >= 20 random moments and resumed after each, ends exactly where an
uninterrupted run ends: metrics, ledger, selected ids, policy weights, pool contents, checkpoint
bytes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from crashsafe_support import ROOT, candidate_ids, kill_repeatedly, snapshot, spawn_script
from stages_run import BUDGET, run_stages
from synthloop.store import RunStore

PHASES = {"generate": 3, "verify": 2, "write": 4, "append": 2, "commit": 3, "cleanup": 1, "checkpoint": 2,
          "train": 2, "evaluate": 1}
DELAY = 0.02
SCRIPT = ROOT / "tests" / "stages_run.py"


def _spawn(run_dir: Path, trace: Path, stderr: Path) -> subprocess.Popen[bytes]:
    return spawn_script(SCRIPT, run_dir, trace, stderr, delay=DELAY)


def _state(run_dir: Path) -> dict[str, object]:
    """The policy's weights and the accumulated pool in the last checkpoint, as values."""
    folders = RunStore(run_dir).checkpoint_folders(RunStore(run_dir).manifest().iterations[-1].iteration)
    return {"weights": np.load(folders["prompt_policy"] / "weights.npy").tolist(),
            "pool": pq.read_table(folders["training_set"] / "pool.parquet").to_pydict(),
            "skill": (folders["learner"] / "skill.json").read_text()}


@pytest.mark.slow
def test_sigkill_a_run_of_every_new_stage_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    reference_dir = tmp_path / "reference"
    history = run_stages(reference_dir, fsync=False)
    assert len(history) >= 4 and all(m.cost["score"] > 0 for m in history if m.n_generated)
    assert [m.n_carried for m in history[1:]] == [m.n_trained - m.n_selected for m in history[1:]]
    reference = snapshot(reference_dir)

    run_dir = tmp_path / "killed"
    killed_in = kill_repeatedly(lambda trace, stderr: _spawn(run_dir, trace, stderr), run_dir, tmp_path,
                                phases=PHASES, kills=20, seed=20261201, delay=DELAY, budget=BUDGET)
    print(f"killed {sum(killed_in.values())} times, in: {dict(killed_in)}")
    assert sum(killed_in.values()) >= 20, killed_in
    assert {"generate", "append", "checkpoint", "commit"} <= set(killed_in), killed_in

    finished = _spawn(run_dir, tmp_path / "trace-final", tmp_path / "stderr-final")
    assert finished.wait() == 0, (tmp_path / "stderr-final").read_text()
    result = snapshot(run_dir)
    assert result["summaries"] == reference["summaries"]  # metrics and selected-set hashes
    assert result["ledger"] == reference["ledger"]  # the score stage charged once, like every other
    assert result["selected"] == reference["selected"]
    assert result["checkpoint"] == reference["checkpoint"]  # every component's checkpoint, byte for byte
    assert _state(run_dir) == _state(reference_dir)  # policy weights and pool contents as values
    assert result == reference
    assert len(candidate_ids(run_dir)) == len(set(candidate_ids(run_dir))) == len(candidate_ids(reference_dir))
