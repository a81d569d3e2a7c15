"""Codecs: the loop's records as Arrow tables and Parquet bytes, bit for bit both ways.

A candidates table has the ids (``iteration``, ``part``, ``index``), ``prompt_index``, one
``sample.<name>`` column per payload column, ``reward``, ``verdict``, ``detail`` (if any), one
``usage.<name>`` column per generation quantity and one ``extra.<name>`` column per extra column
(student loss, embeddings, provenance...). N-D arrays are stored as fixed-size lists with their row
shape in the field's metadata.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from synthloop.budget import LedgerRow
from synthloop.records import Candidates, Scores

SAMPLE, USAGE, EXTRA = "sample.", "usage.", "extra."


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
        raise TypeError(f"column {name!r} cannot be stored in Parquet: {error}") from error


def candidates_table(
    *,
    iteration: int,
    part: int,
    candidates: Candidates,
    scores: Scores,
    indices: np.ndarray | None = None,
) -> pa.Table:
    """Candidates with ids (iteration, part, index), payload, reward, verdict, usage and extra columns.

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
    for prefix, columns in ((SAMPLE, candidates.samples), (EXTRA, candidates.extra)):
        for name, column in columns.items():
            add(prefix + name, *_column_to_arrow(prefix + name, column))
    add("reward", pa.array(scores.reward))
    add("verdict", pa.array(scores.verdict))
    if scores.detail is not None:
        add("detail", pa.array(list(scores.detail), type=pa.string()))
    for name, per_row in candidates.usage.items():
        add(USAGE + name, pa.array(per_row))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def table_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def column_to_numpy(table: pa.Table, name: str) -> Any:
    """A stored column back in its original shape (see ``_column_to_arrow``)."""
    column = table.column(name)
    field = table.schema.field(name)
    if field.metadata and b"shape" in field.metadata:
        shape = json.loads(field.metadata[b"shape"])
        values = column.combine_chunks().flatten()
        flat = values.to_numpy(zero_copy_only=False) if len(values) else np.empty(
            0, dtype=field.type.value_type.to_pandas_dtype())
        return flat.reshape(len(table), *shape)
    if pa.types.is_integer(field.type) or pa.types.is_floating(field.type) or pa.types.is_boolean(field.type):
        return column.to_numpy()
    return column.to_pylist()


def _columns(table: pa.Table, prefix: str) -> dict[str, Any]:
    return {n.removeprefix(prefix): column_to_numpy(table, n) for n in table.column_names if n.startswith(prefix)}


def records_from_table(table: pa.Table) -> tuple[Candidates, Scores]:
    """The candidates and scores a ``candidates_table`` holds, bit for bit (verification usage aside)."""
    names = table.column_names
    candidates = Candidates(samples=_columns(table, SAMPLE), prompt_index=table.column("prompt_index").to_numpy(),
                            usage=_columns(table, USAGE), extra=_columns(table, EXTRA))
    detail = table.column("detail").to_pylist() if "detail" in names else None
    scores = Scores(reward=table.column("reward").to_numpy(), verdict=table.column("verdict").to_numpy(),
                    detail=detail)
    return candidates, scores


def ledger_table(rows: Sequence[LedgerRow]) -> pa.Table:
    """The ledger as a table: one row per charge, one ``quantity.<name>`` column per quantity."""
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


def json_default(value: Any) -> Any:
    """JSON for the NumPy scalars and arrays (and paths) that metrics carry."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def plain_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (NumPy scalars become Python numbers)."""
    return json.loads(json.dumps(value, default=json_default))
