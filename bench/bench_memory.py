"""Peak memory of a Gaussian run with N_t = 10^6 draws per iteration, iteration by iteration.

Candidates are streamed to the run directory part by part (``loop.chunk_size`` rows each) and only
the kept rows of the current iteration stay in memory, so the peak should not grow with the number
of iterations. Measured in one process: the peak resident set size (Linux ``VmHWM``, reset after each
iteration through ``/proc/self/clear_refs``) and the peak of Python-tracked allocations (tracemalloc,
which NumPy reports to) within each iteration. The baseline is the first iteration's peak.

    python bench/bench_memory.py --iterations 8
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from synthloop.configs import parse_config
from synthloop.experiments import run_config


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def reset_peaks() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    tracemalloc.reset_peak()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--kept", type=int, default=500_000, help="n_t; N_t is about twice that")
    parser.add_argument("--store", default="all", choices=["all", "selected", "none"])
    args = parser.parse_args()
    config = parse_config({
        "name": "memory", "seed": 0,
        "task": {"kind": "gaussian", "theta0": [0.0, 0.0], "sigma": 1.0, "kappa": 1.0},
        "schedule": {"kind": "constant", "n0": args.kept, "iterations": args.iterations},
        "budget": {"total": 1.0 * args.kept * args.iterations,
                   "costs": {"generate": 0.0, "verify": 0.0, "train": 1.0}},
        "loop": {"store_candidates": args.store, "chunk_size": 65536},
    })
    rows: list[tuple[int, int, float, float, float]] = []
    clock = [time.perf_counter()]

    def report(event: str, payload: Mapping[str, Any]) -> None:
        if event == "iteration":
            _, traced = tracemalloc.get_traced_memory()
            rows.append((payload["iteration"], payload["n_generated"], vm_hwm_mb(), traced / 2**20,
                         time.perf_counter() - clock[0]))
            reset_peaks()
            clock[0] = time.perf_counter()
        elif event == "start":
            reset_peaks()

    tracemalloc.start()
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        run_config(config, run_dir=Path(tmp) / "run", report=report)
        on_disk = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
    print(f"store_candidates={args.store}, n_t={args.kept}, chunk 65536; {on_disk / 1e6:.0f} MB written")
    print("| iteration | N_t (drawn) | peak RSS (MB) | peak traced (MB) | ratio to iteration 0 (RSS / traced) | seconds |")
    print("|---|---|---|---|---|---|")
    first = rows[0]
    for t, drawn, rss, traced, seconds in rows:
        print(f"| {t} | {drawn:,} | {rss:.0f} | {traced:.0f} | {rss / first[2]:.2f} / {traced / first[3]:.2f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
