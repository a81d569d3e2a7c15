"""The run directory: the source of truth for a run (layout and protocol in ``docs/run-directory.md``).

Split by layer: ``files`` (atomic writes, fsync, sha256, checksummed journals, the lock), ``codecs``
(the loop's records as Arrow / Parquet), ``schema`` (the typed manifest and records, one JSON form
each), ``legacy`` (format-2 run directories) and ``run_store`` (:class:`RunStore`).
"""

from synthloop.store.codecs import (
    candidates_table,
    column_to_numpy,
    json_default,
    ledger_table,
    records_from_table,
    table_bytes,
)
from synthloop.store.files import (
    IntegrityError,
    RunDirectoryError,
    RunLockedError,
    atomic_write_bytes,
    sha256_file,
)
from synthloop.store.run_store import (
    LEDGER_PENDING,
    MANIFEST,
    MANIFEST_BACKUP,
    SPARSE_EVERY,
    RunStore,
    RunStoreFactory,
    iteration_dir,
    journal_path,
    kept_checkpoint,
    read_consistently,
    record_path,
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
    Manifest,
    OpenIteration,
    PartRecord,
    SchemaError,
)

__all__ = [
    "CONFIG",
    "FORMAT",
    "LEDGER",
    "LEDGER_PENDING",
    "MANIFEST",
    "MANIFEST_BACKUP",
    "SPARSE_EVERY",
    "Checkpoint",
    "FileEntry",
    "Initial",
    "IntegrityError",
    "IterationEntry",
    "IterationRecord",
    "Manifest",
    "OpenIteration",
    "PartRecord",
    "RunDirectoryError",
    "RunLockedError",
    "RunStore",
    "RunStoreFactory",
    "SchemaError",
    "atomic_write_bytes",
    "candidates_table",
    "column_to_numpy",
    "iteration_dir",
    "journal_path",
    "json_default",
    "kept_checkpoint",
    "ledger_table",
    "read_consistently",
    "record_path",
    "records_from_table",
    "sha256_file",
    "table_bytes",
]
