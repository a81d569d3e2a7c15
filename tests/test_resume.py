"""Exact resume, in process: a fault at one of many points, then ``resume_run``, must end exactly
where an uninterrupted run ends (metrics, ledger, candidates, selected rows, final checkpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crashsafe_support import CRASH_CONFIG, FAST, failing_at, snapshot, stores
from synthloop.configs import RunConfig, TopKSelector, load_config
from synthloop.experiments import resume_run, run_config
from synthloop.faults import Faults
from synthloop.store import RunStore, RunStoreFactory


def _config(**loop: object) -> RunConfig:
    config = load_config(CRASH_CONFIG)
    update: dict[str, object] = {"loop": config.loop.model_copy(update=loop)}
    if loop.get("mode") == "select":
        update["selector"] = TopKSelector(kind="top_k")
    return config.model_copy(update=update)


def _interrupted(config: RunConfig, run_dir: Path, faults_at: list[str]) -> None:
    """Run with an injected failure, then resume with the next one, ..., then resume to the end."""
    for fault in faults_at:
        with pytest.raises(OSError, match="injected"):
            _start_or_resume(config, run_dir, stores(failing_at(fault)))
    _start_or_resume(config, run_dir, FAST)


def _start_or_resume(config: RunConfig, run_dir: Path, open_store: RunStoreFactory) -> None:
    if (run_dir / "manifest.json").exists():
        resume_run(run_dir, open_store=open_store)
    else:  # stopped before the run directory existed: what a user does is start it again
        run_config(config, run_dir=run_dir, overwrite=True, open_store=open_store)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    out = {}
    for name, loop in {"accept": {}, "select": {"mode": "select"}, "none": {"store_candidates": "none"}}.items():
        run_dir = tmp_path_factory.mktemp(name) / "run"
        run_config(_config(**loop), run_dir=run_dir, open_store=FAST)
        out[name] = snapshot(run_dir)
    return out


# Part commits append to a journal and no longer replace the manifest, so "cleanup" (after each
# manifest commit) comes up 11 times in this run; "append" is the middle of a journal record.
@pytest.mark.parametrize("faults_at", [
    ["generate:1"], ["verify:13"], ["write:1"], ["write:17"], ["write:60"], ["checkpoint:4"],
    ["train:3"], ["evaluate:5"], ["commit:2"], ["commit:16"], ["cleanup:7"], ["append:12"],
    ["generate:4", "write:3", "commit:5", "train:1", "cleanup:2", "checkpoint:1", "append:3"],
])
def test_resume_after_a_fault_matches_an_uninterrupted_run(
    faults_at: list[str], reference: dict[str, dict[str, object]], tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    _interrupted(_config(), run_dir, faults_at)
    assert snapshot(run_dir) == reference["accept"]
    assert RunStore(run_dir).clean() == []  # nothing stray left behind


@pytest.mark.parametrize("variant,loop,faults_at", [
    ("select", {"mode": "select"}, ["write:5", "commit:9", "train:2"]),
    ("none", {"store_candidates": "none"}, ["generate:3", "commit:6", "checkpoint:2", "cleanup:4"]),
])
def test_resume_in_select_mode_and_without_stored_candidates(
    variant: str, loop: dict[str, object], faults_at: list[str], reference: dict[str, dict[str, object]],
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    _interrupted(_config(**loop), run_dir, faults_at)
    assert snapshot(run_dir) == reference[variant]


def test_committed_parts_are_read_back_not_regenerated(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(OSError):  # iteration 0 has 5 parts committed
        run_config(_config(), run_dir=run_dir, open_store=stores(failing_at("generate:6")))
    committed = RunStore(run_dir).open_iteration()
    assert committed is not None and committed.iteration == 0 and len(committed.parts) == 5
    resume_run(run_dir, open_store=stores(Faults(trace=tmp_path / "trace")))
    generated = [line.split()[1] for line in (tmp_path / "trace").read_text().splitlines()
                 if line.startswith("generate ")]
    assert generated[0] == "0/5"  # the resumed run's first draw is part 5 of iteration 0
    assert len(generated) == len(set(generated))


def test_resuming_a_finished_run_changes_nothing(reference: dict[str, dict[str, object]], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_config(_config(), run_dir=run_dir, open_store=FAST)
    before = (run_dir / "manifest.json").read_bytes()
    _, history = resume_run(run_dir, open_store=FAST)
    assert (run_dir / "manifest.json").read_bytes() == before
    assert len(history) == len(reference["accept"]["summaries"])  # type: ignore[arg-type]
