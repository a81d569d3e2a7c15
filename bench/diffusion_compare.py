"""Spend Wisely's Table 2(a) on 8x8 digits: schedules at equal compute, over seeds, one noise level.

Runs each schedule of the config's ``compare`` section with ``synthloop.comparisons.compare`` (one
folder per schedule, so a stopped benchmark keeps what it finished), then merges them into
``OUT/summary.json``. Pretraining happens once, before the first run, and is cached.

    OMP_NUM_THREADS=1 python bench/diffusion_compare.py examples/digits-denoise-s10.yaml \
        --out runs/diffusion-s10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from synthloop.comparisons import compare
from synthloop.configs import load_config
from synthloop.experiments import build_components


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--schedules", default=None, help="comma-separated subset of compare.schedules")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget", type=float, default=None, help="override budget.total")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    if args.budget is not None:
        config = config.model_copy(update={"budget": config.budget.model_copy(update={"total": args.budget})})
    assert config.compare is not None, "the config needs a compare section"
    names = args.schedules.split(",") if args.schedules else list(config.compare.schedules)
    seeds = args.seeds or config.compare.seeds
    clock = time.perf_counter()
    parts = build_components(config)  # pretrain (or hit the cache) once, before the runs
    initial = parts.task.evaluate(parts.learner.model, rng=np.random.default_rng(0))
    print(f"pretrained model ready in {time.perf_counter() - clock:.0f} s: {initial}", flush=True)
    rows, seconds = [], {}
    for name in names:
        clock = time.perf_counter()
        summary = compare(config, schedules=[name], seeds=seeds, out=args.out / name)
        seconds[name] = time.perf_counter() - clock
        rows.extend(summary["rows"])
        print(f"{name}: {summary['rows'][0]['final_mean']:.3f} dB "
              f"[{summary['rows'][0]['ci_low']:.3f}, {summary['rows'][0]['ci_high']:.3f}] "
              f"in {seconds[name]:.0f} s", flush=True)
        merged = {"config": str(args.config), "noise_step": config.task.params()["noise_step"],
                  "budget": config.budget.total, "unit": config.budget.unit, "seeds": seeds,
                  "initial": initial, "rows": rows, "seconds": seconds}
        (args.out / "summary.json").write_text(json.dumps(merged, indent=1))


if __name__ == "__main__":
    main()
