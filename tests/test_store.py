"""The run store's building blocks: lossless records, the checked manifest, atomic writes, cleaning."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from synthloop.records import Candidates, Scores, Verdict
from synthloop.store import (
    IntegrityError,
    RunDirectoryError,
    RunStore,
    candidates_table,
    records_from_table,
    table_bytes,
)


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
    table = pq.read_table(io.BytesIO(table_bytes(candidates_table(iteration=1, part=2, candidates=candidates,
                                                                  scores=scores))))
    back, back_scores = records_from_table(table)
    assert back.samples["image"].dtype == np.float32 and np.array_equal(back.samples["image"], candidates.samples["image"])
    assert back.samples["completion"] == candidates.samples["completion"]
    assert np.array_equal(back.samples["tokens"], candidates.samples["tokens"])
    assert np.array_equal(back.prompt_index, candidates.prompt_index)
    assert all(np.array_equal(back.usage[k], v) for k, v in candidates.usage.items())
    assert np.array_equal(back_scores.reward, scores.reward, equal_nan=True)
    assert np.array_equal(back_scores.verdict, scores.verdict) and back_scores.detail == scores.detail
    assert back_scores.count(Verdict.ERROR) == 1


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


def test_manifest_checksum_and_backup(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.create("name: x\n")
    store.commit_initial({"gap": 0.5})
    assert (store.root / "manifest.json").read_bytes() == (store.root / "manifest.backup.json").read_bytes()
    manifest = json.loads((store.root / "manifest.json").read_text())
    manifest["initial"]["metrics"]["gap"] = 0.25
    (store.root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="does not match its sha256"):
        RunStore(store.root).manifest()
    assert RunStore(store.root).read_manifest("manifest.backup.json")["initial"]["metrics"]["gap"] == 0.5


def test_a_failed_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = RunStore(tmp_path / "run")
    store.create("name: x\n")
    before = (store.root / "manifest.json").read_bytes()
    monkeypatch.setenv("SYNTHLOOP_FAULT_OSERROR", "write:1")
    from synthloop import faults

    faults.reset()
    with pytest.raises(OSError, match="injected"):
        store.commit_initial({"gap": 0.5})
    faults.reset()
    assert (store.root / "manifest.json").read_bytes() == before
    assert [p.name for p in store.root.glob(".manifest.json.tmp-*")]  # the stray temporary file...
    monkeypatch.delenv("SYNTHLOOP_FAULT_OSERROR")
    assert RunStore(store.root).clean()  # ...is cleaned on the next start
    assert not list(store.root.glob(".*.tmp-*"))
