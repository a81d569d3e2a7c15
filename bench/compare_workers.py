"""Wall time of ``synthloop compare`` with 1 worker against N workers, in one run, alternating.

Each measurement is the real command in a fresh output folder (process start, spawned workers and
all), so the ratio is what a user sees. The tables must be identical across worker counts: each
cell is seeded on its own. Reports the median of each and the ratio (1 worker / N workers), with
the load average, since the machines are shared.

    python bench/compare_workers.py --config examples/gaussian.yaml --seeds 4 --repeats 2 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed_compare(config: Path, out: Path, *, seeds: int, workers: int) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    clock = time.perf_counter()
    subprocess.run([sys.executable, "-m", "synthloop.cli", "compare", str(config), "--out", str(out),
                    "--seeds", str(seeds), "--workers", str(workers)],
                   env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "gaussian.yaml")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    seconds: dict[int, list[float]] = {1: [], args.workers: []}
    tables: set[str] = set()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="compare-workers-") as scratch:
        for repeat in range(args.repeats):
            for workers in (1, args.workers) if repeat % 2 == 0 else (args.workers, 1):
                out = Path(scratch) / f"r{repeat}-w{workers}"
                seconds[workers].append(timed_compare(args.config, out, seeds=args.seeds, workers=workers))
                tables.add((out / "table.md").read_text())
                print(f"repeat {repeat}, {workers} workers: {seconds[workers][-1]:.1f} s", flush=True)
    one, many = statistics.median(seconds[1]), statistics.median(seconds[args.workers])
    result = {"config": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
              "seeds": args.seeds, "repeats": args.repeats, "workers": args.workers,
              "seconds_1_worker": seconds[1], f"seconds_{args.workers}_workers": seconds[args.workers],
              "median_ratio": one / many, "identical_tables": len(tables) == 1, "cpus": os.cpu_count(),
              "load_average": [load_before, os.getloadavg()[0]]}
    print(json.dumps(result, indent=1))
    if len(tables) != 1:
        raise SystemExit("the tables differ between worker counts")


if __name__ == "__main__":
    main()
