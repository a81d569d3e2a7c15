"""Comparisons that resume, refuse to mix configs, run cells in parallel and say what they do.

The real command line in subprocesses, on the Gaussian example at a tiny budget. The kill test
SIGKILLs the whole process group (the command and its worker processes) at random moments, then
checks that the finished comparison equals one that was never interrupted.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from rich.console import Console

from crashsafe_support import FAST, ROOT, cli, cli_env, snapshot, spent, wait_for
from synthloop.compare_progress import CompareProgress
from synthloop.comparisons import compare, first_difference
from synthloop.configs import load_config
from synthloop.store import RunDirectoryError, RunStore


def tiny_config(tmp_path: Path, *, seeds: int = 2, budget: float = 600, name: str = "config.yaml") -> Path:
    config = yaml.safe_load((ROOT / "examples" / "gaussian.yaml").read_text())
    config["budget"]["total"] = budget
    config["schedule"] = {"kind": "exponential", "growth": 1.0, "n0": "auto", "iterations": 4}
    config["compare"] = {"seeds": seeds, "schedules": {
        "constant": {"kind": "constant", "n0": "auto", "iterations": 4},
        "exponential": {"kind": "exponential", "growth": 1.0, "n0": "auto", "iterations": 4}}}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def cells(out: Path) -> list[Path]:
    return sorted(out.glob("runs/*/seed-*"))


def test_compare_prints_a_line_per_cell_and_the_progress_when_not_on_a_terminal(tmp_path: Path) -> None:
    result = cli("compare", tiny_config(tmp_path), "--out", tmp_path / "out")
    lines = [line for line in result.stderr.splitlines() if line.startswith("[synthloop] ")]
    assert lines[0] == ("[synthloop] compare: 4 cells (2 schedules x 2 seeds), 0 already finished, "
                        "0 to resume; 1 at a time")
    for label in ("constant/seed-0", "constant/seed-1", "exponential/seed-0", "exponential/seed-1"):
        assert f"[synthloop] cell {label}: started" in lines
        assert any(line.startswith(f"[synthloop] cell {label}: finished in ") and " gap=" in line for line in lines)
    assert lines[-1].endswith("4/4 cells done, ETA 0:00")
    assert "2/4 cells done, ETA " in result.stderr
    assert "| exponential" in (tmp_path / "out" / "table.md").read_text()


def _compare(config: Path, out: Path, **options: object) -> tuple[dict, str]:
    """The comparison in this process, and its progress lines."""
    lines = io.StringIO()
    progress = CompareProgress(console=Console(file=io.StringIO()), stream=lines)
    with progress:
        summary = compare(load_config(config), schedules=None, seeds=2, out=out, progress=progress,
                          open_store=FAST, **options)  # type: ignore[arg-type]
    return summary, lines.getvalue()


def test_a_rerun_reads_finished_cells_back_and_workers_do_not_change_the_table(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    _compare(config, tmp_path / "one")
    stamps = {p: (p / "manifest.json").stat().st_mtime_ns for p in cells(tmp_path / "one")}
    _, lines = _compare(config, tmp_path / "one")
    assert "4 already finished" in lines and lines.count(": read back, gap=") == 4
    assert stamps == {p: (p / "manifest.json").stat().st_mtime_ns for p in cells(tmp_path / "one")}
    _, lines = _compare(config, tmp_path / "two", workers=2)
    assert "2 at a time" in lines
    first = json.loads((tmp_path / "one" / "compare.json").read_text())
    assert json.loads((tmp_path / "two" / "compare.json").read_text()) == first
    assert (tmp_path / "two" / "table.md").read_text() == (tmp_path / "one" / "table.md").read_text()


def test_resume_of_a_comparison_folder_redoes_only_what_is_missing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _compare(tiny_config(tmp_path), out)
    table = (out / "table.md").read_text()
    reference = snapshot(out / "runs" / "exponential" / "seed-1")
    for name in ("compare.json", "table.md"):
        (out / name).unlink()
    (out / "runs" / "exponential" / "seed-1" / "manifest.json").unlink()  # as if killed before its first commit
    (out / "runs" / "exponential" / "seed-1" / "manifest.backup.json").unlink(missing_ok=True)
    resumed = cli("resume", out)
    assert "3 already finished" in resumed.stderr and "cell exponential/seed-1: started" in resumed.stderr
    assert (out / "table.md").read_text() == table
    assert snapshot(out / "runs" / "exponential" / "seed-1") == reference


def test_a_folder_or_a_cell_of_another_config_is_refused_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    compare(load_config(tiny_config(tmp_path)), schedules=["constant"], seeds=1, out=out, open_store=FAST)
    other = tiny_config(tmp_path, budget=800, name="other.yaml")
    refused = cli("compare", other, "--out", out, check=False)
    assert refused.returncode == 1
    assert refused.stderr == (f"synthloop: {out} holds a comparison of another config (budget.total: 600.0 "
                              "there, 800.0 here); use another --out\n")
    (out / "compare.yaml").unlink()  # an older folder without one: each cell is checked all the same
    with pytest.raises(RunDirectoryError) as refusal:
        compare(load_config(other), schedules=None, seeds=1, out=out, open_store=FAST)
    assert str(refusal.value) == (f"{out / 'runs' / 'constant' / 'seed-0'} holds a run of another config "
                                  "(budget.total: 600.0 there, 800.0 here); use another --out, or remove that "
                                  "folder to run the cell again")
    assert not (out / "compare.yaml").exists() and not (out / "runs" / "exponential").exists()  # nothing written


def test_ctrl_c_says_how_to_finish_and_resume_gives_the_uninterrupted_table(tmp_path: Path) -> None:
    config, out = tiny_config(tmp_path), tmp_path / "out"
    compare(load_config(config), schedules=None, seeds=2, out=tmp_path / "reference", open_store=FAST)
    trace = tmp_path / "trace"
    # every worker is held at its third commit (never released): the comparison cannot finish before
    # the signal, however slow the machine
    env = cli_env({"SYNTHLOOP_FAULT_DELAY": str(DELAY), "SYNTHLOOP_FAULT_TRACE": str(trace),
                   "SYNTHLOOP_FAULT_WAIT": f"commit@3:{tmp_path / 'never'}"})
    process = subprocess.Popen([sys.executable, "-m", "synthloop.cli", "compare", str(config), "--out", str(out),
                                "--workers", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    assert wait_for(process, trace, "commit", occurrence=6), "it finished before it could be interrupted"
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends: the command and its workers
    stderr = process.communicate(timeout=120)[1].decode()
    assert process.returncode == 130
    assert stderr.splitlines()[-1] == (f"synthloop: interrupted; finished cells are kept in {out}; "
                                       f"`synthloop resume {out}` finishes the comparison")
    assert "Traceback" not in stderr
    cli("resume", out)
    assert (out / "table.md").read_text() == (tmp_path / "reference" / "table.md").read_text()


def test_first_difference_names_the_key() -> None:
    assert first_difference({"a": {"b": [1, 2]}, "c": 1}, {"a": {"b": [1, 3]}, "c": 1}) == "a.b: [1, 2] there, [1, 3] here"
    assert first_difference({"a": 1}, {"a": 1, "b": None}) is None
    assert first_difference({"a": 1}, {"a": 1, "b": 2}) == "b: null there, 2 here"


# -- killed at random moments ------------------------------------------------------------------

PHASES = {"generate": 3, "verify": 2, "write": 3, "append": 2, "commit": 3, "checkpoint": 1, "train": 1,
          "evaluate": 1}
DELAY = 0.02
KILLS = 6


def _spawn(config: Path, out: Path, trace: Path, stderr: Path, rng: np.random.Generator) -> subprocess.Popen[bytes]:
    """``compare`` (with 1 or 2 workers) or ``resume``, in a process group of its own."""
    workers = str(int(rng.integers(1, 3)))
    args = ["resume", str(out)] if (out / "compare.yaml").exists() and rng.random() < 0.5 else \
        ["compare", str(config), "--out", str(out), "--workers", workers]
    env = cli_env({"SYNTHLOOP_FAULT_DELAY": str(DELAY), "SYNTHLOOP_FAULT_TRACE": str(trace)})
    with open(stderr, "wb") as errors:
        return subprocess.Popen([sys.executable, "-m", "synthloop.cli", *args], env=env, stdout=subprocess.DEVNULL,
                                stderr=errors, start_new_session=True)


def _check_cells_intact(out: Path, budget: float) -> None:
    for cell in cells(out):
        if (cell / "manifest.json").exists():
            RunStore(cell).read_manifest()
            assert spent(cell) <= budget


@pytest.mark.slow
def test_a_comparison_killed_at_random_moments_ends_with_the_uninterrupted_table(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, seeds=3)
    reference = compare(load_config(config), schedules=None, seeds=3, out=tmp_path / "reference", open_store=FAST)
    out, rng = tmp_path / "killed", np.random.default_rng(20261201)
    names, weights = list(PHASES), np.array(list(PHASES.values()), dtype=float) / sum(PHASES.values())
    kills = attempts = 0
    killed_in: Counter[str] = Counter()
    while kills < KILLS:
        attempts += 1
        trace, stderr = tmp_path / f"trace-{attempts}", tmp_path / f"stderr-{attempts}"
        process = _spawn(config, out, trace, stderr, rng)
        reached = wait_for(process, trace, str(rng.choice(names, p=weights)), occurrence=int(rng.integers(1, 4)))
        time.sleep(float(rng.uniform(0.0, 4 * DELAY)))
        if not reached or process.poll() is not None:
            assert process.wait() == 0, stderr.read_text()
            break  # it finished first: the assertion below says how often it had been killed
        os.killpg(process.pid, signal.SIGKILL)  # the command and every worker process it started
        assert process.wait() == -signal.SIGKILL
        kills += 1
        killed_in[trace.read_text().splitlines()[-1].split(" ", 1)[0]] += 1
        _check_cells_intact(out, budget=600)
    print(f"killed {kills} times, in: {dict(killed_in)}")
    assert kills >= KILLS, f"the comparison finished after {kills} kills"
    finished = cli("resume", out) if (out / "compare.yaml").exists() else cli("compare", config, "--out", out)
    assert "6/6 cells done" in finished.stderr
    assert json.loads((out / "compare.json").read_text()) == json.loads(
        (tmp_path / "reference" / "compare.json").read_text())
    assert (out / "table.md").read_text() == (tmp_path / "reference" / "table.md").read_text()
    assert [r["final_mean"] for r in reference["rows"]] == [
        r["final_mean"] for r in json.loads((out / "compare.json").read_text())["rows"]]
    for cell in cells(tmp_path / "reference"):
        assert snapshot(out / cell.relative_to(tmp_path / "reference")) == snapshot(cell)
