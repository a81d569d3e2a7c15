"""Disk: old checkpoints are pruned at each commit to what resume and repair need, a pruned run
still resumes exactly, and ``inspect`` shows what a run takes on disk, by part."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from crashsafe_support import CRASH_CONFIG, FAST, failing_at, snapshot, stores
from synthloop.cli import app
from synthloop.configs import parse_config
from synthloop.experiments import resume_run, run_config
from synthloop.runs import repair
from synthloop.store import RunStore
from synthloop.views import disk_use

runner = CliRunner()


def default_pruning_config() -> dict[str, object]:
    """The crash config (8 iterations) with the default ``loop.keep_checkpoints``."""
    data = yaml.safe_load(CRASH_CONFIG.read_text())
    del data["loop"]["keep_checkpoints"]
    return data


def bit_flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def checkpoint_folders(run_dir: Path) -> list[int]:
    return sorted(int(p.parent.name.removeprefix("iter-")) for p in run_dir.glob("iter-*/checkpoint"))


def test_a_long_run_keeps_only_the_checkpoints_resume_and_repair_need(tmp_path: Path) -> None:
    config = parse_config(default_pruning_config())
    reference = tmp_path / "reference"
    run_config(config, run_dir=reference, open_store=FAST)
    expected = snapshot(reference)
    # 8 iterations: the last two (6, 7) and the sparse one (4, a 5th iteration); nothing else on disk.
    assert expected["checkpoints_kept"] == [4, 6, 7] and checkpoint_folders(reference) == [4, 6, 7]
    use = disk_use(reference)
    on_disk = sum(p.stat().st_size for p in reference.rglob("*") if p.is_file())
    assert use.n_checkpoints == 3 and use.total == on_disk and use.logs == 0
    assert use.checkpoints == sum(p.stat().st_size for p in reference.glob("iter-*/checkpoint/**/*") if p.is_file())

    # Stopped in iteration 5 (its training fails), then resumed: pruned as it went, and exact.
    run_dir = tmp_path / "stopped"
    with pytest.raises(OSError, match="injected"):
        run_config(config, run_dir=run_dir, open_store=stores(failing_at("train:6")))
    assert len(RunStore(run_dir).manifest().iterations) == 5 and checkpoint_folders(run_dir) == [3, 4]
    resume_run(run_dir, open_store=FAST)
    assert snapshot(run_dir) == expected and checkpoint_folders(run_dir) == [4, 6, 7]

    # Damage in the last iteration: repair rolls back one iteration, to the checkpoint kept for it.
    damaged = shutil.copytree(reference, tmp_path / "damaged")
    bit_flip(damaged / "iter-0007" / "selected.parquet")
    result = repair(FAST(damaged))
    assert result.kept_iterations == 7 and result.removed_iterations == [7]
    resume_run(damaged, open_store=FAST)
    assert snapshot(damaged) == expected


def test_inspect_shows_disk_use_by_part(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_config(parse_config(default_pruning_config()), run_dir=run_dir, open_store=FAST)
    (run_dir / "logs").mkdir()
    (run_dir / "logs" / "transformers.log").write_bytes(b"x" * 3000)
    use = disk_use(run_dir)
    assert use.logs == 3000 and use.n_checkpoints == 3 and use.store > use.checkpoints > 0
    result = runner.invoke(app, ["inspect", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert use.line() in result.output
    assert "logs 2.9 KiB)" in use.line() and ", checkpoints " in use.line() and " in 3, " in use.line()
