"""The run store: reads and writes one run directory (layout and protocol in ``docs/run-directory.md``).

Committing a part costs O(part): its files are written, then one checksummed record is appended to
the iteration's part journal (``iter-NNNN/parts.journal``). Committing an iteration compacts the
journal into ``iter-NNNN/record.json`` and replaces ``manifest.json`` (and its backup), whose size
grows with the number of iterations only. Every file is written under a temporary name, fsynced,
renamed, and its folder fsynced; files the new state no longer lists are deleted only after the
manifest that drops them is on disk. So a kill at any instant leaves the last committed state intact,
plus stray files (and at most one torn journal record) that :meth:`RunStore.clean` removes.

Writers hold the run directory's lock (``.lock``, taken on the first write); readers never lock.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from synthloop.budget import LedgerRow
from synthloop.faults import Faults
from synthloop.store import legacy
from synthloop.store.codecs import json_default, ledger_table, plain_json, table_bytes
from synthloop.store.files import (
    INERT,
    TMP_NAME,
    IntegrityError,
    RunDirectoryError,
    append_record,
    atomic_write_bytes,
    ensure_dir,
    fsync_dir,
    fsync_tree,
    lock_directory,
    read_records,
    record_line,
    sha256_bytes,
    sha256_file,
    truncate_to,
)
from synthloop.store.schema import (
    CONFIG,
    FORMAT,
    LEDGER,
    Checkpoint,
    FileEntry,
    Initial,
    IterationEntry,
    IterationRecord,
    Loaded,
    Manifest,
    OpenIteration,
    PartRecord,
    SchemaError,
    digest,
    manifest_bytes,
    parse,
    record_bytes,
)

MANIFEST = "manifest.json"
MANIFEST_BACKUP = "manifest.backup.json"
LEDGER_PENDING = "ledger.parquet.pending"  # the next ledger, renamed into place once its manifest is on disk
SPARSE_EVERY = 5  # besides the last keep_checkpoints, the checkpoint of every 5th iteration is kept


def iteration_dir(iteration: int) -> str:
    return f"iter-{iteration:04d}"


def journal_path(iteration: int) -> str:
    return f"{iteration_dir(iteration)}/parts.journal"


def record_path(iteration: int) -> str:
    return f"{iteration_dir(iteration)}/record.json"


def kept_checkpoint(iteration: int, *, recent: bool, sparse_every: int) -> bool:
    """Whether a checkpoint survives pruning: one of the last ``keep_checkpoints``, or of every
    ``sparse_every``-th iteration (the 5th, 10th, ...), so a repair rolls back at most that far."""
    return recent or (iteration + 1) % sparse_every == 0


class RunStore:
    """Reads and writes one run directory. Only files the manifest (or the open iteration's part
    journal) lists, and that pass their check against it, are ever read back."""

    def __init__(self, root: Path, *, fsync: bool = True, faults: Faults = INERT) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.faults = faults
        self._unlock: weakref.finalize | None = None
        self._forget()

    def _forget(self) -> None:
        """Drop what was read (the directory changed under this store: a run was removed)."""
        self._loaded: Loaded | None = None
        self._records: dict[int, IterationRecord] = {}
        self._open: OpenIteration | None = None
        self._open_read = False
        self._journal_end: int | None = None  # where the intact records end, if a torn one follows
        self._ledger_rows: list[LedgerRow] | None = None
        self._verified: set[tuple[str, str]] = set()

    # -- the lock ------------------------------------------------------------------------------

    def acquire(self, *, creating: bool = False) -> None:
        """Take the run directory's lock (once; writers call it on their first write). Unless
        ``creating``, the directory must hold a run: nothing is written into any other folder."""
        if self._unlock is None:
            if not creating and not self.holds_run():
                raise RunDirectoryError(f"{self.root / MANIFEST} is missing: {self.root} is not a synthloop "
                                        "run directory")
            self._unlock = weakref.finalize(self, lock_directory(self.root, faults=self.faults))

    def holds_run(self) -> bool:
        return (self.root / MANIFEST).is_file() or (self.root / MANIFEST_BACKUP).is_file()

    def _writable(self) -> Manifest:
        """The committed manifest, for a write: under the lock, in format 3."""
        self.acquire()
        self.upgrade()
        return self.manifest()

    def close(self) -> None:
        """Release the lock (also released when the store is garbage collected or the process ends)."""
        if self._unlock is not None:
            self._unlock()
            self._unlock = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing files -------------------------------------------------------------------------

    def create(self, config_text: str, *, overwrite: bool = False) -> None:
        """Start a run directory; under the lock, so two writers cannot both create it (a refusal
        is decided before the lock too, so that refusing writes nothing, not even the lock file)."""
        for locked in (False, True):
            if locked:
                ensure_dir(self.root, fsync=self.fsync)
                self.acquire(creating=True)
            if self.holds_run() and not overwrite:
                raise RunDirectoryError(
                    f"{self.root} already holds a run; `synthloop resume {self.root}` continues it, "
                    "or choose another name (or --overwrite)"
                )
        if self.holds_run():
            self._remove_run_files()
        entry = self.write_bytes(CONFIG, config_text.encode())
        self._commit(Manifest(files={CONFIG: entry}))

    def _remove_run_files(self) -> None:
        for name in (MANIFEST_BACKUP, MANIFEST, LEDGER, LEDGER_PENDING, CONFIG):
            (self.root / name).unlink(missing_ok=True)
        for path in sorted(self.root.iterdir()):
            if path.name.startswith("iter-") or TMP_NAME.match(path.name):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        self._forget()

    def write_bytes(self, relative: str, data: bytes, *, rows: int | None = None) -> FileEntry:
        self.acquire()
        atomic_write_bytes(self.root / relative, data, fsync=self.fsync, faults=self.faults)
        return FileEntry(path=relative, sha256=sha256_bytes(data), bytes=len(data), rows=rows)

    def write_table(self, relative: str, table: pa.Table) -> FileEntry:
        return self.write_bytes(relative, table_bytes(table), rows=table.num_rows)

    def write_json(self, relative: str, payload: Any) -> FileEntry:
        return self.write_bytes(relative, json.dumps(payload, indent=2, sort_keys=True, default=json_default).encode())

    def adopt_directory(self, relative: str) -> list[FileEntry]:
        """Entries for the files a plug-in wrote under ``relative`` (made durable first)."""
        directory = self.root / relative
        fsync_tree(directory, fsync=self.fsync)
        return [self.entry_for(p.relative_to(self.root).as_posix())
                for p in sorted(directory.rglob("*")) if p.is_file()]

    def entry_for(self, relative: str) -> FileEntry:
        path = self.root / relative
        return FileEntry(path=relative, sha256=sha256_file(path), bytes=path.stat().st_size)

    # -- commits -------------------------------------------------------------------------------

    def commit_initial(self, metrics: dict[str, float], *, task: str, primary_metric: str,
                       higher_is_better: bool) -> None:
        """Commit the evaluation before iteration 0 (and what it means: primary metric, direction)."""
        initial = Initial(metrics={k: float(v) for k, v in metrics.items()}, task=task,
                          primary_metric=primary_metric, higher_is_better=bool(higher_is_better))
        self._commit(self._writable().model_copy(update={"initial": initial}))

    def commit_part(self, record: PartRecord) -> None:
        """Append one generated part of the open iteration to its journal: O(part), whatever the run."""
        manifest = self._writable()
        open_ = self.open_iteration()
        parts = open_.parts if open_ is not None else ()
        expected = (len(manifest.iterations), parts[0].n_target if parts else record.n_target, len(parts))
        if (record.iteration, record.n_target, record.part) != expected:
            raise RunDirectoryError(f"{self.root}: part {record.iteration}/{record.part} (n_t = {record.n_target}) "
                                    f"committed out of order (expected {expected[0]}/{expected[2]}, n_t = {expected[1]})")
        relative = journal_path(record.iteration)
        self.faults.point("commit", relative)
        append_record(self.root / relative, record_bytes(record), fsync=self.fsync, faults=self.faults)
        self._open = OpenIteration(record.iteration, record.n_target, (*parts, record))

    def commit_iteration(self, iteration: int, files: Sequence[FileEntry], summary: dict[str, Any],
                         ledger_rows: Sequence[LedgerRow], checkpoint: Checkpoint, *, keep_checkpoints: int,
                         sparse_every: int = SPARSE_EVERY) -> None:
        """Compact the iteration into its record, write the ledger view, then the manifest that makes
        the iteration count; checkpoints the pruning rule drops leave the manifest in the same write."""
        manifest = self._writable()
        if iteration != len(manifest.iterations):
            raise RunDirectoryError(f"{self.root}: iteration {iteration} committed out of order")
        record = IterationRecord(iteration=iteration, files=tuple(files), ledger=tuple(ledger_rows))
        record_entry = self.write_bytes(record_path(iteration), record_bytes(record))
        rows = [*self.committed_ledger_rows(), *ledger_rows]
        # ledger.parquet is replaced in place, so it is staged: a kill between the manifest and the
        # rename leaves a pending file whose sha256 the manifest names, and clean() finishes the rename.
        ledger = self.write_table(LEDGER_PENDING, ledger_table(rows)).model_copy(update={"path": LEDGER})
        entry = IterationEntry(iteration=iteration, summary=plain_json(summary), record=record_entry,
                               checkpoint=checkpoint)
        iterations, pruned = _prune([*manifest.iterations, entry], keep_checkpoints, sparse_every)
        open_ = self.open_iteration()
        obsolete = [f.path for p in (open_.parts if open_ else ()) for f in p.files]
        obsolete = [*pruned, *sorted(set(obsolete) - {f.path for f in files}), journal_path(iteration)]
        self._commit(manifest.model_copy(update={"iterations": iterations,
                                                 "files": {**manifest.files, LEDGER: ledger}}), obsolete)
        self._records[iteration] = record
        self._ledger_rows = rows
        self._open, self._open_read = None, True
        self._roll_forward_ledger()
        for before, after in zip(manifest.iterations, iterations, strict=False):  # last: readers wait for
            if before.checkpoint is not None and after.checkpoint is None:  # the ledger, not for this
                remove_empty_folders(self.root / iteration_dir(before.iteration) / "checkpoint")

    def mark_finished(self) -> None:
        """Record that the run's plan or budget is exhausted."""
        manifest = self._writable()
        if not manifest.finished:
            self._commit(manifest.model_copy(update={"finished": True}))

    def _commit(self, manifest: Manifest, obsolete: Sequence[str] = ()) -> None:
        """Replace the manifest (the commit), then its backup; then delete what it no longer lists."""
        self.acquire()
        text = manifest_bytes(manifest)
        self.faults.point("commit", MANIFEST)
        atomic_write_bytes(self.root / MANIFEST, text, fsync=self.fsync, faults=self.faults)
        atomic_write_bytes(self.root / MANIFEST_BACKUP, text, fsync=self.fsync, faults=self.faults)
        self._loaded = Loaded(manifest)
        self.faults.point("cleanup")
        for relative in obsolete:
            self._delete(relative)

    def _delete(self, relative: str) -> None:
        path = self.root / relative
        path.unlink(missing_ok=True)
        folder = path.parent
        while folder != self.root and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent

    # -- repair --------------------------------------------------------------------------------

    def replace(self, manifest: Manifest, *, parts: Sequence[PartRecord]) -> None:
        """Commit ``manifest`` and the open parts ``parts`` in place of the current state (a repair:
        what it no longer lists is then deleted by :meth:`clean`)."""
        self.acquire()
        following = self.root / journal_path(len(manifest.iterations))
        lines = b"".join(record_line(record_bytes(p)) for p in parts)
        if lines:
            atomic_write_bytes(following, lines, fsync=self.fsync, faults=self.faults)
        else:
            following.unlink(missing_ok=True)
        self._commit(manifest)
        self._records = {t: r for t, r in self._records.items() if t < len(manifest.iterations)}
        self._ledger_rows, self._open, self._open_read = None, None, False
        self._roll_forward_ledger()

    def upgrade(self) -> None:
        """Commit a format-2 run directory in format 3: its inline records become files (the data
        files themselves are not touched, damaged or not). Writers call it before anything else."""
        loaded = self.loaded()
        if not loaded.legacy:
            return
        entries = []
        for entry in loaded.manifest.iterations:
            record = loaded.records[entry.iteration]
            written = self.write_bytes(record_path(entry.iteration), record_bytes(record))
            entries.append(entry.model_copy(update={"record": written}))
        manifest = loaded.manifest.model_copy(update={"iterations": tuple(entries)})
        parts = loaded.open.parts if loaded.open is not None and not manifest.finished else ()
        self._records = dict(loaded.records)
        self.replace(manifest, parts=parts)

    # -- reading the manifest and the journal --------------------------------------------------

    def manifest(self) -> Manifest:
        """The committed manifest, after checking its own sha256 and its schema."""
        return self.loaded().manifest

    def loaded(self) -> Loaded:
        if self._loaded is None:
            loaded = self.read_manifest(MANIFEST)
            self._records.update(loaded.records)
            self._loaded = loaded
        return self._loaded

    def use(self, loaded: Loaded) -> None:
        """Take ``loaded`` as the committed state (a repair that falls back on the backup)."""
        self._forget()
        self._records.update(loaded.records)
        self._loaded = loaded

    def read_manifest(self, name: str = MANIFEST) -> Loaded:
        """``manifest.json`` or ``manifest.backup.json``, checked (sha256, then schema)."""
        path = self.root / name
        if not path.is_file():
            if name == MANIFEST and not (self.root / MANIFEST_BACKUP).exists():
                raise RunDirectoryError(f"{path} is missing: {self.root} is not a synthloop run directory")
            raise IntegrityError(self.root, path, "is missing")
        try:
            body = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise IntegrityError(self.root, path, "is truncated or corrupted (not valid JSON)") from None
        if not isinstance(body, dict) or body.get("sha256") != digest(body):
            raise IntegrityError(self.root, path, "is corrupted (its content does not match its sha256)")
        text = json.dumps({k: v for k, v in body.items() if k != "sha256"})
        if body.get("format") == 2:
            return legacy.read(text, root=self.root, path=path)
        if body.get("format") != FORMAT:
            raise RunDirectoryError(f"{path}: format {body.get('format')!r} is not supported "
                                    f"(this synthloop reads formats 2 and {FORMAT})")
        manifest = parse(Manifest, text, root=self.root, path=path)
        _check_sequence(self.root, path, manifest)
        return Loaded(manifest)

    def open_iteration(self) -> OpenIteration | None:
        """The iteration in progress and its committed parts (from its journal), if any."""
        if not self._open_read:
            loaded = self.loaded()
            self._open = loaded.open if loaded.legacy else self._read_journal(loaded.manifest)
            self._open_read = True
        return self._open

    def _read_journal(self, manifest: Manifest) -> OpenIteration | None:
        open_, damage = self.read_journal(manifest)
        if damage is not None:
            raise IntegrityError(self.root, self.root / journal_path(len(manifest.iterations)), damage)
        return open_

    def read_journal(self, manifest: Manifest) -> tuple[OpenIteration | None, str | None]:
        """The open iteration's intact parts, and what is wrong with the first damaged record (if
        any). A torn last record (a kill mid-append) is neither: it was never committed."""
        iteration = len(manifest.iterations)
        path = self.root / journal_path(iteration)
        if manifest.finished or not path.is_file():
            return None, None
        journal = read_records(path)
        self._journal_end = journal.end if journal.torn else None
        parts: list[PartRecord] = []
        damage = journal.damage
        for k, payload in enumerate(journal.payloads):
            part = parse(PartRecord, payload, root=self.root, path=path, where=f"record {k + 1}: ")
            if (part.iteration, part.part, part.n_target) != (iteration, k, (parts or [part])[0].n_target):
                damage = (f"is inconsistent (record {k + 1} is part {part.iteration}/{part.part} "
                          f"of n_t = {part.n_target}, expected {iteration}/{k})")
                break
            parts.append(part)
        opened = OpenIteration(iteration, parts[0].n_target, tuple(parts)) if parts else None
        return opened, damage

    def iteration_record(self, iteration: int) -> IterationRecord:
        """What a committed iteration holds (its record file, checked)."""
        if iteration not in self._records:
            entry = self.iteration_entry(iteration)
            assert entry.record is not None  # only format 2 holds records inline, and they are cached
            path = self.check(entry.record)
            self._records[iteration] = parse(IterationRecord, path.read_bytes(), root=self.root, path=path)
        return self._records[iteration]

    def iteration_entry(self, iteration: int) -> IterationEntry:
        iterations = self.manifest().iterations
        if not 0 <= iteration < len(iterations):
            raise RunDirectoryError(f"iteration {iteration} is not committed in {self.root}")
        return iterations[iteration]

    def committed_ledger_rows(self) -> list[LedgerRow]:
        """The ledger rows of every committed iteration, from their records."""
        if self._ledger_rows is None:
            self._ledger_rows = [r for e in self.manifest().iterations for r in self.iteration_record(e.iteration).ledger]
        return list(self._ledger_rows)

    # -- checking files ------------------------------------------------------------------------

    def check(self, entry: FileEntry) -> Path:
        """The path of a listed file, after checking its size and sha256."""
        path = self.check_size(entry)
        key = (entry.path, entry.sha256)
        if key not in self._verified:
            if sha256_file(path) != entry.sha256:
                raise IntegrityError(self.root, path, "is corrupted (its sha256 differs from the manifest's)")
            self._verified.add(key)
        return path

    def check_size(self, entry: FileEntry) -> Path:
        """The path of a listed file, after checking that it exists with its listed size."""
        path = self.root / entry.path
        if not path.is_file():
            raise IntegrityError(self.root, path, "is missing (the manifest lists it)")
        size = path.stat().st_size
        if size != entry.bytes:
            raise IntegrityError(self.root, path, f"is truncated or altered ({size} bytes, the manifest says {entry.bytes})")
        return path

    def entries(self) -> Iterator[FileEntry]:
        """Every file the run lists (reading, and so checking, each iteration's record on the way)."""
        yield from self.manifest().files.values()
        for entry in self.manifest().iterations:
            if entry.record is not None:
                yield entry.record
            yield from self.iteration_record(entry.iteration).files
            yield from entry.checkpoint.files if entry.checkpoint else ()
        open_ = self.open_iteration()
        for part in open_.parts if open_ else ():
            yield from part.files

    def verify(self, *, content: bool) -> None:
        """Check every listed file's size, and with ``content`` its sha256 too; raise on the first
        that fails. (Records are always read, so always hashed.)"""
        for entry in self.entries():
            self.check(entry) if content else self.check_size(entry)

    def check_all(self) -> None:
        self.verify(content=True)

    # -- cleaning (writers, at start) ----------------------------------------------------------

    def clean(self) -> list[str]:
        """Finish or undo what a crash interrupted: refresh the backup, finish the ledger rename, cut a
        torn journal record, delete files no state lists in the run's own folders; return them."""
        self.acquire()
        self.upgrade()
        manifest_text = (self.root / MANIFEST).read_bytes()
        backup = self.root / MANIFEST_BACKUP
        if not backup.is_file() or backup.read_bytes() != manifest_text:
            atomic_write_bytes(backup, manifest_text, fsync=self.fsync, faults=self.faults)
        self._roll_forward_ledger()
        referenced = self.referenced()
        removed = []
        if self._journal_end is not None:
            truncate_to(self.root / journal_path(len(self.manifest().iterations)), self._journal_end, fsync=self.fsync)
            self._journal_end = None
        if (self.root / LEDGER_PENDING).exists():
            (self.root / LEDGER_PENDING).unlink()
            removed.append(LEDGER_PENDING)
        for path in sorted(self.root.rglob("*")):
            relative = path.relative_to(self.root).as_posix()
            stray_tmp = TMP_NAME.match(path.name) is not None
            if path.is_file() and (stray_tmp or (relative.startswith("iter-") and relative not in referenced)):
                path.unlink()
                removed.append(relative)
        for folder in sorted(self.root.glob("iter-*/**/"), key=lambda p: len(p.parts), reverse=True):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        return removed

    def referenced(self) -> set[str]:
        """Every path the committed state lists: files, records, checkpoints, the open journal."""
        paths = {e.path for e in self.entries()}
        if self.open_iteration() is not None:
            paths.add(journal_path(len(self.manifest().iterations)))
        return paths

    def _roll_forward_ledger(self) -> None:
        pending = self.root / LEDGER_PENDING
        entry = self.manifest().files.get(LEDGER)
        if pending.exists() and entry is not None and sha256_file(pending) == entry.sha256:
            os.replace(pending, self.root / LEDGER)
            fsync_dir(self.root, fsync=self.fsync)

    # -- reading files -------------------------------------------------------------------------

    def config_text(self) -> str:
        return self.check(self.manifest().files[CONFIG]).read_text()

    def file_entry(self, relative: str) -> FileEntry:
        """The entry of a listed file (searching only the iteration its path names)."""
        for entry in self._entries_near(relative):
            if entry.path == relative:
                return entry
        raise RunDirectoryError(f"{self.root / relative} is not a committed file of this run")

    def _entries_near(self, relative: str) -> Iterator[FileEntry]:
        yield from self.manifest().files.values()
        head = relative.split("/", 1)[0]
        for entry in self.manifest().iterations:
            if iteration_dir(entry.iteration) == head:
                yield from self.iteration_record(entry.iteration).files
                yield from entry.checkpoint.files if entry.checkpoint else ()
        open_ = self.open_iteration()
        if open_ is not None and iteration_dir(open_.iteration) == head:
            yield from (f for p in open_.parts for f in p.files)

    def read_table(self, relative: str) -> pa.Table:
        entry = self.file_entry(relative)
        path = self.check(entry)
        table = pq.read_table(path)
        if entry.rows is not None and table.num_rows != entry.rows:
            raise IntegrityError(self.root, path, f"has {table.num_rows} rows, the manifest says {entry.rows}")
        return table

    def read_json(self, relative: str) -> Any:
        return json.loads(self.check(self.file_entry(relative)).read_text())

    def candidate_parts(self, iteration: int) -> Iterator[pa.Table]:
        for entry in self.iteration_record(iteration).files:
            if entry.path.startswith(f"{iteration_dir(iteration)}/candidates/"):
                yield self.read_table(entry.path)

    def selected(self, iteration: int) -> pa.Table:
        relative = f"{iteration_dir(iteration)}/selected.parquet"
        if not any(f.path == relative for f in self.iteration_record(iteration).files):
            raise RunDirectoryError(f"{self.root / relative}: iteration {iteration} stored no selected set "
                                    "(the run had loop.store_candidates: none)")
        return self.read_table(relative)

    def metrics(self, iteration: int) -> dict[str, Any]:
        metrics: dict[str, Any] = self.read_json(f"{iteration_dir(iteration)}/metrics.json")
        return metrics

    def ledger(self) -> pa.Table:
        """``ledger.parquet``, checked (empty before the first iteration is committed)."""
        entry = self.manifest().files.get(LEDGER)
        if entry is None:
            return ledger_table([])
        try:
            return self.read_table(LEDGER)
        except IntegrityError:
            # a reader between a commit and its rename of the staged ledger: the committed ledger is
            # still the pending file (whose sha256 the manifest names); or the rename has just happened
            staged = self.root / LEDGER_PENDING
            try:
                if sha256_file(staged) == entry.sha256:
                    return pq.read_table(staged)
            except OSError:
                pass
            return self.read_table(LEDGER)

    def checkpoint_folders(self, iteration: int) -> dict[str, Path]:
        """Each component's checked checkpoint folder of a committed iteration, by name."""
        checkpoint = self.iteration_entry(iteration).checkpoint
        if checkpoint is None:
            raise RunDirectoryError(f"{self.root / iteration_dir(iteration)}: checkpoint was pruned")
        for file in checkpoint.files:
            self.check(file)
        base = self.root / iteration_dir(iteration) / "checkpoint"
        if checkpoint.layout == "learner":
            return {"learner": base}
        return {name: base / name for name in checkpoint.names}


def remove_empty_folders(folder: Path) -> None:
    """Delete ``folder`` and the folders below it that hold no file (a component that saved
    nothing leaves an empty folder in its checkpoint); a folder holding a file stays, with it."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            remove_empty_folders(child)
    if not any(folder.iterdir()):
        folder.rmdir()


def _check_sequence(root: Path, path: Path, manifest: Manifest) -> None:
    if CONFIG not in manifest.files:
        raise SchemaError(root, path, f"does not follow the synthloop format-{FORMAT} schema (files: no {CONFIG})")
    for k, entry in enumerate(manifest.iterations):
        if entry.iteration != k or entry.record is None:
            raise SchemaError(root, path, f"does not follow the synthloop format-{FORMAT} schema "
                                          f"(iterations.{k}: iteration {entry.iteration}, record {entry.record})")


def _prune(entries: list[IterationEntry], keep: int, sparse_every: int) -> tuple[tuple[IterationEntry, ...], list[str]]:
    """Drop the checkpoints the pruning rule does not keep; return the entries and the dropped files."""
    with_checkpoint = [e.iteration for e in entries if e.checkpoint is not None]
    recent = set(with_checkpoint[-keep:]) if keep > 0 else set()
    out: list[IterationEntry] = []
    dropped: list[str] = []
    for entry in entries:
        if entry.checkpoint is not None and not kept_checkpoint(
                entry.iteration, recent=entry.iteration in recent, sparse_every=sparse_every):
            dropped.extend(f.path for f in entry.checkpoint.files)
            entry = entry.model_copy(update={"checkpoint": None})
        out.append(entry)
    return tuple(out), dropped


RunStoreFactory = Callable[[Path], RunStore]
T = TypeVar("T")


def _state(root: Path) -> tuple[bytes | None, ...]:
    """The two manifests as they are now: what a commit changes."""
    out: list[bytes | None] = []
    for name in (MANIFEST, MANIFEST_BACKUP):
        try:
            out.append((root / name).read_bytes())
        except OSError:
            out.append(None)
    return tuple(out)


def read_consistently(root: Path, read: Callable[[], T], *, failed: Callable[[T], bool] = lambda _: False,
                      attempts: int = 5, pause: float = 0.05) -> T:
    """``read()``, needing no lock: if it fails (raises ``IntegrityError``, or ``failed(result)``) and a
    writer committed meanwhile (the manifest or its backup changed, or changes within ``pause``), read
    again from the new state. A commit deletes files the state before it listed, and writes the
    backup just after the manifest; a reader between the two must not call that damage."""
    for attempt in range(attempts):
        before = _state(root)
        last = attempt == attempts - 1
        try:
            result = read()
        except IntegrityError:
            if last or not _changed(root, before, pause):
                raise
            continue
        if not failed(result) or last or not _changed(root, before, pause):
            return result
    raise AssertionError("unreachable")


def _changed(root: Path, before: tuple[bytes | None, ...], pause: float) -> bool:
    if _state(root) != before:
        return True
    time.sleep(pause)
    return _state(root) != before
