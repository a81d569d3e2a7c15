"""One writer per run directory: racing ``run``, ``run --overwrite`` and ``resume`` pairs of the real
command line, and readers that look at a run while it is written.

Each pair starts two processes at once on one run directory. Whichever takes the lock first is held
right after taking it (``SYNTHLOOP_FAULT_WAIT=locked:FILE``) until the other has exited, so the two
always overlap however the machine schedules them: exactly one must proceed, the other must exit 1
in one line naming the holder's pid. Afterwards ``check`` passes and the run equals an
uninterrupted one.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from crashsafe_support import FAST, cli_env, failing_at, snapshot, stores
from synthloop.configs import load_config
from synthloop.experiments import run_config
from synthloop.runs import check_run
from synthloop.store import RunStore
from synthloop.views import run_summary

TINY = """\
name: tiny
seed: 11
task: {kind: gaussian, theta0: [1.0, 1.0], sigma: 1.0, kappa: 1.0}
learner: {kind: mle}
selector: {kind: reward_proportional}
schedule: {kind: constant, n0: auto, iterations: 2}
budget: {total: 40, unit: samples, costs: {generate: 0.02, verify: 0.01, train: 1.0}}
loop: {store_candidates: all, chunk_size: 12, keep_checkpoints: 1}
"""
AT_ONCE = 5  # pairs started together (10 processes on a shared 2-core machine)


@dataclass
class Pair:
    run_dir: Path
    release: Path
    processes: list[subprocess.Popen[str]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, object]]:
    """The config, an uninterrupted run of it, and what that run holds."""
    folder = tmp_path_factory.mktemp("tiny")
    config = folder / "tiny.yaml"
    config.write_text(TINY)
    run_config(load_config(config), run_dir=folder / "reference", open_store=FAST)
    return config, folder / "reference", snapshot(folder / "reference")


def _start(args: list[str], run_dir: Path, release: Path) -> Pair:
    env = cli_env({"SYNTHLOOP_FAULT_NO_FSYNC": "1", "SYNTHLOOP_FAULT_WAIT": f"locked:{release}"})
    processes = [subprocess.Popen([sys.executable, "-m", "synthloop.cli", *args], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    return Pair(run_dir, release, processes)


def _refused(pair: Pair) -> subprocess.Popen[str]:
    """The first of the pair to end must be the refused one; return the other, the holder."""
    deadline = time.monotonic() + 120
    while all(p.poll() is None for p in pair.processes):
        assert time.monotonic() < deadline, "neither writer ended: both are waiting, so both took the lock"
        time.sleep(0.01)
    loser = next(p for p in pair.processes if p.poll() is not None)
    holder = next(p for p in pair.processes if p is not loser)
    errors = loser.communicate()[1]
    assert loser.returncode == 1, errors
    lines = [line for line in errors.splitlines() if line.startswith("synthloop: ")]
    assert len(lines) == 1 and lines[0].startswith(f"synthloop: {pair.run_dir} is in use by process {holder.pid} ")
    assert holder.poll() is None  # still holding the lock while the other was refused
    return holder


def _race(pairs: list[tuple[list[str], Path]], tmp_path: Path, reference: dict[str, object]) -> None:
    for start in range(0, len(pairs), AT_ONCE):
        batch = [_start(args, run_dir, tmp_path / f"release-{start + k}")
                 for k, (args, run_dir) in enumerate(pairs[start:start + AT_ONCE])]
        holders = [_refused(pair) for pair in batch]
        for pair in batch:
            pair.release.touch()  # now the holders may go on
        for holder in holders:
            errors = holder.communicate(timeout=120)[1]
            assert holder.returncode == 0, errors
    for _, run_dir in pairs:
        assert check_run(RunStore(run_dir)) == []
        assert snapshot(run_dir) == reference


@pytest.mark.slow
def test_racing_run_pairs_admit_exactly_one(tiny: tuple[Path, Path, dict[str, object]], tmp_path: Path) -> None:
    config, _, reference = tiny
    pairs = [(["run", str(config), "--runs-dir", str(tmp_path / f"runs-{k}")], tmp_path / f"runs-{k}" / "tiny")
             for k in range(20)]
    _race(pairs, tmp_path, reference)


@pytest.mark.slow
def test_racing_overwrite_pairs_admit_exactly_one(tiny: tuple[Path, Path, dict[str, object]],
                                                  tmp_path: Path) -> None:
    config, finished, reference = tiny
    pairs = []
    for k in range(10):  # each over an existing run, which the one admitted replaces
        shutil.copytree(finished, tmp_path / f"runs-{k}" / "tiny")
        pairs.append((["run", str(config), "--runs-dir", str(tmp_path / f"runs-{k}"), "--overwrite"],
                      tmp_path / f"runs-{k}" / "tiny"))
    _race(pairs, tmp_path, reference)


@pytest.mark.slow
def test_concurrent_resume_pairs_on_a_killed_run_admit_exactly_one(
    tiny: tuple[Path, Path, dict[str, object]], tmp_path: Path,
) -> None:
    config, _, reference = tiny
    stopped = tmp_path / "stopped"
    with pytest.raises(OSError, match="injected"):  # stopped in iteration 1, two parts committed
        run_config(load_config(config), run_dir=stopped, open_store=stores(failing_at("generate:11")))
    open_ = RunStore(stopped).open_iteration()
    assert open_ is not None and (open_.iteration, len(open_.parts)) == (1, 2)
    pairs = []
    for k in range(10):
        shutil.copytree(stopped, tmp_path / f"run-{k}")
        pairs.append((["resume", str(tmp_path / f"run-{k}")], tmp_path / f"run-{k}"))
    _race(pairs, tmp_path, reference)


@pytest.mark.slow
def test_readers_never_see_a_half_written_state(tiny: tuple[Path, Path, dict[str, object]], tmp_path: Path) -> None:
    """``check`` and ``inspect``'s summary, run over and over while a writer commits parts and
    iterations (slowed down at every crash-relevant point), never find a damaged file."""
    config, _, reference = tiny
    env = cli_env({"SYNTHLOOP_FAULT_NO_FSYNC": "1", "SYNTHLOOP_FAULT_DELAY": "0.01"})
    writer = subprocess.Popen([sys.executable, "-m", "synthloop.cli", "run", str(config), "--runs-dir",
                               str(tmp_path)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run_dir, looks = tmp_path / "tiny", 0
    while writer.poll() is None:
        if (run_dir / "manifest.json").exists():
            assert check_run(RunStore(run_dir)) == []
            assert len(run_summary(run_dir, content=True).iterations) <= 2
            looks += 1
    assert writer.communicate()[1].count("synthloop: ") == 0 and writer.returncode == 0
    assert looks >= 5 and snapshot(run_dir) == reference
