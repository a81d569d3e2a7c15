"""Every damaged file of every kind is detected by every command that reads it, through the CLI.

What each command reads (``synthloop.views``): ``check`` and ``inspect`` check every file, sha256
included, and ``manifest.backup.json``; ``resume`` checks every file the run lists (it rewrites the
backup from an intact manifest rather than reading it); ``report`` and ``export`` check the size of
every listed file and the sha256 of what they open (manifest, config, iteration records, metrics and
ledger for ``report``; records and the selected set for ``export``). A bit flip leaves the size as it
was, so it is caught by the commands that hash the file.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crashsafe_support import CRASH_CONFIG, FAST, cli
from synthloop.cli import app
from synthloop.configs import load_config
from synthloop.experiments import run_config

runner = CliRunner()
FAST_ENV = {"SYNTHLOOP_FAULT_NO_FSYNC": "1"}

KINDS = {
    "metrics": "iter-0003/metrics.json",
    "ledger": "ledger.parquet",
    "selected": "iter-0007/selected.parquet",
    "candidates": "iter-0007/candidates/part-0001.parquet",
    "checkpoint": "iter-0007/checkpoint/learner/theta.json",
    "record": "iter-0005/record.json",
    "config": "config.yaml",
    "manifest": "manifest.json",
    "backup": "manifest.backup.json",
}
OPENED = {  # the kinds a command hashes; it checks the size of the rest (but the backup's)
    "report": {"metrics", "ledger", "record", "config", "manifest"},
    "export": {"selected", "record", "config", "manifest"},
}


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def bit_flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x04
    path.write_bytes(bytes(data))


DAMAGE: dict[str, Callable[[Path], None]] = {"truncated": truncate, "bit-flipped": bit_flip, "deleted": Path.unlink}


def detects(command: str, kind: str, damage: str) -> bool:
    if command in ("check", "inspect"):
        return True
    if command == "resume":
        return kind != "backup"
    return kind != "backup" and (damage != "bit-flipped" or kind in OPENED[command])


def invoke(command: str, run_dir: Path, out: Path) -> tuple[int, str]:
    args = {"check": ["check", str(run_dir)], "inspect": ["inspect", str(run_dir)],
            "report": ["report", str(run_dir), "--out", str(out / "report.html")],
            "export": ["export", str(run_dir), "--out", str(out / "selected.parquet")],
            "resume": ["resume", str(run_dir)]}[command]
    result = runner.invoke(app, args, env=FAST_ENV)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run_config(load_config(CRASH_CONFIG), run_dir=run_dir, open_store=FAST)
    return run_dir


def test_every_command_passes_on_an_intact_run(finished: Path, tmp_path: Path) -> None:
    run_dir = Path(shutil.copytree(finished, tmp_path / "run"))
    for command in ("check", "inspect", "report", "export", "resume"):
        code, output = invoke(command, run_dir, tmp_path)
        assert code == 0, (command, output)
    assert (tmp_path / "report.html").stat().st_size > 0 and (tmp_path / "selected.parquet").stat().st_size > 0


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_damaged_file_is_named_by_every_command_that_reads_it(
    kind: str, damage: str, finished: Path, tmp_path: Path,
) -> None:
    run_dir = Path(shutil.copytree(finished, tmp_path / "run"))
    path = run_dir / KINDS[kind]
    DAMAGE[damage](path)
    for command in ("check", "inspect", "report", "export", "resume"):  # resume last: it may write
        out = tmp_path / command
        out.mkdir()
        code, output = invoke(command, run_dir, out)
        if not detects(command, kind, damage):
            continue
        assert list(out.iterdir()) == []  # nothing written from a damaged run
        assert code == 1, (command, output)
        lines = [line for line in output.splitlines() if line.startswith("synthloop: ")]
        assert lines and str(path) in lines[0], (command, output)
        if command != "check":  # check lists every problem, one per line; the others stop at the first
            assert len(lines) == 1 and "synthloop check" in lines[0], (command, output)


def test_inspect_on_a_corrupted_candidate_part_exits_non_zero_naming_it(finished: Path, tmp_path: Path) -> None:
    """The real command line, as a user runs it on a run with one flipped bit in one candidate part."""
    run_dir = Path(shutil.copytree(finished, tmp_path / "run"))
    part = run_dir / "iter-0004" / "candidates" / "part-0000.parquet"
    bit_flip(part)
    result = cli("inspect", run_dir, check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (f"synthloop: {part} is corrupted (its sha256 differs from the manifest's); "
                             f"`synthloop check {run_dir}` lists every damaged file, `synthloop repair {run_dir}` "
                             "rolls back to the last intact iteration\n")
