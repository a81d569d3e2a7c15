"""Corruption and failing disks: every damaged artifact is named, repair rolls back to the last intact
state, and the resumed run still ends exactly where an uninterrupted one does."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from crashsafe_support import CRASH_CONFIG, FAST, ROOT, cli, failing_at, snapshot, stores
from synthloop.configs import load_config
from synthloop.experiments import resume_run, run_config
from synthloop.runs import check_run, repair
from synthloop.store import IntegrityError, RunDirectoryError, RunStore


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def bit_flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def delete(path: Path) -> None:
    path.unlink()


DAMAGE = {"truncated": truncate, "bit-flipped": bit_flip, "deleted": delete}
# file -> committed iterations left after repair (8 in all; checkpoints kept for the last 2, and for
# every 5th iteration: iteration 4)
ARTIFACTS = {
    "iter-0007/candidates/part-0001.parquet": 7,
    "iter-0006/selected.parquet": 5,  # iteration 5 has no checkpoint left: back to iteration 4's
    "iter-0002/metrics.json": 0,  # iterations 0-1 have no checkpoint left: back to the start
    "iter-0005/record.json": 5,
    "iter-0007/checkpoint/learner/theta.json": 7,
    "manifest.json": 8,  # repaired from manifest.backup.json
    "ledger.parquet": 8,  # rewritten from the iterations' ledger rows
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run_config(load_config(CRASH_CONFIG), run_dir=run_dir, open_store=FAST)
    return run_dir, snapshot(run_dir)


def _copy(run_dir: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run_dir, to)
    return to


CASES = [(artifact, damage) for artifact in ARTIFACTS for damage in DAMAGE
         if artifact not in ("iter-0006/selected.parquet", "ledger.parquet", "iter-0002/metrics.json",
                             "iter-0005/record.json") or damage == "bit-flipped"]


@pytest.mark.parametrize("artifact,damage", CASES)
def test_damage_is_named_then_repaired_and_the_run_resumes(
    artifact: str, damage: str, finished: tuple[Path, dict[str, object]], tmp_path: Path,
) -> None:
    run_dir = _copy(finished[0], tmp_path / "run")
    DAMAGE[damage](run_dir / artifact)
    with pytest.raises(IntegrityError) as error:
        resume_run(run_dir, open_store=FAST)
    assert str(run_dir / artifact) in str(error.value) and "\n" not in str(error.value)
    assert any(artifact in problem for problem in check_run(RunStore(run_dir)))

    result = repair(FAST(run_dir))
    assert result.kept_iterations == ARTIFACTS[artifact]
    assert check_run(RunStore(run_dir)) == []
    assert not (run_dir / artifact).exists() or artifact.split("/")[0] not in {
        f"iter-{i:04d}" for i in result.removed_iterations}
    resume_run(run_dir, open_store=FAST)
    assert snapshot(run_dir) == finished[1]


def test_damage_in_the_open_iteration_rolls_back_parts_only(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(OSError):  # stops in iteration 0 after 7 parts
        run_config(load_config(CRASH_CONFIG), run_dir=run_dir, open_store=stores(failing_at("generate:8")))
    open_ = RunStore(run_dir).open_iteration()
    assert open_ is not None and len(open_.parts) == 7
    bad = open_.parts[4].files[0].path
    bit_flip(run_dir / bad)
    result = repair(FAST(run_dir))
    assert (result.kept_iterations, result.kept_parts) == (0, 4)
    assert bad in result.problems[0]


def test_config_damage_cannot_be_repaired(finished: tuple[Path, dict[str, object]], tmp_path: Path) -> None:
    run_dir = _copy(finished[0], tmp_path / "run")
    bit_flip(run_dir / "config.yaml")
    with pytest.raises(IntegrityError, match=r"config\.yaml"):
        resume_run(run_dir, open_store=FAST)
    with pytest.raises(Exception, match=r"config\.yaml"):
        repair(FAST(run_dir))


def test_stray_files_are_ignored_and_cleaned(finished: tuple[Path, dict[str, object]], tmp_path: Path) -> None:
    run_dir = _copy(finished[0], tmp_path / "run")
    (run_dir / "iter-0003" / "candidates" / "part-0099.parquet").write_bytes(b"left by a crash")
    (run_dir / "iter-0008" / "kept").mkdir(parents=True)
    (run_dir / "iter-0008" / "kept" / "part-0000.parquet").write_bytes(b"not committed")
    (run_dir / "iter-0002" / ".metrics.json.tmp-123").write_bytes(b"{")
    resume_run(run_dir, open_store=FAST)
    assert not (run_dir / "iter-0008").exists()
    assert not (run_dir / "iter-0003" / "candidates" / "part-0099.parquet").exists()
    assert not (run_dir / "iter-0002" / ".metrics.json.tmp-123").exists()
    assert snapshot(run_dir) == finished[1]


def test_a_failing_rename_leaves_the_committed_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real OSError from the file system (no fault hook): the manifest is never half-replaced."""
    run_dir = tmp_path / "run"
    real_replace = os.replace
    calls = {"n": 0}

    def failing_replace(src: str | Path, dst: str | Path) -> None:
        calls["n"] += 1
        if Path(dst).name == "manifest.json" and calls["n"] > 40:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space") as error:
        run_config(load_config(CRASH_CONFIG), run_dir=run_dir, open_store=FAST)
    assert error.value.filename == str(run_dir / "manifest.json")  # the file meant, not its temporary
    assert not list(run_dir.rglob(".*.tmp-*"))  # the partial temporary file is gone
    before = RunStore(run_dir).manifest()
    assert check_run(RunStore(run_dir)) == []
    monkeypatch.setattr(os, "replace", real_replace)
    resume_run(run_dir, open_store=FAST)
    assert len(RunStore(run_dir).manifest().iterations) == 8 >= len(before.iterations)


# -- through the command line: one-line messages and exit codes --------------------------------


@pytest.mark.slow
def test_cli_names_the_damaged_file_repairs_and_resumes(finished: tuple[Path, dict[str, object]], tmp_path: Path) -> None:
    run_dir = _copy(finished[0], tmp_path / "run")
    truncate(run_dir / "iter-0007" / "selected.parquet")
    fast = {"SYNTHLOOP_FAULT_NO_FSYNC": "1"}
    failed = cli("resume", run_dir, env=fast, check=False)
    assert failed.returncode == 1
    assert failed.stderr.count("\n") == 1 and "iter-0007/selected.parquet" in failed.stderr
    assert "synthloop repair" in failed.stderr
    repaired = cli("repair", run_dir, env=fast)
    assert "rolled back iterations 7" in repaired.stdout
    cli("resume", run_dir, env=fast)
    assert cli("check", run_dir).returncode == 0
    assert snapshot(run_dir) == finished[1]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["commit:35"])
def test_failing_disk_mid_commit_exits_non_zero_and_keeps_the_committed_state(fault: str, tmp_path: Path,
                                                                             finished: tuple[Path, dict[str, object]]) -> None:
    fast = {"SYNTHLOOP_FAULT_NO_FSYNC": "1"}  # what fails here is an injected error, not a power cut
    failed = cli("run", CRASH_CONFIG, "--runs-dir", tmp_path, env={**fast, "SYNTHLOOP_FAULT_OSERROR": fault},
                 check=False)
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr  # progress lines, then one line that says what failed
    assert failed.stderr.splitlines()[-1].startswith("synthloop: injected I/O error at ")
    run_dir = tmp_path / "crash"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert not manifest.get("finished")
    assert cli("check", run_dir).returncode == 0  # the last committed state is intact
    cli("resume", run_dir, env=fast)
    assert snapshot(run_dir) == finished[1]


def test_an_edited_manifest_that_is_still_json_is_caught(finished: tuple[Path, dict[str, object]], tmp_path: Path) -> None:
    run_dir = _copy(finished[0], tmp_path / "run")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["iterations"][3]["summary"]["n_selected"] += 1
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    with pytest.raises(IntegrityError, match=r"manifest\.json is corrupted"):
        resume_run(run_dir, open_store=FAST)
    assert repair(FAST(run_dir)).used_backup
    assert snapshot(run_dir) == finished[1]


def test_a_kill_between_the_manifest_and_the_ledger_rename_is_finished_on_resume(
    finished: tuple[Path, dict[str, object]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from synthloop.store import LEDGER_PENDING

    run_dir = tmp_path / "run"
    real = RunStore._roll_forward_ledger

    def stop_before_rename(self: RunStore) -> None:
        if (self.root / LEDGER_PENDING).exists():
            raise OSError(errno.EIO, "stopped before the ledger rename")
        real(self)

    monkeypatch.setattr(RunStore, "_roll_forward_ledger", stop_before_rename)
    with pytest.raises(OSError, match="ledger rename"):
        run_config(load_config(CRASH_CONFIG), run_dir=run_dir, open_store=FAST)
    monkeypatch.setattr(RunStore, "_roll_forward_ledger", real)
    assert (run_dir / LEDGER_PENDING).exists()
    assert len(RunStore(run_dir).manifest().iterations) == 1  # iteration 0 is committed
    resume_run(run_dir, open_store=FAST)
    assert not (run_dir / LEDGER_PENDING).exists()
    assert snapshot(run_dir) == finished[1]
    assert check_run(RunStore(run_dir)) == []


# -- the backup manifest -----------------------------------------------------------------------


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_backup_is_checked_and_rewritten_by_repair(
    damage: str, finished: tuple[Path, dict[str, object]], tmp_path: Path,
) -> None:
    run_dir = _copy(finished[0], tmp_path / "run")
    DAMAGE[damage](run_dir / "manifest.backup.json")
    assert [p for p in check_run(RunStore(run_dir)) if "manifest.backup.json" in p]
    result = repair(FAST(run_dir))
    assert not result.used_backup and result.kept_iterations == 8
    assert any("manifest.backup.json" in p for p in result.problems)
    assert (run_dir / "manifest.backup.json").read_bytes() == (run_dir / "manifest.json").read_bytes()
    assert check_run(RunStore(run_dir)) == []
    assert snapshot(run_dir) == finished[1]


def test_repair_does_not_rely_on_a_damaged_backup(finished: tuple[Path, dict[str, object]], tmp_path: Path) -> None:
    run_dir = _copy(finished[0], tmp_path / "run")
    bit_flip(run_dir / "manifest.json")
    truncate(run_dir / "manifest.backup.json")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(RunDirectoryError, match=r"manifest\.json and manifest\.backup\.json are both damaged"):
        repair(FAST(run_dir))
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before  # nothing touched
    failed = cli("repair", run_dir, env={"SYNTHLOOP_FAULT_NO_FSYNC": "1"}, check=False)
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1 and "both damaged" in failed.stderr


# -- sparse checkpoints: repair rolls back to near the damage ----------------------------------


def test_damage_late_in_a_long_run_rolls_back_to_the_last_sparse_checkpoint(tmp_path: Path) -> None:
    """14 iterations, keep_checkpoints 2: checkpoints of 12 and 13, and of every 5th iteration (4, 9)."""
    config = load_config(ROOT / "tests" / "data" / "kill.yaml")
    reference = tmp_path / "reference"
    run_config(config, run_dir=reference, open_store=FAST)
    expected = snapshot(reference)
    assert expected["checkpoints_kept"] == [4, 9, 12, 13]
    run_dir = _copy(reference, tmp_path / "run")
    bit_flip(run_dir / "iter-0012" / "selected.parquet")
    result = repair(FAST(run_dir))
    assert result.kept_iterations == 10 and result.removed_iterations == [10, 11, 12, 13]
    assert snapshot(run_dir)["checkpoints_kept"] == [4, 9]
    resume_run(run_dir, open_store=FAST)
    assert snapshot(run_dir) == expected


@pytest.mark.slow
def test_a_full_disk_names_the_file_and_leaves_no_partial_file(tmp_path: Path,
                                                               finished: tuple[Path, dict[str, object]]) -> None:
    fast = {"SYNTHLOOP_FAULT_NO_FSYNC": "1"}
    failed = cli("run", CRASH_CONFIG, "--runs-dir", tmp_path, check=False,
                 env={**fast, "SYNTHLOOP_FAULT_OSERROR": "write:20:ENOSPC"})
    run_dir = tmp_path / "crash"
    last = failed.stderr.splitlines()[-1]
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert last.startswith("synthloop: injected I/O error at write: ") and ".tmp-" not in last
    named = Path(last.rsplit(": ", 1)[1])
    assert named.parent.is_relative_to(run_dir) and not named.exists()  # the file meant: never written
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]  # the partial one is gone
    assert check_run(RunStore(run_dir)) == []
    cli("resume", run_dir, env=fast)
    assert snapshot(run_dir) == finished[1]
