"""The run directory's records: typed, validated, one JSON form each (format 3).

- :class:`Manifest` (``manifest.json``): the run's files, its initial evaluation, one
  :class:`IterationEntry` per committed iteration (its summary, where its record is, its checkpoint),
  whether it finished; it carries the sha256 of its canonical JSON.
- :class:`IterationRecord` (``iter-NNNN/record.json``): what a committed iteration holds: its files
  and its ledger rows (the compaction of its part journal). The manifest lists it with its sha256.
- :class:`PartRecord`: one line of ``iter-NNNN/parts.journal`` while the iteration is open.

Reading validates strictly (no bool for an int, no missing or unknown field); a record that does not
fit is a :class:`SchemaError` naming the file, never a ``KeyError``. Run directories in format 2 are
read by ``legacy.py``, the one place that knows that format.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from synthloop.budget import LedgerRow
from synthloop.records import Observations
from synthloop.store.files import IntegrityError, sha256_bytes

FORMAT: Literal[3] = 3
CONFIG = "config.yaml"
LEDGER = "ledger.parquet"


class SchemaError(IntegrityError):
    """A record that passed its checksum but does not follow the schema (hand-made or from a bug)."""


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, ser_json_inf_nan="constants")


class FileEntry(Record):
    """A file of the run: its path (relative, forward slashes), size and sha256 (and Parquet rows)."""

    path: str
    sha256: str
    bytes: int
    rows: int | None = None


class Initial(Record):
    """The evaluation before iteration 0, and what it means."""

    metrics: dict[str, float]
    task: str
    primary_metric: str
    higher_is_better: bool


class Checkpoint(Record):
    """The state of every stateful component after an iteration, under ``iter-NNNN/checkpoint/``.

    ``layout``: ``components``, one folder per name (``checkpoint/<name>/``); ``learner``, the
    learner's own files in ``checkpoint/`` itself (run directories written in format 2).
    """

    layout: Literal["components", "learner"] = "components"
    names: tuple[str, ...]
    files: tuple[FileEntry, ...]


class IterationEntry(Record):
    iteration: int
    summary: dict[str, Any]  # the iteration's metrics, as in its metrics.json
    record: FileEntry | None  # iter-NNNN/record.json; None only for format 2, held in memory
    checkpoint: Checkpoint | None  # None once pruned


class Manifest(Record):
    format: Literal[3] = FORMAT
    files: dict[str, FileEntry]  # config.yaml, and ledger.parquet once an iteration is committed
    initial: Initial | None = None
    iterations: tuple[IterationEntry, ...] = ()
    finished: bool = False


class IterationRecord(Record):
    format: Literal[3] = FORMAT
    iteration: int
    files: tuple[FileEntry, ...]  # stored candidates, selected set, metrics (checkpoints: in the manifest)
    ledger: tuple[LedgerRow, ...]


class ObservedCounts(Record):
    """:class:`~synthloop.records.Observations` as stored with a part."""

    prompt_index: tuple[int, ...]
    n_pass: tuple[int, ...]
    n_fail: tuple[int, ...]
    n_error: tuple[int, ...]

    @classmethod
    def of(cls, observed: Observations) -> ObservedCounts:
        return cls(**{name: tuple(int(v) for v in getattr(observed, name))
                      for name in ("prompt_index", "n_pass", "n_fail", "n_error")})

    def observations(self) -> Observations:
        def column(values: tuple[int, ...]) -> np.ndarray:
            return np.asarray(values, dtype=np.int64)

        return Observations(column(self.prompt_index), column(self.n_pass), column(self.n_fail),
                            column(self.n_error))


class PartRecord(Record):
    """One committed part of the open iteration."""

    iteration: int
    n_target: int
    part: int
    size: int  # draws generated (= candidates verified)
    files: tuple[FileEntry, ...]  # candidates (when written) and kept rows
    ledger: tuple[LedgerRow, ...]  # its generation and verification charges
    verdicts: tuple[int, int, int]  # PASS, FAIL, ERROR
    train_committed: float  # training cost reserved for everything kept so far in the iteration
    streaming: bool
    n_kept: int
    acceptable: int  # draws the streaming selector accepts, counted past n_t
    observed: ObservedCounts | None = None


@dataclass(frozen=True)
class OpenIteration:
    """The iteration in progress: the parts committed so far."""

    iteration: int
    n_target: int
    parts: tuple[PartRecord, ...]


@dataclass(frozen=True)
class Loaded:
    """A manifest as read, with what format 2 held inline (its records and open parts)."""

    manifest: Manifest
    records: Mapping[int, IterationRecord] = field(default_factory=dict)
    open: OpenIteration | None = None
    legacy: bool = False


T = TypeVar("T", bound=BaseModel)


def parse(model: type[T], data: bytes | str, *, root: Path, path: Path, where: str = "") -> T:
    """``data`` as a ``model``; anything that does not fit is one line naming the file and field."""
    try:
        return model.model_validate_json(data)
    except ValidationError as error:
        first = error.errors()[0]
        location = ".".join(str(part) for part in first["loc"]) or "top level"
        raise SchemaError(root, path, f"does not follow the synthloop format-{FORMAT} schema "
                                      f"({where}{location}: {first['msg']})") from None


def digest(body: Mapping[str, Any]) -> str:
    """The sha256 a manifest carries: of its canonical JSON, without the ``sha256`` field."""
    text = json.dumps({k: v for k, v in body.items() if k != "sha256"}, sort_keys=True, separators=(",", ":"))
    return sha256_bytes(text.encode())


def manifest_bytes(manifest: Manifest) -> bytes:
    """Canonical JSON on one line (``json``'s C encoder: indenting would use its Python one, which
    costs milliseconds per commit once a run has many iterations)."""
    body = manifest.model_dump(mode="json")
    return json.dumps({**body, "sha256": digest(body)}, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def record_bytes(record: Record) -> bytes:
    """One line of JSON (a journal record, or a file of one record)."""
    return record.model_dump_json().encode()
