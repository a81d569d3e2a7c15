"""The run directory: the source of truth for a run (layout in DESIGN.md).

    runs/NAME/
      config.yaml              the resolved config, package versions, git commit
      manifest.json            committed iterations: files, row counts, sha256 (written last)
      ledger.parquet           one row per iteration x stage
      iter-0000/
        candidates/part-*.parquet   generated candidates with reward and verdict
        selected.parquet       what was kept (ids and payload)
        metrics.json
        checkpoint/            learner state

Every file is written under a temporary name, fsynced, then renamed into place, and the directory is
fsynced; an iteration counts only once its manifest entry is written, last.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from synthloop.budget import Ledger, LedgerRow
from synthloop.records import Candidates, Scores

MANIFEST = "manifest.json"
CONFIG = "config.yaml"
LEDGER = "ledger.parquet"
FORMAT_VERSION = 1


class RunDirectoryError(RuntimeError):
    """A run directory is missing, incomplete or inconsistent; the message names the file."""


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the run directory, with forward slashes
    sha256: str
    bytes: int
    rows: int | None = None


def iteration_dir(iteration: int) -> str:
    return f"iter-{iteration:04d}"


def _fsync_dir(directory: Path) -> None:
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
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


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
    if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
        return column.to_pylist()
    return column.to_numpy()


class RunStore:
    """Reads and writes one run directory. Only committed files are ever read back."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- writing ---------------------------------------------------------------------------------

    def create(self, config_text: str, *, overwrite: bool = False) -> None:
        if (self.root / MANIFEST).exists() and not overwrite:
            raise RunDirectoryError(
                f"{self.root} already holds a run; resume it, or choose another name"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        entry = self.write_bytes(CONFIG, config_text.encode())
        self._write_manifest({"format": FORMAT_VERSION, "files": {CONFIG: asdict(entry)},
                              "initial": None, "iterations": []})

    def write_bytes(self, relative: str, data: bytes, *, rows: int | None = None) -> FileEntry:
        atomic_write_bytes(self.root / relative, data)
        return FileEntry(relative, hashlib.sha256(data).hexdigest(), len(data), rows)

    def write_table(self, relative: str, table: pa.Table) -> FileEntry:
        return self.write_bytes(relative, table_bytes(table), rows=table.num_rows)

    def write_json(self, relative: str, payload: Any) -> FileEntry:
        text = json.dumps(payload, indent=2, sort_keys=True, default=_json_default)
        return self.write_bytes(relative, text.encode())

    def entry_for(self, relative: str) -> FileEntry:
        path = self.root / relative
        return FileEntry(relative, sha256_file(path), path.stat().st_size)

    def commit_initial(self, metrics: Mapping[str, float]) -> None:
        manifest = self.manifest()
        manifest["initial"] = {"metrics": dict(metrics)}
        self._write_manifest(manifest)

    def commit_iteration(
        self,
        iteration: int,
        files: list[FileEntry],
        summary: Mapping[str, Any],
        ledger: Ledger,
    ) -> None:
        """Write the ledger, then the manifest entry that makes the iteration count."""
        ledger_entry = self.write_table(LEDGER, ledger_table(ledger))
        manifest = self.manifest()
        manifest["files"][LEDGER] = asdict(ledger_entry)
        manifest["iterations"] = [e for e in manifest["iterations"] if e["iteration"] < iteration]
        manifest["iterations"].append(
            {"iteration": iteration, "files": [asdict(f) for f in files], "summary": dict(summary)}
        )
        self._write_manifest(manifest)

    def _write_manifest(self, manifest: Mapping[str, Any]) -> None:
        text = json.dumps(manifest, indent=1, sort_keys=True, default=_json_default)
        atomic_write_bytes(self.root / MANIFEST, text.encode())

    # -- reading ---------------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        path = self.root / MANIFEST
        if not path.exists():
            raise RunDirectoryError(f"{path} is missing: {self.root} is not a synthloop run directory")
        try:
            manifest: dict[str, Any] = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RunDirectoryError(f"{path} is corrupted ({error})") from error
        return manifest

    def config_text(self) -> str:
        return (self.root / CONFIG).read_text()

    def committed_iterations(self) -> list[dict[str, Any]]:
        return list(self.manifest()["iterations"])

    def read_table(self, relative: str) -> pa.Table:
        return pq.read_table(self.root / relative)

    def read_json(self, relative: str) -> Any:
        return json.loads((self.root / relative).read_text())

    def candidate_parts(self, iteration: int) -> Iterator[pa.Table]:
        for entry in self._iteration_entry(iteration)["files"]:
            if entry["path"].startswith(f"{iteration_dir(iteration)}/candidates/"):
                yield self.read_table(entry["path"])

    def selected(self, iteration: int) -> pa.Table:
        return self.read_table(f"{iteration_dir(iteration)}/selected.parquet")

    def metrics(self, iteration: int) -> dict[str, Any]:
        metrics: dict[str, Any] = self.read_json(f"{iteration_dir(iteration)}/metrics.json")
        return metrics

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


def ledger_table(ledger: Ledger) -> pa.Table:
    quantities = sorted({q for row in ledger.rows for q in row.quantities})
    columns: dict[str, list[Any]] = {
        "iteration": [r.iteration for r in ledger.rows],
        "stage": [r.stage for r in ledger.rows],
        "items": [r.items for r in ledger.rows],
        "cost": [r.cost for r in ledger.rows],
        "seconds": [r.seconds for r in ledger.rows],
        "note": [r.note for r in ledger.rows],
    }
    for q in quantities:
        columns[f"quantity.{q}"] = [r.quantities.get(q, 0.0) for r in ledger.rows]
    schema = pa.schema(
        [("iteration", pa.int32()), ("stage", pa.string()), ("items", pa.int64()),
         ("cost", pa.float64()), ("seconds", pa.float64()), ("note", pa.string())]
        + [(f"quantity.{q}", pa.float64()) for q in quantities]
    )
    return pa.table(columns, schema=schema)


def ledger_rows_from_table(rows: list[dict[str, Any]]) -> list[LedgerRow]:
    out = []
    for row in rows:
        quantities = {k.removeprefix("quantity."): v for k, v in row.items() if k.startswith("quantity.")}
        out.append(
            LedgerRow(row["iteration"], row["stage"], row["items"], row["cost"], row["seconds"],
                      quantities, row["note"])
        )
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
