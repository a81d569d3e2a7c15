"""Committing a run as it goes, and reading back what was committed: exact resume and repair.

The loop hands the :class:`Journal` each generated part and each finished iteration; the journal
writes their files and commits them in the run's manifest (protocol in ``store.py``). When a run
resumes, the journal gives back exactly what an uninterrupted run would hold at that point:

- the history of committed iterations (their metrics, from which the loop re-derives the measured
  acceptance rate and unit costs it re-plans with),
- the ledger rows of every committed iteration and part, so no committed spending happens twice,
- the learner state of the last committed iteration (its checkpoint),
- the parts of the iteration that was open: their draw counts, verdict counts, ledger rows, the
  training cost already reserved, and their kept rows (streaming selectors) or all their candidates
  (generate-then-select), so the iteration continues at the next part instead of starting over.

What a part commits does not depend on ``store_candidates``: kept rows are always written (to
``kept/part-*.parquet``, dropped once the iteration commits its ``selected.parquet``), and in
``select`` mode all candidates of a part are written until the iteration's selection is committed.
So a run that stores no candidates still never re-spends a committed part.

Prompts are not stored: ``Task.sample_prompts`` is deterministic for its seed (the conformance suite
checks it), so a resumed part re-draws its prompts from the same ``SeedSequence`` key, for free.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from synthloop import faults
from synthloop.budget import Ledger, LedgerRow
from synthloop.protocols import Task
from synthloop.records import Candidates, Observations, Scores
from synthloop.state import Stateful
from synthloop.store import (
    CONFIG,
    LEDGER,
    LEDGER_PENDING,
    MANIFEST,
    MANIFEST_BACKUP,
    FileEntry,
    IntegrityError,
    RunDirectoryError,
    RunStore,
    all_entries,
    candidates_table,
    iteration_dir,
    ledger_row_dict,
    ledger_row_from_dict,
    ledger_table_from_dicts,
    records_from_table,
)


@dataclass
class Part:
    """One generated part of an iteration, as committed."""

    part: int
    size: int  # draws generated (= candidates verified)
    ledger_rows: list[LedgerRow]
    verdicts: npt.NDArray[np.int64]  # counts of PASS, FAIL, ERROR
    train_committed: float  # training cost reserved for everything kept so far in the iteration
    acceptable: int = 0  # draws the streaming selector accepts, counted past n_t (for the estimate)
    kept: tuple[npt.NDArray[np.int64], Candidates, Scores] | None = None  # streaming selectors
    pending: tuple[Candidates, Scores] | None = None  # generate-then-select: all candidates
    observed: Observations | None = None  # verdict counts per prompt, for the prompt policy


def without_usage(scores: Scores) -> Scores:
    """Scores as stored: verification usage is charged once, then only the ledger keeps it."""
    return Scores(reward=scores.reward, verdict=scores.verdict, detail=scores.detail)


class Journal:
    """Commits a run to its store; with ``store=None`` it commits nothing and resumes nothing."""

    def __init__(self, store: RunStore | None, *, store_candidates: str, keep_checkpoints: int) -> None:
        self.store = store
        self.store_candidates = store_candidates
        self.keep_checkpoints = keep_checkpoints

    # -- resume ----------------------------------------------------------------------------------

    def initial(self, task: Task, evaluate: Callable[[], dict[str, float]]) -> dict[str, float]:
        """The evaluation before iteration 0, committed before anything else."""
        committed = self.store.manifest()["initial"] if self.store is not None else None
        if committed is not None:
            return dict(committed["metrics"])
        metrics = evaluate()
        if self.store is not None:
            self.store.commit_initial(metrics, task=task.name, primary_metric=task.primary_metric,
                                      higher_is_better=task.higher_is_better)
        return metrics

    def restore(self, states: Mapping[str, Stateful], ledger: Ledger) -> list[dict[str, Any]]:
        """Load the last committed state into ``states`` and ``ledger``; return the history."""
        learner = states["learner"]
        if self.store is None:
            return []
        self.store.clean()
        self.store.check_all()
        iterations = self.store.manifest()["iterations"]
        for entry in iterations:
            ledger.restore(ledger_row_from_dict(r) for r in entry["ledger"])
        if iterations:
            learner.load(self.store.checkpoint_dir(iterations[-1]["iteration"]))
        return [dict(entry["summary"]) for entry in iterations]

    def resumed_parts(self, t: int, n_target: int) -> list[Part]:
        """The committed parts of iteration ``t`` if it was open when the run stopped."""
        open_ = self.store.manifest()["open"] if self.store is not None else None
        if open_ is None or open_["iteration"] != t:
            return []
        if open_["n_target"] != n_target:
            raise RunDirectoryError(
                f"{self.store.root if self.store else ''}: iteration {t} was started with n_t = "
                f"{open_['n_target']} but now plans {n_target}; the run's config or code has changed"
            )
        return [self._read_part(t, entry) for entry in open_["parts"]]

    def _read_part(self, t: int, entry: Mapping[str, Any]) -> Part:
        assert self.store is not None
        part = Part(part=entry["part"], size=entry["size"],
                    ledger_rows=[ledger_row_from_dict(r) for r in entry["ledger"]],
                    verdicts=np.asarray(entry["verdicts"], dtype=np.int64),
                    train_committed=entry["train_committed"],
                    acceptable=entry.get("acceptable", entry["n_kept"]))
        if entry["streaming"] and entry["n_kept"] > 0:
            table = self.store.read_table(_kept_path(t, part.part))
            candidates, scores = records_from_table(table)
            part.kept = (table.column("index").to_numpy().astype(np.int64), candidates, scores)
        elif not entry["streaming"]:
            part.pending = records_from_table(self.store.read_table(_candidates_path(t, part.part)))
        return part

    # -- commit ----------------------------------------------------------------------------------

    def finish(self) -> None:
        """Mark the run finished: the plan or the budget is exhausted (resume then has nothing to do)."""
        if self.store is not None:
            self.store.mark_finished()

    def commit_part(self, t: int, n_target: int, part: Part, candidates: Candidates, scores: Scores) -> None:
        """Write a generated part and commit it: a kill after this loses nothing of it."""
        if self.store is None:
            return
        files: list[FileEntry] = []
        if self.store_candidates == "all" or part.pending is not None:
            table = candidates_table(iteration=t, part=part.part, candidates=candidates, scores=scores)
            files.append(self.store.write_table(_candidates_path(t, part.part), table))
        n_kept = 0 if part.kept is None else len(part.kept[0])
        if part.kept is not None and n_kept > 0:
            chosen, kept, kept_scores = part.kept
            table = candidates_table(iteration=t, part=part.part, candidates=kept, scores=kept_scores,
                                     indices=chosen)
            files.append(self.store.write_table(_kept_path(t, part.part), table))
        self.store.commit_part(t, n_target, {
            "part": part.part, "size": part.size, "files": [asdict(f) for f in files],
            "ledger": [ledger_row_dict(r) for r in part.ledger_rows],
            "verdicts": part.verdicts.tolist(), "train_committed": part.train_committed,
            "streaming": part.pending is None, "n_kept": n_kept, "acceptable": part.acceptable,
        })

    def commit_iteration(
        self, t: int, kept: list[tuple[int, npt.NDArray[np.int64], Candidates, Scores]],
        states: Mapping[str, Stateful], ledger: Ledger, metrics: Mapping[str, Any],
    ) -> None:
        """Write the selected set, checkpoint and metrics, then commit the iteration, last."""
        if self.store is None:
            return
        store = self.store
        open_ = store.manifest()["open"]
        files: list[FileEntry] = []
        if self.store_candidates == "all" and open_ is not None and open_["iteration"] == t:
            files.extend(FileEntry(**f) for p in open_["parts"] for f in p["files"]
                         if "/candidates/" in f["path"])
        if self.store_candidates != "none" and kept:
            tables = [candidates_table(iteration=t, part=p, candidates=c, scores=s, indices=ix)
                      for p, ix, c, s in kept]
            files.append(store.write_table(f"{iteration_dir(t)}/selected.parquet", pa.concat_tables(tables)))
        checkpoint = f"{iteration_dir(t)}/checkpoint"
        shutil.rmtree(store.root / checkpoint, ignore_errors=True)  # a crashed attempt's leftovers
        (store.root / checkpoint).mkdir(parents=True)
        states["learner"].save(store.root / checkpoint)
        faults.point("checkpoint", checkpoint)
        files.extend(store.adopt_directory(checkpoint))
        files.append(store.write_json(f"{iteration_dir(t)}/metrics.json", metrics))
        rows = [r for r in ledger.rows if r.iteration == t]
        store.commit_iteration(t, files, metrics, rows, checkpoint=True,
                               keep_checkpoints=self.keep_checkpoints)


def _candidates_path(t: int, part: int) -> str:
    return f"{iteration_dir(t)}/candidates/part-{part:04d}.parquet"


def _kept_path(t: int, part: int) -> str:
    return f"{iteration_dir(t)}/kept/part-{part:04d}.parquet"


# -- repair ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepairResult:
    kept_iterations: int  # committed iterations left after the repair
    removed_iterations: list[int]
    kept_parts: int  # committed parts of the open iteration left
    problems: list[str]  # the checks that failed, one line each
    removed_files: list[str]
    used_backup: bool


def repair(store: RunStore) -> RepairResult:
    """Roll a run back to its last intact state; the files past it are deleted, never rewritten.

    The manifest falls back on ``manifest.backup.json`` if it fails its own check. Iterations are
    kept in order up to the first with a file that fails its check; the last kept one must still
    have its checkpoint (otherwise earlier ones are dropped too, down to the initial state). Parts of
    an open iteration are kept up to the first bad one, and only if every iteration passed.
    """
    problems: list[str] = []
    manifest, used_backup = _readable_manifest(store, problems)
    config_problem = _failure(store, manifest["files"][CONFIG])
    if config_problem:
        raise RunDirectoryError(f"{config_problem}; a run cannot be repaired without its config: "
                                "restore config.yaml from a copy")
    good: list[dict[str, Any]] = []
    for entry in manifest["iterations"]:
        bad = _first_failure(store, entry["files"])
        if bad:
            problems.append(bad)
            break
        good.append(entry)
    while good and not good[-1]["checkpoint"]:
        good.pop()
    parts: list[dict[str, Any]] = []
    open_ = manifest.get("open")
    if open_ is not None and len(good) == len(manifest["iterations"]):
        for part in open_["parts"]:
            bad = _first_failure(store, part["files"])
            if bad:
                problems.append(bad)
                break
            parts.append(part)
    removed = [e["iteration"] for e in manifest["iterations"][len(good):]]
    new = {**manifest, "iterations": good,
           "open": {**open_, "parts": parts} if open_ is not None and parts else None,
           "finished": bool(manifest.get("finished")) and not removed}
    new["files"] = {k: v for k, v in manifest["files"].items() if k != LEDGER}
    if good:  # staged like a commit's: renamed into place once the new manifest is on disk
        rows = [r for e in good for r in e["ledger"]]
        staged = store.write_table(LEDGER_PENDING, ledger_table_from_dicts(rows))
        new["files"][LEDGER] = {**asdict(staged), "path": LEDGER}
    dropped = sorted({e["path"] for e in all_entries(manifest)} - {e["path"] for e in all_entries(new)})
    store.replace_manifest(new, previous=manifest)
    removed_files = dropped + store.clean()
    store.check_all()
    return RepairResult(len(good), removed, len(parts), problems, removed_files, used_backup)


def _readable_manifest(store: RunStore, problems: list[str]) -> tuple[dict[str, Any], bool]:
    try:
        return store.read_manifest(MANIFEST), False
    except IntegrityError as error:
        problems.append(str(error).split(";")[0])
        return store.read_manifest(MANIFEST_BACKUP), True


def _first_failure(store: RunStore, entries: list[dict[str, Any]]) -> str | None:
    return next((failure for failure in (_failure(store, e) for e in entries) if failure), None)


def _failure(store: RunStore, entry: Mapping[str, Any]) -> str | None:
    try:
        store.check(entry)
    except IntegrityError as error:
        return str(error).split(";")[0]
    return None


def check_run(store: RunStore) -> list[str]:
    """Every problem with a run directory, one line each (empty: every file passes its check)."""
    problems: list[str] = []
    try:
        manifest = store.read_manifest(MANIFEST)
    except IntegrityError as error:
        return [str(error).split(";")[0]]
    for entry in all_entries(manifest):
        failure = _failure(store, entry)
        if failure:
            problems.append(failure)
    return problems
