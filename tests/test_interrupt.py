"""Ctrl-C on `run`: one line with what is committed and the exact resume command (exit 130); the
resumed run ends where an uninterrupted one ends."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from crashsafe_support import CRASH_CONFIG, FAST, cli, cli_env, snapshot
from synthloop.configs import load_config
from synthloop.experiments import run_config


def test_sigint_prints_the_resume_command_and_resuming_matches(tmp_path: Path) -> None:
    run_config(load_config(CRASH_CONFIG), run_dir=tmp_path / "reference" / "crash", open_store=FAST)
    trace = tmp_path / "trace"
    # held after iteration 1's training (never released), so however slow the machine the run is
    # mid-way when the signal comes, instead of perhaps already finished
    env = cli_env({"SYNTHLOOP_FAULT_DELAY": "0.02", "SYNTHLOOP_FAULT_TRACE": str(trace),
                   "SYNTHLOOP_FAULT_WAIT": f"train@2:{tmp_path / 'never'}"})
    runs = tmp_path / "runs"
    process = subprocess.Popen([sys.executable, "-m", "synthloop.cli", "run", str(CRASH_CONFIG), "--runs-dir",
                                str(runs)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:  # wait for iteration 1's first part
        if trace.exists() and "generate 1/0" in trace.read_text():
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it reached iteration 1"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    last = stderr.strip().splitlines()[-1]
    assert "interrupted" in last and f"`synthloop resume {runs / 'crash'}`" in last, last
    assert "1 iterations committed" in last or "2 iterations committed" in last, last
    assert "Traceback" not in stderr
    cli("resume", runs / "crash")
    assert snapshot(runs / "crash") == snapshot(tmp_path / "reference" / "crash")
