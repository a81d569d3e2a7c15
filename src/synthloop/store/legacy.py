"""Run directories in format 2, read as format 3: the one place that knows the older layout.

Format 2 kept everything in ``manifest.json``: each iteration's files and ledger rows inline, the
open iteration's parts inline (rewritten at every part), and the learner's checkpoint files directly
in ``iter-NNNN/checkpoint/``. Read here, a format-2 manifest becomes a format-3
:class:`~synthloop.store.schema.Manifest` whose iteration records and open parts are held in memory
(:class:`~synthloop.store.schema.Loaded`), and whose checkpoints have the ``learner`` layout (the
learner loads from ``checkpoint/`` itself; other components have no saved state). The first writer
(resume, repair) writes those records and the part journal and commits the manifest in format 3;
readers never write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from synthloop.budget import LedgerRow
from synthloop.store.schema import (
    Checkpoint,
    FileEntry,
    Initial,
    IterationEntry,
    IterationRecord,
    Loaded,
    Manifest,
    OpenIteration,
    PartRecord,
    Record,
    parse,
)


class _Part(Record):
    part: int
    size: int
    files: tuple[FileEntry, ...]
    ledger: tuple[LedgerRow, ...]
    verdicts: tuple[int, int, int]
    train_committed: float
    streaming: bool
    n_kept: int
    acceptable: int | None = None  # runs written before the field: the kept count


class _Open(Record):
    iteration: int
    n_target: int
    parts: tuple[_Part, ...]


class _Iteration(Record):
    iteration: int
    files: tuple[FileEntry, ...]
    summary: dict[str, Any]
    ledger: tuple[LedgerRow, ...]
    checkpoint: bool


class _Manifest(Record):
    format: Literal[2]
    files: dict[str, FileEntry]
    initial: Initial | None = None
    iterations: tuple[_Iteration, ...] = ()
    open: _Open | None = None
    finished: bool = False


def read(text: str, *, root: Path, path: Path) -> Loaded:
    """A format-2 manifest (its sha256 already checked) as format 3, records and parts in memory."""
    old = parse(_Manifest, text, root=root, path=path)
    entries, records = [], {}
    for it in old.iterations:
        ckpt = tuple(f for f in it.files if "/checkpoint/" in f.path)
        records[it.iteration] = IterationRecord(
            iteration=it.iteration, files=tuple(f for f in it.files if "/checkpoint/" not in f.path),
            ledger=it.ledger)
        entries.append(IterationEntry(
            iteration=it.iteration, summary=it.summary, record=None,
            checkpoint=Checkpoint(layout="learner", names=("learner",), files=ckpt) if it.checkpoint else None))
    manifest = Manifest(files=old.files, initial=old.initial, iterations=tuple(entries), finished=old.finished)
    return Loaded(manifest, records, _open(old.open), legacy=True)


def _open(old: _Open | None) -> OpenIteration | None:
    if old is None or not old.parts:
        return None
    parts = tuple(PartRecord(
        iteration=old.iteration, n_target=old.n_target, part=p.part, size=p.size, files=p.files,
        ledger=p.ledger, verdicts=p.verdicts, train_committed=p.train_committed, streaming=p.streaming,
        n_kept=p.n_kept, acceptable=p.n_kept if p.acceptable is None else p.acceptable) for p in old.parts)
    return OpenIteration(old.iteration, old.n_target, parts)
