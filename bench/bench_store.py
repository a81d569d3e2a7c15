"""Throughput of the run store: writing and reading 10^6 candidate rows (rows per second).

Candidates are written the way the loop writes them: parts of ``--part-rows`` rows, each built into
an Arrow table, compressed to Parquet (zstd), written under a temporary name, fsynced, renamed, the
folder fsynced, and its sha256 taken; then committed in the manifest. Reading checks each file's size
and sha256 against the manifest before Parquet decodes it, then turns it back into the loop's
records. The baseline, measured in the same run on the same rows: plain ``pyarrow.parquet``
write_table / read_table of the same parts, no checks, no fsync.

    python bench/bench_store.py --rows 1000000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from synthloop.records import Candidates, Scores, ones_usage
from synthloop.store import RunStore, candidates_table, records_from_table


def parts(rows: int, part_rows: int, dim: int) -> list[tuple[Candidates, Scores]]:
    rng = np.random.default_rng(0)
    out = []
    for start in range(0, rows, part_rows):
        n = min(part_rows, rows - start)
        x = rng.standard_normal((n, dim))
        candidates = Candidates(samples={"x": x}, prompt_index=np.full(n, -1, dtype=np.int64),
                                usage=ones_usage(n, samples=1))
        out.append((candidates, Scores.from_rewards(np.exp(-0.5 * np.einsum("ij,ij->i", x, x)))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--part-rows", type=int, default=65536)
    parser.add_argument("--dim", type=int, default=2)
    args = parser.parse_args()
    data = parts(args.rows, args.part_rows, args.dim)
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        store = RunStore(Path(tmp) / "run")
        store.create("name: bench\n")
        clock = time.perf_counter()
        entries = []
        for p, (candidates, scores) in enumerate(data):
            table = candidates_table(iteration=0, part=p, candidates=candidates, scores=scores)
            entries.append(store.write_table(f"iter-0000/candidates/part-{p:04d}.parquet", table))
        store.commit_part(0, 1, {"part": 0, "size": args.rows, "files": [asdict(e) for e in entries],
                                 "ledger": [], "verdicts": [0, 0, 0], "train_committed": 0.0,
                                 "streaming": True, "n_kept": 0})
        write = time.perf_counter() - clock

        clock = time.perf_counter()
        read_rows = 0
        checked = RunStore(store.root)
        for entry in entries:
            candidates, _ = records_from_table(checked.read_table(entry.path))
            read_rows += len(candidates)
        read = time.perf_counter() - clock
        assert read_rows == args.rows

        clock = time.perf_counter()
        plain = Path(tmp) / "plain"
        plain.mkdir()
        for p, (candidates, scores) in enumerate(data):
            table = candidates_table(iteration=0, part=p, candidates=candidates, scores=scores)
            pq.write_table(table, plain / f"part-{p:04d}.parquet", compression="zstd")
        base_write = time.perf_counter() - clock
        clock = time.perf_counter()
        for p in range(len(data)):
            pq.read_table(plain / f"part-{p:04d}.parquet")
        base_read = time.perf_counter() - clock
        size = sum(e.bytes for e in entries)

    print(f"{args.rows} rows (dim {args.dim}) in {len(data)} parts of {args.part_rows}; {size / 1e6:.1f} MB Parquet")
    print(f"write + fsync + rename + sha256 + commit: {args.rows / write:,.0f} rows/s ({write:.2f} s); "
          f"plain pyarrow write {args.rows / base_write:,.0f} rows/s; ratio {write / base_write:.2f}x the time")
    print(f"read + size/sha256 check + records:      {args.rows / read:,.0f} rows/s ({read:.2f} s); "
          f"plain pyarrow read {args.rows / base_read:,.0f} rows/s; ratio {read / base_read:.2f}x the time")


if __name__ == "__main__":
    main()
