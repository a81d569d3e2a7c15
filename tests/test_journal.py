"""The journal's API for the loop: every stateful component checkpointed in a folder of its own,
extra candidate columns and a part's observations committed and read back exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from synthloop.budget import CostModel, Ledger
from synthloop.cli import app
from synthloop.faults import Faults
from synthloop.records import Candidates, Observations, Scores
from synthloop.runs import Journal, Part
from synthloop.store import RunDirectoryError, RunStore, column_to_numpy

COSTS = CostModel(unit="samples", prices={"generate": {"samples": 1.0}, "train": {"samples": 1.0}})


class Counter:
    """A stateful component: its state is a number (or nothing at all, with ``empty``)."""

    def __init__(self, value: int = 0, *, empty: bool = False) -> None:
        self.value = value
        self.empty = empty

    def save(self, directory: Path) -> None:
        assert directory.is_dir() and not any(directory.iterdir())  # an empty folder of its own
        if not self.empty:
            (directory / "value.json").write_text(json.dumps(self.value))

    def load(self, directory: Path) -> None:
        self.value = json.loads((directory / "value.json").read_text()) if not self.empty else -1


def _candidates(n: int, rng: np.random.Generator) -> tuple[Candidates, Scores]:
    candidates = Candidates(samples={"x": rng.standard_normal((n, 2))}, prompt_index=rng.integers(0, 5, n),
                            usage={"samples": np.ones(n)},
                            extra={"loss": rng.standard_normal(n).astype(np.float32),
                                   "embedding": rng.standard_normal((n, 2, 2)), "labeler": ["t"] * n})
    return candidates, Scores.from_rewards(rng.random(n))


def _part(k: int, candidates: Candidates, scores: Scores, ledger: Ledger, t: int = 0) -> Part:
    first = len(ledger.rows)
    ledger.charge(t, "generate", items=len(candidates), quantities={"samples": float(len(candidates))}, seconds=0.0)
    chosen = np.flatnonzero(scores.verdict == 0)
    return Part(part=k, size=len(candidates), ledger_rows=ledger.rows[first:],
                verdicts=np.bincount(scores.verdict, minlength=3).astype(np.int64), train_committed=float(k),
                acceptable=len(chosen), kept=(chosen, candidates.take(chosen), scores.take(chosen)),
                observed=Observations.of(candidates.prompt_index, scores.verdict))


def _journal(root: Path, *, keep: int = 2) -> Journal:
    return Journal(RunStore(root, fsync=False), store_candidates="all", keep_checkpoints=keep)


def test_parts_with_extra_columns_and_observations_resume_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    journal, ledger = _journal(tmp_path / "run"), Ledger(total=1e6, costs=COSTS)
    journal.store.create("name: x\n")  # type: ignore[union-attr]
    written = []
    for k in range(3):
        candidates, scores = _candidates(20, rng)
        part = _part(k, candidates, scores, ledger)
        journal.commit_part(0, 7, part, candidates, scores)
        written.append(part)
    back = _journal(tmp_path / "run").resumed_parts(0, 7)
    for part, read in zip(written, back, strict=True):
        assert (read.part, read.size, read.train_committed, read.acceptable) == (
            part.part, part.size, part.train_committed, part.acceptable)
        assert read.ledger_rows == part.ledger_rows and np.array_equal(read.verdicts, part.verdicts)
        assert read.observed is not None and part.observed is not None
        for name in ("prompt_index", "n_pass", "n_fail", "n_error"):
            assert np.array_equal(getattr(read.observed, name), getattr(part.observed, name))
        assert read.kept is not None and part.kept is not None
        assert np.array_equal(read.kept[0], part.kept[0])
        assert read.kept[1].extra["loss"].tobytes() == part.kept[1].extra["loss"].tobytes()
        assert np.array_equal(read.kept[1].extra["embedding"], part.kept[1].extra["embedding"])
        assert read.kept[1].extra["labeler"] == part.kept[1].extra["labeler"]
    with pytest.raises(RunDirectoryError, match="n_t = 7 but now plans 8"):
        _journal(tmp_path / "run").resumed_parts(0, 8)


def _commit(journal: Journal, t: int, states: dict[str, Counter], ledger: Ledger, rng: np.random.Generator) -> None:
    candidates, scores = _candidates(10, rng)
    part = _part(0, candidates, scores, ledger, t)
    journal.commit_part(t, 5, part, candidates, scores)
    assert part.kept is not None
    journal.commit_iteration(t, [(0, *part.kept)], states, ledger, {"iteration": t, "n_selected": len(part.kept[0])})


def test_every_component_is_checkpointed_in_its_own_folder_and_restored(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    journal, ledger = _journal(tmp_path / "run"), Ledger(total=1e6, costs=COSTS)
    journal.store.create("name: x\n")  # type: ignore[union-attr]
    states = {"learner": Counter(), "prompt_policy": Counter(), "pool": Counter(empty=True)}
    for t in range(6):
        states["learner"].value, states["prompt_policy"].value = 10 * t, 100 + t
        _commit(journal, t, states, ledger, rng)
    checkpoint = tmp_path / "run" / "iter-0005" / "checkpoint"
    assert json.loads((checkpoint / "learner" / "value.json").read_text()) == 50
    assert json.loads((checkpoint / "prompt_policy" / "value.json").read_text()) == 105
    restored = {"learner": Counter(), "prompt_policy": Counter(), "pool": Counter(empty=True)}
    resumed_ledger = Ledger(total=1e6, costs=COSTS)
    history = _journal(tmp_path / "run").restore(restored, resumed_ledger)
    assert [h["iteration"] for h in history] == list(range(6))
    assert (restored["learner"].value, restored["prompt_policy"].value, restored["pool"].value) == (50, 105, -1)
    assert resumed_ledger.rows == ledger.rows and resumed_ledger.spent == ledger.spent
    # kept: the last 2, and every 5th iteration's (iteration 4)
    kept = [e.iteration for e in RunStore(tmp_path / "run").manifest().iterations if e.checkpoint is not None]
    assert kept == [4, 4 + 1] and not (tmp_path / "run" / "iter-0003" / "checkpoint").exists()
    selected = RunStore(tmp_path / "run").selected(5)
    assert column_to_numpy(selected, "extra.embedding").shape == (selected.num_rows, 2, 2)
    assert not list((tmp_path / "run").glob("iter-*/kept")) and not list((tmp_path / "run").glob("iter-*/parts.journal"))
    with pytest.raises(RunDirectoryError, match="holds the state of learner, pool, prompt_policy, but the loop has"):
        _journal(tmp_path / "run").restore({"learner": Counter()}, Ledger(total=1e6, costs=COSTS))


def test_a_state_name_must_be_a_folder_name(tmp_path: Path) -> None:
    journal, ledger = _journal(tmp_path / "run"), Ledger(total=1e6, costs=COSTS)
    journal.store.create("name: x\n")  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="plain folder name"):
        _commit(journal, 0, {"../escape": Counter()}, ledger, np.random.default_rng(0))


def test_journal_point_forwards_to_the_stores_faults(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    journal = Journal(RunStore(tmp_path / "run", faults=Faults(trace=trace)), store_candidates="all",
                      keep_checkpoints=1)
    journal.point("generate", "0/3")
    assert trace.read_text() == "generate 0/3\n"
    Journal(None, store_candidates="all", keep_checkpoints=1).point("generate")  # inert without a store


@pytest.mark.parametrize("command", ["check", "inspect", "resume", "repair", "export", "report"])
def test_a_hand_made_manifest_is_one_line_for_every_command(tmp_path: Path, command: str) -> None:
    """A valid sha256 over no content: no KeyError, no traceback; repair falls back on the backup."""
    import hashlib

    store = RunStore(tmp_path / "run")
    store.create("name: x\nbudget: {total: 1}\nschedule: {kind: constant}\n")
    store.close()
    body = {"format": 3}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({**body, "sha256": hashlib.sha256(text.encode()).hexdigest()}))
    args = [command, str(tmp_path / "run")] + (["--out", str(tmp_path / "out.html")] if command == "report" else [])
    result = CliRunner().invoke(app, args, env={"SYNTHLOOP_FAULT_NO_FSYNC": "1"})
    if command == "repair":
        assert result.exit_code == 0 and "restored from manifest.backup.json" in result.output
        return
    assert result.exit_code == 1 and not isinstance(result.exception, KeyError)
    lines = [line for line in result.output.splitlines() if line.startswith("synthloop: ")]
    assert len(lines) == 1 and "manifest.json does not follow the synthloop format-3 schema (files: " in lines[0]
