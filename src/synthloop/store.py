"""The run directory: the source of truth for a run (layout and protocol in ``docs/run-directory.md``).

    runs/NAME/
      config.yaml              the resolved config, package versions, git commit
      manifest.json            what is committed: files with row counts and sha256, ledger rows,
                               iteration summaries, parts of the iteration in progress (written last)
      manifest.backup.json     a copy, refreshed at every commit but a part's: repair falls back on it
      ledger.parquet           one row per iteration x stage x part (a view of the manifest's rows)
      iter-0000/
        candidates/part-*.parquet   generated candidates with reward and verdict
        kept/part-*.parquet    rows kept from each part while the iteration is open (then dropped)
        selected.parquet       what was kept (ids and payload)
        metrics.json
        checkpoint/            learner state (the last ``keep_checkpoints`` iterations)

Commit protocol: every file is written under a temporary name, fsynced, renamed, and its folder
fsynced; then the manifest (with its own sha256) is replaced the same way. A file counts only once the
manifest lists it; files the previous manifest listed and the new one does not are deleted only after
the new manifest is on disk. So a kill at any instant leaves the last committed state intact, plus
stray files that :meth:`RunStore.clean` removes.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from synthloop import faults
from synthloop.budget import LedgerRow
from synthloop.records import Candidates, Scores

MANIFEST = "manifest.json"
CONFIG = "config.yaml"
LEDGER = "ledger.parquet"
LEDGER_PENDING = "ledger.parquet.pending"  # the next ledger, renamed into place once its manifest is on disk
MANIFEST_BACKUP = "manifest.backup.json"
FORMAT_VERSION = 2


class RunDirectoryError(RuntimeError):
    """A run directory is missing, incomplete or inconsistent; the message names the file."""


class IntegrityError(RunDirectoryError):
    """A file of a run failed its check against the manifest (missing, truncated or altered)."""

    def __init__(self, root: Path, path: Path, problem: str) -> None:
        self.path = path
        super().__init__(f"{path} {problem}; `synthloop repair {root}` rolls back to the last intact iteration")


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the run directory, with forward slashes
    sha256: str
    bytes: int
    rows: int | None = None


def iteration_dir(iteration: int) -> str:
    return f"iter-{iteration:04d}"


def _fsync_dir(directory: Path) -> None:
    if not faults.fsync_enabled():
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` holds either its old content or all of ``data``, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        if faults.fsync_enabled():
            os.fsync(handle.fileno())
    faults.point("write", str(path))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def fsync_tree(directory: Path) -> None:
    """Make files a plug-in wrote with ordinary ``open`` (a checkpoint) durable, then their folders."""
    for path in sorted(directory.rglob("*")):
        if path.is_file() and faults.fsync_enabled():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for folder in sorted({p.parent for p in directory.rglob("*")} | {directory}, reverse=True):
        _fsync_dir(folder)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _column_to_arrow(name: str, column: Any) -> tuple[pa.Array, dict[bytes, bytes]]:
    if isinstance(column, np.ndarray):
        if column.ndim == 1:
            return pa.array(column), {}
        row_shape = column.shape[1:]
        flat = np.ascontiguousarray(column).reshape(-1)
        array = pa.FixedSizeListArray.from_arrays(pa.array(flat), int(np.prod(row_shape)))
        return array, {b"shape": json.dumps(list(row_shape)).encode()}
    try:
        return pa.array(list(column)), {}
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise TypeError(f"sample column {name!r} cannot be stored in Parquet: {error}") from error


def candidates_table(
    *,
    iteration: int,
    part: int,
    candidates: Candidates,
    scores: Scores,
    indices: np.ndarray | None = None,
) -> pa.Table:
    """Candidates with ids (iteration, part, index), payload, reward, verdict and usage columns.

    ``indices`` (within the part) defaults to 0..n-1; pass them when storing a subset of a part.
    """
    n = len(candidates)
    index = np.arange(n, dtype=np.int32) if indices is None else indices.astype(np.int32)
    fields: list[pa.Field] = []
    arrays: list[pa.Array] = []

    def add(name: str, array: pa.Array, metadata: Mapping[bytes, bytes] | None = None) -> None:
        fields.append(pa.field(name, array.type, metadata=metadata or None))
        arrays.append(array)

    add("iteration", pa.array(np.full(n, iteration, dtype=np.int32)))
    add("part", pa.array(np.full(n, part, dtype=np.int32)))
    add("index", pa.array(index))
    add("prompt_index", pa.array(candidates.prompt_index))
    for name, column in candidates.samples.items():
        array, metadata = _column_to_arrow(name, column)
        add(f"sample.{name}", array, metadata)
    add("reward", pa.array(scores.reward))
    add("verdict", pa.array(scores.verdict))
    if scores.detail is not None:
        add("detail", pa.array(list(scores.detail), type=pa.string()))
    for name, per_row in candidates.usage.items():
        add(f"usage.{name}", pa.array(per_row))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def table_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def column_to_numpy(table: pa.Table, name: str) -> Any:
    """A stored sample column back in its original shape (see ``_column_to_arrow``)."""
    column = table.column(name)
    field = table.schema.field(name)
    if field.metadata and b"shape" in field.metadata:
        shape = json.loads(field.metadata[b"shape"])
        flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(table), *shape)
    if pa.types.is_integer(field.type) or pa.types.is_floating(field.type) or pa.types.is_boolean(field.type):
        return column.to_numpy()
    return column.to_pylist()


def records_from_table(table: pa.Table) -> tuple[Candidates, Scores]:
    """The candidates and scores a ``candidates_table`` holds, bit for bit (verification usage aside)."""
    names = table.column_names
    samples = {n.removeprefix("sample."): column_to_numpy(table, n) for n in names if n.startswith("sample.")}
    usage = {n.removeprefix("usage."): table.column(n).to_numpy() for n in names if n.startswith("usage.")}
    candidates = Candidates(samples=samples, prompt_index=table.column("prompt_index").to_numpy(), usage=usage)
    detail = table.column("detail").to_pylist() if "detail" in names else None
    scores = Scores(reward=table.column("reward").to_numpy(), verdict=table.column("verdict").to_numpy(),
                    detail=detail)
    return candidates, scores


TMP_NAME = re.compile(r"^\..+\.tmp-\d+$")


class RunStore:
    """Reads and writes one run directory. Only files the manifest lists, and that pass their check
    against it, are ever read back."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._manifest: dict[str, Any] | None = None
        self._verified: set[tuple[str, str]] = set()

    # -- writing ---------------------------------------------------------------------------------

    def create(self, config_text: str, *, overwrite: bool = False) -> None:
        if (self.root / MANIFEST).exists() or (self.root / MANIFEST_BACKUP).exists():
            if not overwrite:
                raise RunDirectoryError(
                    f"{self.root} already holds a run; `synthloop resume {self.root}` continues it, "
                    "or choose another name (or --overwrite)"
                )
            self._remove_run_files()
        self.root.mkdir(parents=True, exist_ok=True)
        entry = self.write_bytes(CONFIG, config_text.encode())
        self._write_manifest({"format": FORMAT_VERSION, "files": {CONFIG: asdict(entry)},
                              "initial": None, "iterations": [], "open": None})

    def _remove_run_files(self) -> None:
        for path in sorted(self.root.glob("iter-*")):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        for name in (MANIFEST, MANIFEST_BACKUP, LEDGER, CONFIG):
            (self.root / name).unlink(missing_ok=True)
        self._manifest = None

    def write_bytes(self, relative: str, data: bytes, *, rows: int | None = None) -> FileEntry:
        atomic_write_bytes(self.root / relative, data)
        return FileEntry(relative, hashlib.sha256(data).hexdigest(), len(data), rows)

    def write_table(self, relative: str, table: pa.Table) -> FileEntry:
        return self.write_bytes(relative, table_bytes(table), rows=table.num_rows)

    def write_json(self, relative: str, payload: Any) -> FileEntry:
        text = json.dumps(payload, indent=2, sort_keys=True, default=_json_default)
        return self.write_bytes(relative, text.encode())

    def adopt_directory(self, relative: str) -> list[FileEntry]:
        """Entries for the files a plug-in wrote under ``relative`` (made durable first)."""
        directory = self.root / relative
        fsync_tree(directory)
        return [self.entry_for(p.relative_to(self.root).as_posix())
                for p in sorted(directory.rglob("*")) if p.is_file()]

    def entry_for(self, relative: str) -> FileEntry:
        path = self.root / relative
        return FileEntry(relative, sha256_file(path), path.stat().st_size)

    def commit_initial(self, metrics: Mapping[str, float], **about: Any) -> None:
        """Commit the evaluation before iteration 0 (and what it means: primary metric, direction)."""
        manifest = self.manifest()
        manifest["initial"] = {"metrics": dict(metrics), **about}
        self._write_manifest(manifest)

    def commit_part(self, iteration: int, n_target: int, part: Mapping[str, Any]) -> None:
        """Record one generated part of the open iteration: its files, ledger rows and kept counts."""
        manifest = self.manifest()
        open_ = manifest.get("open")
        if open_ is None or open_["iteration"] != iteration:
            open_ = {"iteration": iteration, "n_target": n_target, "parts": []}
        if len(open_["parts"]) != part["part"]:
            raise RunDirectoryError(f"{self.root / MANIFEST}: part {part['part']} committed out of order")
        open_["parts"].append(dict(part))
        manifest["open"] = open_
        self._write_manifest(manifest, backup=False)  # the backup moves on at the iteration's commit

    def commit_iteration(
        self,
        iteration: int,
        files: list[FileEntry],
        summary: Mapping[str, Any],
        ledger_rows: list[LedgerRow],
        *,
        checkpoint: bool,
        keep_checkpoints: int,
    ) -> None:
        """Write the ledger view, then the manifest entry that makes the iteration count; older
        checkpoints beyond the last ``keep_checkpoints`` leave the manifest in the same write."""
        manifest = self.manifest()
        committed = [e for e in manifest["iterations"] if e["iteration"] < iteration]
        rows = [r for e in committed for r in e["ledger"]] + [ledger_row_dict(r) for r in ledger_rows]
        # ledger.parquet is replaced in place, so it is staged: a kill between the manifest and the
        # rename leaves a pending file whose sha256 the manifest names, and clean() finishes the rename.
        ledger = self.write_table(LEDGER_PENDING, ledger_table_from_dicts(rows))
        manifest["files"][LEDGER] = {**asdict(ledger), "path": LEDGER}
        committed.append({"iteration": iteration, "files": [asdict(f) for f in files],
                          "summary": dict(summary), "ledger": [ledger_row_dict(r) for r in ledger_rows],
                          "checkpoint": checkpoint})
        with_checkpoint = [e for e in committed if e["checkpoint"]]
        for entry in with_checkpoint[: max(0, len(with_checkpoint) - keep_checkpoints)]:
            entry["files"] = [f for f in entry["files"] if "/checkpoint/" not in f["path"]]
            entry["checkpoint"] = False
        manifest["iterations"] = committed
        manifest["open"] = None
        self._write_manifest(manifest)
        self._roll_forward_ledger()

    def _roll_forward_ledger(self) -> None:
        pending = self.root / LEDGER_PENDING
        self.manifest()  # loads and checks it if not loaded yet
        assert self._manifest is not None
        entry = self._manifest["files"].get(LEDGER)
        if pending.exists() and entry is not None and sha256_file(pending) == entry["sha256"]:
            os.replace(pending, self.root / LEDGER)
            _fsync_dir(self.root)

    def mark_finished(self) -> None:
        """Record that the run's plan or budget is exhausted."""
        manifest = self.manifest()
        if not manifest.get("finished"):
            manifest["finished"] = True
            self._write_manifest(manifest)

    def replace_manifest(self, manifest: dict[str, Any], *, previous: dict[str, Any]) -> None:
        """Commit ``manifest`` in place of ``previous`` (a repair, which may start from the backup);
        files ``previous`` lists and ``manifest`` does not are deleted after the commit."""
        self._manifest = previous
        self._write_manifest(manifest)

    def _write_manifest(self, manifest: dict[str, Any], *, backup: bool = True) -> None:
        before = self._referenced(self._manifest) if self._manifest is not None else set()
        manifest = {k: v for k, v in manifest.items() if k != "sha256"}
        manifest["sha256"] = _manifest_digest(manifest)
        text = json.dumps(manifest, indent=1, sort_keys=True, default=_json_default).encode()
        faults.point("commit", MANIFEST)
        atomic_write_bytes(self.root / MANIFEST, text)
        if backup:
            atomic_write_bytes(self.root / MANIFEST_BACKUP, text)
        self._manifest = json.loads(text)
        faults.point("cleanup")
        for relative in sorted(before - self._referenced(self._manifest)):
            path = self.root / relative
            path.unlink(missing_ok=True)
            _remove_empty_parents(path.parent, self.root)

    # -- reading and checking --------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        """The committed manifest (a copy), after checking its own sha256."""
        if self._manifest is None:
            self._manifest = self.read_manifest(MANIFEST)
        return copy.deepcopy(self._manifest)

    def read_manifest(self, name: str = MANIFEST) -> dict[str, Any]:
        path = self.root / name
        if not path.exists():
            if name == MANIFEST and not (self.root / MANIFEST_BACKUP).exists():
                raise RunDirectoryError(f"{path} is missing: {self.root} is not a synthloop run directory")
            raise IntegrityError(self.root, path, "is missing")
        try:
            manifest: dict[str, Any] = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise IntegrityError(self.root, path, "is truncated or corrupted (not valid JSON)") from None
        if not isinstance(manifest, dict) or manifest.get("sha256") != _manifest_digest(manifest):
            raise IntegrityError(self.root, path, "is corrupted (its content does not match its sha256)")
        if manifest.get("format") != FORMAT_VERSION:
            raise RunDirectoryError(f"{path}: format {manifest.get('format')} is not supported "
                                    f"(this synthloop reads format {FORMAT_VERSION})")
        return manifest

    def check(self, entry: Mapping[str, Any]) -> Path:
        """The path of a manifest entry's file, after checking its size and sha256."""
        path = self.root / entry["path"]
        key = (entry["path"], entry["sha256"])
        if key in self._verified:
            return path
        if not path.is_file():
            raise IntegrityError(self.root, path, "is missing (the manifest lists it)")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise IntegrityError(self.root, path, f"is truncated or altered ({size} bytes, the manifest says {entry['bytes']})")
        if sha256_file(path) != entry["sha256"]:
            raise IntegrityError(self.root, path, "is corrupted (its sha256 differs from the manifest's)")
        self._verified.add(key)
        return path

    def check_all(self) -> None:
        """Check every file the manifest lists; raise on the first that fails."""
        manifest = self.manifest()
        for entry in all_entries(manifest):
            self.check(entry)

    def clean(self) -> list[str]:
        """Delete files no manifest lists (left by a crash) in the run's own folders; return them."""
        self._roll_forward_ledger()
        referenced = self._referenced(self.manifest())
        removed = []
        if (self.root / LEDGER_PENDING).exists():
            (self.root / LEDGER_PENDING).unlink()
            removed.append(LEDGER_PENDING)
        for path in sorted(self.root.rglob("*")):
            relative = path.relative_to(self.root).as_posix()
            stray_tmp = TMP_NAME.match(path.name) is not None
            in_iteration = relative.startswith("iter-")
            if path.is_file() and (stray_tmp or (in_iteration and relative not in referenced)):
                path.unlink()
                removed.append(relative)
        for folder in sorted(self.root.glob("iter-*/**/"), key=lambda p: len(p.parts), reverse=True):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        return removed

    @staticmethod
    def _referenced(manifest: Mapping[str, Any] | None) -> set[str]:
        return {e["path"] for e in all_entries(manifest)} if manifest else set()

    def config_text(self) -> str:
        return self.check(self.manifest()["files"][CONFIG]).read_text()

    def file_entry(self, relative: str) -> dict[str, Any]:
        for entry in all_entries(self.manifest()):
            if entry["path"] == relative:
                return dict(entry)
        raise RunDirectoryError(f"{self.root / relative} is not a committed file of this run")

    def read_table(self, relative: str) -> pa.Table:
        entry = self.file_entry(relative)
        path = self.check(entry)
        table = pq.read_table(path)
        if entry.get("rows") is not None and table.num_rows != entry["rows"]:
            raise IntegrityError(self.root, path, f"has {table.num_rows} rows, the manifest says {entry['rows']}")
        return table

    def read_json(self, relative: str) -> Any:
        return json.loads(self.check(self.file_entry(relative)).read_text())

    def candidate_parts(self, iteration: int) -> Iterator[pa.Table]:
        for entry in self._iteration_entry(iteration)["files"]:
            if entry["path"].startswith(f"{iteration_dir(iteration)}/candidates/"):
                yield self.read_table(entry["path"])

    def selected(self, iteration: int) -> pa.Table:
        relative = f"{iteration_dir(iteration)}/selected.parquet"
        if not any(f["path"] == relative for f in self._iteration_entry(iteration)["files"]):
            raise RunDirectoryError(f"{self.root / relative}: iteration {iteration} stored no selected set "
                                    "(the run had loop.store_candidates: none)")
        return self.read_table(relative)

    def metrics(self, iteration: int) -> dict[str, Any]:
        metrics: dict[str, Any] = self.read_json(f"{iteration_dir(iteration)}/metrics.json")
        return metrics

    def checkpoint_dir(self, iteration: int) -> Path:
        """The checked checkpoint folder of a committed iteration."""
        entry = self._iteration_entry(iteration)
        if not entry["checkpoint"]:
            raise RunDirectoryError(f"{self.root / iteration_dir(iteration)}: checkpoint was pruned")
        for file in entry["files"]:
            if "/checkpoint/" in file["path"]:
                self.check(file)
        return self.root / iteration_dir(iteration) / "checkpoint"

    def ledger_rows(self) -> list[dict[str, Any]]:
        if LEDGER not in self.manifest()["files"]:
            return []
        rows: list[dict[str, Any]] = self.read_table(LEDGER).to_pylist()
        return rows

    def _iteration_entry(self, iteration: int) -> dict[str, Any]:
        for entry in self.manifest()["iterations"]:
            if entry["iteration"] == iteration:
                return dict(entry)
        raise RunDirectoryError(f"iteration {iteration} is not committed in {self.root}")


def _remove_empty_parents(folder: Path, root: Path) -> None:
    while folder != root and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


def all_entries(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every file entry a manifest lists: run files, committed iterations, parts of the open one."""
    entries = list(manifest["files"].values())
    for iteration in manifest["iterations"]:
        entries.extend(iteration["files"])
    if manifest.get("open"):
        for part in manifest["open"]["parts"]:
            entries.extend(part["files"])
    return entries


def _manifest_digest(manifest: Mapping[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def ledger_row_dict(row: LedgerRow) -> dict[str, Any]:
    return asdict(row)


def ledger_row_from_dict(row: Mapping[str, Any]) -> LedgerRow:
    return LedgerRow(row["iteration"], row["stage"], row["items"], row["cost"], row["seconds"],
                     dict(row["quantities"]), row["note"])


def ledger_table_from_dicts(rows: list[dict[str, Any]]) -> pa.Table:
    return ledger_table_rows([ledger_row_from_dict(r) for r in rows])


def ledger_table_rows(rows: list[LedgerRow]) -> pa.Table:
    quantities = sorted({q for row in rows for q in row.quantities})
    columns: dict[str, list[Any]] = {
        "iteration": [r.iteration for r in rows],
        "stage": [r.stage for r in rows],
        "items": [r.items for r in rows],
        "cost": [r.cost for r in rows],
        "seconds": [r.seconds for r in rows],
        "note": [r.note for r in rows],
    }
    for q in quantities:
        columns[f"quantity.{q}"] = [r.quantities.get(q, 0.0) for r in rows]
    schema = pa.schema(
        [("iteration", pa.int32()), ("stage", pa.string()), ("items", pa.int64()),
         ("cost", pa.float64()), ("seconds", pa.float64()), ("note", pa.string())]
        + [(f"quantity.{q}", pa.float64()) for q in quantities]
    )
    return pa.table(columns, schema=schema)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
