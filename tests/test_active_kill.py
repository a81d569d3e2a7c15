"""The kill test on the active family: the real CLI runs the tiny active config (student scoring,
the programmatic teacher, an accumulating training set), is SIGKILLed at random moments and resumed
after each, and ends exactly where an uninterrupted run ends: ledger, selected rows, the policy's
seen seeds, the pool and the student, byte for byte.

Each CLI process is forked from a server process that has already imported torch, transformers and
synthloop (``multiprocessing``'s forkserver with a preload list), instead of starting a fresh
interpreter: a fresh one spends about 7 s of a 10 s run importing, and the test starts eight. The
forked child is still its own process, running ``synthloop.cli.main`` with its own arguments and
environment, and it is SIGKILLed as a crash would kill it; nothing of a run is computed before the
fork (the preload only imports modules).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from crashsafe_support import FAST, ROOT, cli_env, kill_repeatedly, snapshot
from synthloop.configs import load_config
from synthloop.experiments import run_config
from torch_threads import one_thread  # noqa: F401  (autouse: the reference run takes one torch thread too)

CONFIG = ROOT / "tests" / "data" / "active-tiny.yaml"
PHASES = {"generate": 3, "verify": 2, "write": 3, "append": 2, "commit": 3, "checkpoint": 2, "train": 2}
DELAY = 0.05
#: what a run of the tiny active config imports on its way (a module missing here is imported by
#: the child itself, only slower)
PRELOAD = ["torch", "transformers", "transformers.models.gpt2.modeling_gpt2", "transformers.models.auto.tokenization_auto",
           "transformers.tokenization_utils_tokenizers", "transformers.convert_slow_tokenizer", "tokenizers",
           "pandas", "pyarrow.parquet", "reasoning_gym", "math_verify", "synthloop.cli", "synthloop.experiments",
           "synthloop.families.active", "synthloop.models.hf", "synthloop.models.scratch", "synthloop.models.scoring",
           "synthloop.tasks.teachers", "test_active_kill"]


def cli_main(argv: list[str], env: dict[str, str], stderr: str) -> None:
    """The child: ``python -m synthloop.cli ARGV`` with environment ``env``, stderr to a file."""
    os.environ.clear()
    os.environ.update(env)  # the fault variables are read when the run opens its store
    with open(stderr, "wb") as errors, open(os.devnull, "wb") as quiet:
        os.dup2(errors.fileno(), 2)
        os.dup2(quiet.fileno(), 1)
    import torch

    torch.set_num_threads(1)  # as the reference run (one_thread): float sums, and so the bytes, follow it
    sys.argv = ["synthloop", *argv]
    from synthloop.cli import main

    main()


class Forked:
    """A forked ``multiprocessing.Process`` seen as the ``subprocess.Popen`` that ``kill_repeatedly``
    drives (poll, wait, returncode, send_signal); a signal's exit code is minus its number in both."""

    def __init__(self, process: Any) -> None:
        self.process = process

    @property
    def returncode(self) -> int | None:
        return cast("int | None", self.process.exitcode)

    def poll(self) -> int | None:
        return None if self.process.is_alive() else self.returncode

    def wait(self) -> int | None:
        self.process.join()
        return self.returncode

    def send_signal(self, number: int) -> None:
        os.kill(self.process.pid, number)


@pytest.fixture(scope="module")
def forkserver() -> Iterator[multiprocessing.context.BaseContext]:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    multiprocessing.forkserver.ensure_running()  # imports while the reference run computes
    yield context
    # the server would otherwise hold its imported modules until the test session ends (3.11 has
    # no public way to stop it); it holds no state, so SIGKILL spares its slow interpreter shutdown
    server: Any = getattr(multiprocessing.forkserver, "_forkserver")  # noqa: B009  (private: typed Any)
    if server._forkserver_pid is not None:
        os.kill(server._forkserver_pid, signal.SIGKILL)
    server._stop()


def _spawn(context: Any, runs_dir: Path, trace: Path, stderr: Path, *, delay: float = DELAY) -> subprocess.Popen[bytes]:
    """``synthloop run`` the tiny config, or ``synthloop resume`` it once it has a manifest."""
    run_dir = runs_dir / "active-tiny"
    args = ["resume", str(run_dir)] if (run_dir / "manifest.json").exists() else \
        ["run", str(CONFIG), "--runs-dir", str(runs_dir)]
    env = cli_env({"SYNTHLOOP_FAULT_DELAY": str(delay), "SYNTHLOOP_FAULT_TRACE": str(trace)})
    process = context.Process(target=cli_main, args=(args, env, str(stderr)))
    process.start()
    return cast("subprocess.Popen[bytes]", Forked(process))


def test_sigkill_an_active_run_then_resume_matches_an_uninterrupted_run(
        forkserver: multiprocessing.context.BaseContext, tmp_path: Path) -> None:
    run_config(load_config(CONFIG), run_dir=tmp_path / "reference" / "active-tiny", open_store=FAST)
    reference = snapshot(tmp_path / "reference" / "active-tiny")
    runs_dir = tmp_path / "killed"
    run_dir = runs_dir / "active-tiny"
    killed_in = kill_repeatedly(lambda trace, stderr: _spawn(forkserver, runs_dir, trace, stderr), run_dir,
                                tmp_path, phases=PHASES, kills=6, seed=20261201, delay=DELAY,
                                budget=load_config(CONFIG).budget.total)
    assert sum(killed_in.values()) >= 6, killed_in
    finished = _spawn(forkserver, runs_dir, tmp_path / "trace-last", tmp_path / "stderr-last", delay=0.0)
    assert finished.wait() == 0, (tmp_path / "stderr-last").read_text()
    result = snapshot(run_dir)
    assert result["ledger"] == reference["ledger"]  # the teacher and the scoring charged once each
    assert result["selected"] == reference["selected"]
    assert result["checkpoint"] == reference["checkpoint"]  # seen seeds, pool, student
    assert result == reference
