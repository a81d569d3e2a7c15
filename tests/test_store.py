"""The run store's building blocks: lossless records, the checked manifest and its schema, atomic
writes on a failing disk, the part journal (torn and damaged records), the lock, cleaning."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from crashsafe_support import cli_env, failing_at
from synthloop.budget import LedgerRow
from synthloop.records import Candidates, Observations, Scores, Verdict
from synthloop.store import (
    Checkpoint,
    IntegrityError,
    PartRecord,
    RunDirectoryError,
    RunLockedError,
    RunStore,
    SchemaError,
    atomic_write_bytes,
    candidates_table,
    journal_path,
    records_from_table,
    table_bytes,
)
from synthloop.store.schema import ObservedCounts


def _round_trip(candidates: Candidates, scores: Scores) -> tuple[Candidates, Scores]:
    table = candidates_table(iteration=1, part=2, candidates=candidates, scores=scores)
    return records_from_table(pq.read_table(io.BytesIO(table_bytes(table))))


def test_records_round_trip_bit_for_bit() -> None:
    """What a resumed part reads back is exactly what was generated: arrays, strings, ints, NaN."""
    rng = np.random.default_rng(0)
    candidates = Candidates(
        samples={"image": rng.standard_normal((4, 2, 3)).astype(np.float32), "completion": ["a", "bé", "", "d"],
                 "tokens": np.arange(4, dtype=np.int64)},
        prompt_index=np.array([3, 1, 4, 1], dtype=np.int64),
        usage={"samples": np.ones(4), "tokens": np.array([5.0, 7.0, 0.0, 2.0])},
    )
    scores = Scores(reward=np.array([0.5, np.nan, 1.0, 0.0]), verdict=np.array([0, 2, 0, 1], dtype=np.int8),
                    detail=["", "timeout", "", ""])
    back, back_scores = _round_trip(candidates, scores)
    assert back.samples["image"].dtype == np.float32 and np.array_equal(back.samples["image"], candidates.samples["image"])
    assert back.samples["completion"] == candidates.samples["completion"]
    assert np.array_equal(back.samples["tokens"], candidates.samples["tokens"])
    assert np.array_equal(back.prompt_index, candidates.prompt_index)
    assert all(np.array_equal(back.usage[k], v) for k, v in candidates.usage.items())
    assert np.array_equal(back_scores.reward, scores.reward, equal_nan=True)
    assert np.array_equal(back_scores.verdict, scores.verdict) and back_scores.detail == scores.detail
    assert back_scores.count(Verdict.ERROR) == 1
    assert back.extra == {}


def test_extra_columns_round_trip_bit_for_bit() -> None:
    """Per-candidate extra columns (loss, embeddings, provenance) come back with dtype, shape, bits."""
    rng = np.random.default_rng(1)
    loss = rng.standard_normal(5).astype(np.float32)
    loss[2] = -0.0
    extra: dict[str, Any] = {"loss": loss, "embedding": rng.standard_normal((5, 3, 2)).astype(np.float16),
             "labeler": ["teacher", "student", "", "ü", "teacher"], "rank": np.arange(5, dtype=np.int16),
             "flag": np.array([True, False, True, True, False])}
    candidates = Candidates(samples={"x": rng.standard_normal((5, 2))}, prompt_index=np.full(5, -1),
                            usage={"samples": np.ones(5)}, extra=extra)
    back, _ = _round_trip(candidates, Scores.from_rewards(rng.random(5)))
    assert set(back.extra) == set(extra)
    for name in ("loss", "embedding", "rank", "flag"):
        assert back.extra[name].dtype == extra[name].dtype and back.extra[name].shape == extra[name].shape
        assert back.extra[name].tobytes() == extra[name].tobytes()  # bit for bit, -0.0 included
    assert back.extra["labeler"] == extra["labeler"]
    empty, _ = _round_trip(candidates.take(np.array([], dtype=np.int64)), Scores.from_rewards(np.empty(0)))
    assert empty.extra["embedding"].shape == (0, 3, 2) and empty.extra["embedding"].dtype == np.float16


def test_create_refuses_an_existing_run_and_says_resume(tmp_path: Path) -> None:
    RunStore(tmp_path / "run").create("name: x\n")
    with pytest.raises(RunDirectoryError, match="synthloop resume"):
        RunStore(tmp_path / "run").create("name: x\n")
    RunStore(tmp_path / "run").create("name: y\n", overwrite=True)
    assert RunStore(tmp_path / "run").config_text() == "name: y\n"


def test_only_listed_files_are_read(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.create("name: x\n")
    (store.root / "iter-0000").mkdir()
    (store.root / "iter-0000" / "metrics.json").write_text("{}")
    with pytest.raises(RunDirectoryError, match="not a committed file"):
        store.read_json("iter-0000/metrics.json")
    assert store.clean() == ["iter-0000/metrics.json"]
    assert not (store.root / "iter-0000").exists()


def _initial(store: RunStore, gap: float = 0.5) -> None:
    store.commit_initial({"gap": gap}, task="t", primary_metric="gap", higher_is_better=False)


def test_manifest_checksum_and_backup(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.create("name: x\n")
    _initial(store)
    assert (store.root / "manifest.json").read_bytes() == (store.root / "manifest.backup.json").read_bytes()
    manifest = json.loads((store.root / "manifest.json").read_text())
    manifest["initial"]["metrics"]["gap"] = 0.25
    (store.root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="does not match its sha256"):
        RunStore(store.root).manifest()
    backup = RunStore(store.root).read_manifest("manifest.backup.json").manifest
    assert backup.initial is not None and backup.initial.metrics["gap"] == 0.5


def _forge(path: Path, body: object) -> None:
    """A manifest with a valid sha256 but whatever content (hand-made)."""
    if isinstance(body, dict):
        text = json.dumps({k: v for k, v in body.items() if k != "sha256"}, sort_keys=True, separators=(",", ":"))
        body = {**body, "sha256": hashlib.sha256(text.encode()).hexdigest()}
    path.write_text(json.dumps(body))


@pytest.mark.parametrize("body,field", [
    ({"format": 3}, "files"),
    ({"format": 2}, "files"),
    ({"format": 3, "files": {}}, "no config.yaml"),
    ({"format": 3, "files": {"config.yaml": {"path": "config.yaml", "sha256": "0", "bytes": True}}}, "bytes"),
    ({"format": 3, "files": {"config.yaml": {"path": "config.yaml", "sha256": "0", "bytes": 1}},
      "iterations": "all of them"}, "iterations"),
    ({"format": 3, "files": {"config.yaml": {"path": "config.yaml", "sha256": "0", "bytes": 1}},
      "iterations": [{"iteration": 0, "summary": {}, "checkpoint": None}]}, "iterations.0.record"),
    ({"format": 3, "files": {"config.yaml": {"path": "c", "sha256": "0", "bytes": 1}}, "surprise": 1}, "surprise"),
])
def test_a_hand_made_manifest_is_a_one_line_schema_error(tmp_path: Path, body: dict[str, object], field: str) -> None:
    store = RunStore(tmp_path / "run")
    store.create("name: x\n")
    _forge(store.root / "manifest.json", body)
    with pytest.raises(SchemaError) as error:
        RunStore(store.root).manifest()
    message = str(error.value)
    assert str(store.root / "manifest.json") in message and field in message and "\n" not in message


def test_an_unsupported_format_is_named(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    _forge(tmp_path / "run" / "manifest.json", {"format": 9, "files": {}})
    with pytest.raises(RunDirectoryError, match="format 9 is not supported"):
        RunStore(tmp_path / "run").manifest()


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    RunStore(tmp_path / "run").create("name: x\n")
    store = RunStore(tmp_path / "run", fsync=False, faults=failing_at("write:1"))
    before = (store.root / "manifest.json").read_bytes()
    with pytest.raises(OSError, match="injected") as error:
        _initial(store)
    assert error.value.filename == str(store.root / "manifest.json")  # the file meant, not its temporary
    assert (store.root / "manifest.json").read_bytes() == before
    assert not list(store.root.glob(".*.tmp-*"))


def test_a_full_disk_names_the_file_and_removes_the_partial_one(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)  # where a full disk shows with delayed allocation
    target = tmp_path / "out" / "report.html"
    with pytest.raises(OSError, match="No space left") as error:
        atomic_write_bytes(target, b"x" * 1000)
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(target)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_directory_as_target_is_named_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    with pytest.raises(OSError) as error:
        atomic_write_bytes(tmp_path / "folder", b"<html>")
    assert error.value.filename == str(tmp_path / "folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"] and not list((tmp_path / "folder").iterdir())


# -- the part journal --------------------------------------------------------------------------


def _part(k: int, *, iteration: int = 0, n_target: int = 10, observed: Observations | None = None) -> PartRecord:
    return PartRecord(iteration=iteration, n_target=n_target, part=k, size=16, files=(),
                      ledger=(LedgerRow(iteration, "generate", 16, 0.1 * (k + 1), 1e-4, {"samples": 16.0}),),
                      verdicts=(3, 13, 0), train_committed=1.5 * k, streaming=True, n_kept=0, acceptable=3,
                      observed=ObservedCounts.of(observed) if observed is not None else None)


def _journal(tmp_path: Path, parts: int) -> RunStore:
    store = RunStore(tmp_path / "run", fsync=False)
    store.create("name: x\n")
    for k in range(parts):
        store.commit_part(_part(k))
    return store


def test_parts_are_appended_and_read_back_exactly(tmp_path: Path) -> None:
    observed = Observations.of(np.array([4, 1, 4, 9]), np.array([0, 1, 2, 0], dtype=np.int8))
    store = RunStore(tmp_path / "run", fsync=False)
    store.create("name: x\n")
    written = [_part(0, observed=observed), _part(1), _part(2)]
    for part in written:
        store.commit_part(part)
    back = RunStore(store.root).open_iteration()
    assert back is not None and back.parts == tuple(written)
    assert back.parts[0].observed is not None
    counts = back.parts[0].observed.observations()
    assert counts.prompt_index.tolist() == [1, 4, 9] and counts.n_pass.tolist() == [0, 1, 1]
    assert counts.n_error.tolist() == [0, 1, 0]
    with pytest.raises(RunDirectoryError, match="out of order"):
        store.commit_part(_part(5))
    with pytest.raises(RunDirectoryError, match="out of order"):
        store.commit_part(_part(3, n_target=11))


def test_a_torn_last_record_is_dropped_then_cut(tmp_path: Path) -> None:
    store = _journal(tmp_path, 3)
    path = store.root / journal_path(0)
    intact = path.read_bytes()
    line = intact.splitlines(keepends=True)[-1]
    path.write_bytes(intact + line[: len(line) // 2])  # a kill in the middle of appending part 3
    reader = RunStore(store.root)
    open_ = reader.open_iteration()
    assert open_ is not None and len(open_.parts) == 3
    assert path.read_bytes() != intact  # readers never write
    writer = RunStore(store.root, fsync=False)
    writer.clean()
    assert path.read_bytes() == intact  # the next writer cuts it before appending
    writer.commit_part(_part(3))
    reopened = RunStore(store.root).open_iteration()
    assert reopened is not None and [p.part for p in reopened.parts] == [0, 1, 2, 3]


@pytest.mark.parametrize("record", [0, 1])
def test_a_damaged_complete_record_is_an_integrity_error(tmp_path: Path, record: int) -> None:
    store = _journal(tmp_path, 3)
    path = store.root / journal_path(0)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[record] = lines[record].replace(b'"size":16', b'"size":17')
    path.write_bytes(b"".join(lines))
    with pytest.raises(IntegrityError, match=rf"parts\.journal is corrupted \(record {record + 1} "):
        RunStore(store.root).open_iteration()


def test_a_journal_record_of_another_part_is_an_integrity_error(tmp_path: Path) -> None:
    store = _journal(tmp_path, 3)
    path = store.root / journal_path(0)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + lines[2] + lines[1])
    with pytest.raises(IntegrityError, match=r"record 2 is part 0/2"):
        RunStore(store.root).open_iteration()


def test_a_failing_append_takes_the_partial_record_back(tmp_path: Path) -> None:
    store = _journal(tmp_path, 2)
    path = store.root / journal_path(0)
    intact = path.read_bytes()
    failing = RunStore(store.root, fsync=False, faults=failing_at("append:1", errno.ENOSPC))
    with pytest.raises(OSError, match="injected") as error:
        failing.commit_part(_part(2))
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(path)
    assert path.read_bytes() == intact


def test_an_iteration_commit_compacts_the_journal(tmp_path: Path) -> None:
    store = _journal(tmp_path, 3)
    store.commit_iteration(0, [], {"n_selected": 0}, [r for p in store.open_iteration().parts for r in p.ledger],  # type: ignore[union-attr]
                           Checkpoint(names=(), files=()), keep_checkpoints=2)
    assert not (store.root / journal_path(0)).exists()
    reader = RunStore(store.root)
    assert reader.open_iteration() is None
    assert [r.cost for r in reader.iteration_record(0).ledger] == [0.1, 0.2, 0.1 * 3]
    assert reader.ledger().column("cost").to_pylist() == [0.1, 0.2, 0.1 * 3]


# -- one writer per run directory --------------------------------------------------------------


HOLD = """
import sys, time
from pathlib import Path
from synthloop.store import RunStore
store = RunStore(Path(sys.argv[1]))
store.acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    RunStore(tmp_path / "run").create("name: x\n")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], env=cli_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(RunLockedError, match=rf"in use by process {holder.pid} ") as error:
            RunStore(tmp_path / "run").clean()
        assert "\n" not in str(error.value)
        with pytest.raises(RunLockedError):
            RunStore(tmp_path / "run").create("name: y\n", overwrite=True)
        assert RunStore(tmp_path / "run").config_text() == "name: x\n"  # readers need no lock
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()  # type: ignore[union-attr]
    assert RunStore(tmp_path / "run").clean() == []  # the lock went with the process


def test_the_lock_is_shared_within_a_process_and_released_on_close(tmp_path: Path) -> None:
    first = RunStore(tmp_path / "run")
    first.create("name: x\n")
    second = RunStore(tmp_path / "run")
    second.clean()  # the same process: no conflict with itself
    first.close()
    second.close()
    probe = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(60)", ""), str(tmp_path / "run")],
                           env=cli_env(), capture_output=True, text=True, timeout=60)
    assert probe.stdout == "locked\n", probe.stderr
