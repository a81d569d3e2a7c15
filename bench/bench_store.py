"""The run store: 10^6 candidate rows written and read, and the cost of a part commit in a long run.

1. Throughput (rows per second). Candidates are written the way the loop writes them: parts of
   ``--part-rows`` rows, each built into an Arrow table, compressed to Parquet (zstd), written under a
   temporary name, fsynced, renamed, the folder fsynced, and its sha256 taken; then committed with
   one part-journal record. Reading checks each file's size and sha256 against that record before
   Parquet decodes it, then turns it back into the loop's records. Baseline, measured in the same
   run on the same rows: plain ``pyarrow.parquet`` write_table / read_table, no checks, no fsync.
2. Commit cost per part over a long run (``--parts``, chunk size ``--chunk``): a Gaussian run through
   the real loop with every candidate stored and fsync on, until at least ``--parts`` parts are
   committed. Each part commit (``Journal.commit_part``: the part's Parquet files and its journal
   record) and each iteration commit is timed; the baseline is the first 100 parts of the same run:
   the mean of the last 100 over the mean of the first 100 should stay near 1 (target <= 1.2). Run
   twice: without fsync (the store's own work, which is what would grow with the run) and with it
   (what a user sees, dominated by the disk's fsync latency, which a shared disk makes noisy).

    python bench/bench_store.py --rows 1000000 --parts 1000 --chunk 16
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from synthloop import schedules
from synthloop.budget import CostModel, Planner, UnitCosts
from synthloop.loop import Components, LoopSettings, run
from synthloop.records import Candidates, Scores, ones_usage
from synthloop.runs import Journal
from synthloop.select import RewardProportional
from synthloop.store import PartRecord, RunStore, candidates_table, records_from_table
from synthloop.tasks.gaussian import GaussianGenerator, GaussianLearner, GaussianProblem, GaussianTask


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


def throughput(folder: Path, rows: int, part_rows: int, dim: int) -> dict[str, float]:
    data = parts(rows, part_rows, dim)
    store = RunStore(folder / "run")
    store.create("name: bench\n")
    clock = time.perf_counter()
    entries = []
    for p, (candidates, scores) in enumerate(data):
        table = candidates_table(iteration=0, part=p, candidates=candidates, scores=scores)
        entry = store.write_table(f"iter-0000/candidates/part-{p:04d}.parquet", table)
        store.commit_part(PartRecord(iteration=0, n_target=1, part=p, size=len(candidates), files=(entry,),
                                     ledger=(), verdicts=(0, 0, 0), train_committed=0.0, streaming=True,
                                     n_kept=0, acceptable=0))
        entries.append(entry)
    write = time.perf_counter() - clock
    clock = time.perf_counter()
    checked = RunStore(store.root)
    read_rows = sum(len(records_from_table(checked.read_table(e.path))[0]) for e in entries)
    read = time.perf_counter() - clock
    assert read_rows == rows
    plain = folder / "plain"
    plain.mkdir()
    clock = time.perf_counter()
    for p, (candidates, scores) in enumerate(data):
        table = candidates_table(iteration=0, part=p, candidates=candidates, scores=scores)
        pq.write_table(table, plain / f"part-{p:04d}.parquet", compression="zstd")
    base_write = time.perf_counter() - clock
    clock = time.perf_counter()
    for p in range(len(data)):
        pq.read_table(plain / f"part-{p:04d}.parquet")
    base_read = time.perf_counter() - clock
    return {"parts": len(data), "megabytes": sum(e.bytes for e in entries) / 1e6, "write": write, "read": read,
            "plain_write": base_write, "plain_read": base_read}


def timed(method: Callable[..., Any], into: list[float]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        clock = time.perf_counter()
        result = method(*args, **kwargs)
        into.append(time.perf_counter() - clock)
        return result

    return wrapper


def long_run(folder: Path, n_parts: int, chunk: int, *, fsync: bool) -> dict[str, Any]:
    """A run of at least ``n_parts`` parts of ``chunk`` draws; every commit timed."""
    problem = GaussianProblem(theta0=(0.3, -0.2), sigma=1.0, kappa=1.0)  # acceptance ~0.5 throughout
    n_selected = 200  # about 400 draws, 25 parts per iteration
    iterations = int(np.ceil(n_parts / (2 * n_selected / chunk))) + 2
    planner = Planner(make=schedules.constant, budget=n_selected * iterations, unit_costs=UnitCosts(0, 1),
                      acceptance_rate=0.5, n0=n_selected)
    components = Components(GaussianTask(problem), GaussianGenerator(), RewardProportional(), GaussianLearner(problem))
    store = RunStore(folder / f"long-{fsync}", fsync=fsync)
    store.create("name: bench\n")
    candidates_table(iteration=0, part=0, candidates=parts(1, 1, 2)[0][0], scores=parts(1, 1, 2)[0][1])  # imports
    part_times: list[float] = []
    iteration_times: list[float] = []
    commit_part, commit_iteration = Journal.commit_part, Journal.commit_iteration
    Journal.commit_part = timed(commit_part, part_times)  # type: ignore[method-assign]
    Journal.commit_iteration = timed(commit_iteration, iteration_times)  # type: ignore[method-assign]
    try:
        clock = time.perf_counter()
        history = run(components, planner, CostModel(unit="samples", prices={"train": {"samples": 1.0}}),
                      LoopSettings(chunk_size=chunk, store_candidates="all"), seed=0, store=store)
        total = time.perf_counter() - clock
    finally:
        Journal.commit_part, Journal.commit_iteration = commit_part, commit_iteration  # type: ignore[method-assign]
    assert len(part_times) >= n_parts, f"only {len(part_times)} parts: raise the budget"
    return {"parts": len(part_times), "iterations": len(history), "total": total, "part_times": part_times,
            "iteration_times": iteration_times,
            "manifest_bytes": (store.root / "manifest.json").stat().st_size}


def report_long(result: dict[str, Any], *, fsync: bool) -> None:
    times, its = result["part_times"], result["iteration_times"]
    print(f"-- fsync {'on' if fsync else 'off (what the store itself costs, without the disk)'}")
    first, last = statistics.mean(times[:100]), statistics.mean(times[-100:])
    first_it, last_it = statistics.mean(its[:5]), statistics.mean(its[-5:])
    print(f"{result['parts']} parts of chunk {args.chunk} in {result['iterations']} iterations, "
          f"{result['total']:.1f} s in all; part commits {100 * sum(times) / result['total']:.0f}% of it, "
          f"iteration commits {100 * sum(its) / result['total']:.0f}%")
    print(f"part commit: first 100 {1e3 * first:.2f} ms, last 100 {1e3 * last:.2f} ms; ratio {last / first:.2f}x "
          f"(medians {1e3 * statistics.median(times[:100]):.2f} / {1e3 * statistics.median(times[-100:]):.2f} ms)")
    print(f"iteration commit: first 5 {1e3 * first_it:.2f} ms, last 5 {1e3 * last_it:.2f} ms; ratio "
          f"{last_it / first_it:.2f}x; manifest.json at the end {result['manifest_bytes'] / 1e3:.1f} kB")


def main() -> None:
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        if args.rows:
            r = throughput(Path(tmp), args.rows, args.part_rows, args.dim)
            print(f"{args.rows} rows (dim {args.dim}) in {r['parts']} parts of {args.part_rows}; "
                  f"{r['megabytes']:.1f} MB Parquet")
            print(f"write + fsync + rename + sha256 + commit: {args.rows / r['write']:,.0f} rows/s ({r['write']:.2f} s); "
                  f"plain pyarrow write {args.rows / r['plain_write']:,.0f} rows/s; "
                  f"ratio {r['write'] / r['plain_write']:.2f}x the time")
            print(f"read + size/sha256 check + records:      {args.rows / r['read']:,.0f} rows/s ({r['read']:.2f} s); "
                  f"plain pyarrow read {args.rows / r['plain_read']:,.0f} rows/s; "
                  f"ratio {r['read'] / r['plain_read']:.2f}x the time")
        for fsync in (False, True) if args.parts else ():
            report_long(long_run(Path(tmp), args.parts, args.chunk, fsync=fsync), fsync=fsync)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--part-rows", type=int, default=65536)
    parser.add_argument("--dim", type=int, default=2)
    parser.add_argument("--parts", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=16)
    args = parser.parse_args()
    main()
