"""Committing a run as it goes, and reading back what was committed: exact resume and repair.

The loop hands the :class:`Journal` each generated part and each finished iteration; the journal
writes their files and commits them in the run directory (protocol in ``store/run_store.py``). When
a run resumes, the journal gives back exactly what an uninterrupted run would hold at that point:

- the history of committed iterations (their metrics, from which the loop re-derives the measured
  acceptance rate and unit costs it re-plans with),
- the ledger rows of every committed iteration and part, so no committed spending happens twice,
- the state of every stateful component (learner, prompt policy, selector, training-set pool...)
  after the last committed iteration, from ``iter-NNNN/checkpoint/<name>/``,
- the parts of the iteration that was open: their draw counts, verdict counts, ledger rows, the
  training cost already reserved, what the prompt policy observed, and their kept rows (streaming
  selectors) or all their candidates (generate-then-select), so the iteration continues at the next
  part instead of starting over.

What a part commits does not depend on ``store_candidates``: kept rows are always written (to
``kept/part-*.parquet``, dropped once the iteration commits its ``selected.parquet``), in ``select``
mode all candidates of a part are written until the iteration's selection is committed, and a part's
observations are committed with it. So a run that stores no candidates still never re-spends a
committed part.

Prompts are not stored: ``Task.sample_prompts`` is deterministic for its seed (the conformance suite
checks it), so a resumed part re-draws its prompts from the same ``SeedSequence`` key, for free.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

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
    SPARSE_EVERY,
    Checkpoint,
    FileEntry,
    IntegrityError,
    IterationEntry,
    Manifest,
    PartRecord,
    RunDirectoryError,
    RunStore,
    candidates_table,
    iteration_dir,
    journal_path,
    ledger_table,
    read_consistently,
    records_from_table,
)
from synthloop.store.files import ensure_dir
from synthloop.store.schema import Loaded, ObservedCounts

STATE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")  # a folder name, nothing more


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
    """Commits a run to its store; with ``store=None`` it commits nothing and resumes nothing.

    Checkpoints kept: those of the last ``keep_checkpoints`` iterations, and of every
    ``sparse_every``-th iteration (the 5th, 10th, ...), so that a repair of damage in iteration i
    rolls back at most ``sparse_every`` iterations before i; the others are deleted at the commit
    that drops them. Two recent ones (the default) are what resume and repair need: resume loads the
    last, and a repair of damage to the last committed iteration (the one written most recently)
    rolls back to the one before. A checkpoint holds a whole model with its optimizer state, so
    each one more costs that much disk (a full SmolLM2 fine-tune: about 1.5 GB).
    """

    def __init__(self, store: RunStore | None, *, store_candidates: str, keep_checkpoints: int,
                 sparse_every: int = SPARSE_EVERY) -> None:
        self.store = store
        self.store_candidates = store_candidates
        self.keep_checkpoints = keep_checkpoints
        self.sparse_every = sparse_every

    def point(self, name: str, detail: str = "") -> None:
        """A moment where a crash matters (the store's fault-injection hook; inert by default)."""
        if self.store is not None:
            self.store.faults.point(name, detail)

    # -- resume ----------------------------------------------------------------------------------

    def initial(self, task: Task, evaluate: Callable[[], dict[str, float]]) -> dict[str, float]:
        """The evaluation before iteration 0, committed before anything else."""
        committed = self.store.manifest().initial if self.store is not None else None
        if committed is not None:
            return dict(committed.metrics)
        metrics = evaluate()
        if self.store is not None:
            self.store.commit_initial(metrics, task=task.name, primary_metric=task.primary_metric,
                                      higher_is_better=task.higher_is_better)
        return metrics

    def restore(self, states: Mapping[str, Stateful], ledger: Ledger) -> list[dict[str, Any]]:
        """Load the last committed state into ``states`` and ``ledger``; return the history."""
        if self.store is None:
            return []
        self.store.clean()
        self.store.check_all()
        iterations = self.store.manifest().iterations
        for entry in iterations:
            ledger.restore(self.store.iteration_record(entry.iteration).ledger)
        if iterations:
            self._load_states(iterations[-1].iteration, states)
        return [dict(entry.summary) for entry in iterations]

    def _load_states(self, t: int, states: Mapping[str, Stateful]) -> None:
        assert self.store is not None
        folders = self.store.checkpoint_folders(t)
        checkpoint = self.store.iteration_entry(t).checkpoint
        assert checkpoint is not None
        if checkpoint.layout == "components" and set(folders) != set(states):
            raise RunDirectoryError(
                f"{self.store.root / iteration_dir(t) / 'checkpoint'} holds the state of "
                f"{', '.join(sorted(folders)) or 'nothing'}, but the loop has {', '.join(sorted(states))}: "
                "the run's config or code has changed")
        for name, state in states.items():
            if name in folders:  # format 2 checkpoints hold the learner only; the rest starts fresh
                folders[name].mkdir(parents=True, exist_ok=True)  # a component that saved no file
                state.load(folders[name])

    def resumed_parts(self, t: int, n_target: int) -> list[Part]:
        """The committed parts of iteration ``t`` if it was open when the run stopped."""
        open_ = self.store.open_iteration() if self.store is not None else None
        if open_ is None or open_.iteration != t:
            return []
        if open_.n_target != n_target:
            raise RunDirectoryError(
                f"{self.store.root if self.store else ''}: iteration {t} was started with n_t = "
                f"{open_.n_target} but now plans {n_target}; the run's config or code has changed"
            )
        return [self._read_part(t, record) for record in open_.parts]

    def _read_part(self, t: int, record: PartRecord) -> Part:
        assert self.store is not None
        part = Part(part=record.part, size=record.size, ledger_rows=list(record.ledger),
                    verdicts=np.asarray(record.verdicts, dtype=np.int64),
                    train_committed=record.train_committed, acceptable=record.acceptable,
                    observed=record.observed.observations() if record.observed is not None else None)
        if record.streaming and record.n_kept > 0:
            table = self.store.read_table(_kept_path(t, part.part))
            candidates, scores = records_from_table(table)
            part.kept = (table.column("index").to_numpy().astype(np.int64), candidates, scores)
        elif not record.streaming:
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
        self.store.commit_part(PartRecord(
            iteration=t, n_target=int(n_target), part=part.part, size=int(part.size), files=tuple(files),
            ledger=tuple(part.ledger_rows), verdicts=tuple(int(v) for v in part.verdicts[:3]),  # type: ignore[arg-type]
            train_committed=float(part.train_committed), streaming=part.pending is None, n_kept=n_kept,
            acceptable=int(part.acceptable),
            observed=ObservedCounts.of(part.observed) if part.observed is not None else None))

    def commit_iteration(
        self, t: int, kept: list[tuple[int, npt.NDArray[np.int64], Candidates, Scores]],
        states: Mapping[str, Stateful], ledger: Ledger, metrics: Mapping[str, Any],
    ) -> None:
        """Write the selected set, every component's state and the metrics, then commit, last."""
        if self.store is None:
            return
        store = self.store
        open_ = store.open_iteration()
        files: list[FileEntry] = []
        if self.store_candidates == "all" and open_ is not None and open_.iteration == t:
            files.extend(f for p in open_.parts for f in p.files if "/candidates/" in f.path)
        if self.store_candidates != "none" and kept:
            tables = [candidates_table(iteration=t, part=p, candidates=c, scores=s, indices=ix)
                      for p, ix, c, s in kept]
            files.append(store.write_table(f"{iteration_dir(t)}/selected.parquet", pa.concat_tables(tables)))
        checkpoint = self._save_states(t, states)
        files.append(store.write_json(f"{iteration_dir(t)}/metrics.json", metrics))
        rows = [r for r in ledger.rows if r.iteration == t]
        store.commit_iteration(t, files, dict(metrics), rows, checkpoint,
                               keep_checkpoints=self.keep_checkpoints, sparse_every=self.sparse_every)

    def _save_states(self, t: int, states: Mapping[str, Stateful]) -> Checkpoint:
        """Each component saves into an empty ``checkpoint/<name>/`` of its own."""
        assert self.store is not None
        relative = f"{iteration_dir(t)}/checkpoint"
        base = self.store.root / relative
        shutil.rmtree(base, ignore_errors=True)  # a crashed attempt's leftovers
        ensure_dir(base, fsync=self.store.fsync)
        for name, state in states.items():
            if not STATE_NAME.match(name):
                raise ValueError(f"state name {name!r} must be a plain folder name (letters, digits, _ . -)")
            (base / name).mkdir()
            state.save(base / name)
        self.point("checkpoint", relative)
        return Checkpoint(names=tuple(states), files=tuple(self.store.adopt_directory(relative)))


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

    The manifest falls back on ``manifest.backup.json`` if it fails its own check (and the backup
    passes its own). Iterations are kept in order up to the first with a file that fails its check;
    the last kept one must still have its checkpoint (otherwise earlier ones are dropped too, down to
    the initial state). Parts of an open iteration are kept up to the first bad one, and only if
    every iteration passed. A damaged backup is written again from the manifest.
    """
    store.acquire()
    problems: list[str] = []
    used_backup = _load_for_repair(store, problems)
    store.upgrade()
    manifest = store.manifest()
    config_problem = _failure(store, manifest.files[CONFIG])
    if config_problem:
        raise RunDirectoryError(f"{config_problem}; a run cannot be repaired without its config: "
                                "restore config.yaml from a copy")
    good = _intact_iterations(store, manifest, problems)
    parts = _intact_parts(store, manifest, problems) if len(good) == len(manifest.iterations) else []
    removed = [e.iteration for e in manifest.iterations[len(good):]]
    files = {CONFIG: manifest.files[CONFIG]}
    if good:  # staged like a commit's: renamed into place once the new manifest is on disk
        rows = [r for e in good for r in store.iteration_record(e.iteration).ledger]
        files[LEDGER] = store.write_table(LEDGER_PENDING, ledger_table(rows)).model_copy(update={"path": LEDGER})
    store.replace(manifest.model_copy(update={"iterations": tuple(good), "files": files,
                                              "finished": manifest.finished and not removed}), parts=parts)
    if not good:
        (store.root / LEDGER).unlink(missing_ok=True)
    removed_files = store.clean()
    store.check_all()
    return RepairResult(len(good), removed, len(parts), problems, removed_files, used_backup)


def _load_for_repair(store: RunStore, problems: list[str]) -> bool:
    """Read the manifest, or the backup if the manifest fails; say whether the backup was used."""
    try:
        backup: Loaded | None = store.read_manifest(MANIFEST_BACKUP)
    except IntegrityError as error:
        backup = None
        problems.append(error.problem)
    try:
        store.use(store.read_manifest(MANIFEST))
        return False
    except IntegrityError as error:
        problems.append(error.problem)
        if backup is None:
            raise RunDirectoryError(f"{store.root}: manifest.json and manifest.backup.json are both damaged; "
                                    "the run cannot be repaired") from None
        store.use(backup)
        return True


def _intact_iterations(store: RunStore, manifest: Manifest, problems: list[str]) -> list[IterationEntry]:
    good: list[IterationEntry] = []
    for entry in manifest.iterations:
        bad = _iteration_failure(store, entry)
        if bad:
            problems.append(bad)
            break
        good.append(entry)
    while good and good[-1].checkpoint is None:
        good.pop()
    return good


def _iteration_failure(store: RunStore, entry: IterationEntry) -> str | None:
    try:
        record = store.iteration_record(entry.iteration)
    except IntegrityError as error:
        return error.problem
    checkpoint = entry.checkpoint.files if entry.checkpoint else ()
    return _first_failure(store, [*record.files, *checkpoint])


def _intact_parts(store: RunStore, manifest: Manifest, problems: list[str]) -> list[PartRecord]:
    try:
        open_, damage = store.read_journal(manifest)
    except IntegrityError as error:  # a record that passed its checksum but not the schema
        problems.append(error.problem)
        return []
    if damage is not None:
        problems.append(f"{store.root / journal_path(len(manifest.iterations))} {damage}")
    parts: list[PartRecord] = []
    for part in open_.parts if open_ is not None else ():
        bad = _first_failure(store, list(part.files))
        if bad:
            problems.append(bad)
            break
        parts.append(part)
    return parts


def _first_failure(store: RunStore, entries: list[FileEntry]) -> str | None:
    return next((failure for failure in (_failure(store, e) for e in entries) if failure), None)


def _failure(store: RunStore, entry: FileEntry) -> str | None:
    try:
        store.check(entry)
    except IntegrityError as error:
        return error.problem
    return None


# -- check -------------------------------------------------------------------------------------


def check_run(store: RunStore) -> list[str]:
    """Every problem with a run directory, one line each (empty: every file passes its check).

    Needs no lock: if a writer commits while the check runs (files it lists may then be deleted),
    the check starts over on the new state.
    """
    return read_consistently(store.root, lambda: _problems(RunStore(store.root)), failed=bool)


def _problems(store: RunStore) -> list[str]:
    try:
        manifest = store.manifest()
    except IntegrityError as error:
        return [error.problem, *_backup_problem(store)]
    problems = [p for p in (_failure(store, e) for e in manifest.files.values()) if p]
    for it in manifest.iterations:
        try:
            record = store.iteration_record(it.iteration)
        except IntegrityError as error:
            problems.append(error.problem)
            continue
        checkpoint = it.checkpoint.files if it.checkpoint else ()
        problems.extend(p for p in (_failure(store, e) for e in [*record.files, *checkpoint]) if p)
    _intact_parts_all(store, manifest, problems)
    return problems + _backup_problem(store)  # last: a commit writes it just after the manifest


def _backup_problem(store: RunStore) -> list[str]:
    try:
        store.read_manifest(MANIFEST_BACKUP)
    except IntegrityError as error:
        return [error.problem]
    return []


def _intact_parts_all(store: RunStore, manifest: Manifest, problems: list[str]) -> None:
    """Every problem of the open iteration's journal and part files."""
    try:
        open_, damage = store.read_journal(manifest)
    except IntegrityError as error:
        problems.append(error.problem)
        return
    if damage is not None:
        problems.append(f"{store.root / journal_path(len(manifest.iterations))} {damage}")
    for part in open_.parts if open_ is not None else ():
        problems.extend(p for p in (_failure(store, e) for e in part.files) if p)
