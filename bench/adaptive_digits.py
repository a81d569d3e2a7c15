"""The adaptive schedule against constant schedules on the digits-denoising task, at equal compute.

The config is ``examples/digits-denoise-s10.yaml`` (8x8 digits, s = 10, DDIM, B = 16) at a smaller
budget; schedules: constant 1B, 10B, 100B (n_t = 16, 160, 1600 kept images) and ``adaptive`` with
the one tolerance chosen on the Gaussian calibration setting (``bench/adaptive_gaussian.py``), not
tuned here. The digits learner reports per-example gradients of its output layer
(``NoisePredictionLearner.update_statistics``), which is what the adaptive planner reads. Each
schedule runs through ``synthloop.comparisons.compare`` (one folder per schedule, resumable); the
table is the final held-out PSNR, mean and 95% interval over seeds.

    OMP_NUM_THREADS=1 nice -n 10 python bench/adaptive_digits.py --out runs/adaptive-digits
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from synthloop.comparisons import compare
from synthloop.configs import CompareConfig, load_config
from synthloop.experiments import build_components

SCHEDULES = {"constant-1B": {"kind": "constant", "n0": 16}, "constant-10B": {"kind": "constant", "n0": 160},
             "constant-100B": {"kind": "constant", "n0": 1600}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("examples/digits-denoise-s10.yaml"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=48000.0, help="budget.total (UNet forward passes)")
    parser.add_argument("--tolerance", type=float, default=0.25, help="the Gaussian calibration's tolerance")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="run only these schedules (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = load_config(args.config)
    # the adaptive schedule first: it is the one the learner's statistics change
    schedules = {"adaptive": {"kind": "adaptive", "tolerance": args.tolerance}, **SCHEDULES}
    schedules = {k: v for k, v in schedules.items() if not args.only or k in args.only}
    config = base.model_copy(update={
        "budget": base.budget.model_copy(update={"total": args.budget}),
        "compare": CompareConfig.model_validate({"schedules": schedules, "seeds": args.seeds})})
    clock = time.perf_counter()
    parts = build_components(config)  # pretrain (or hit the cache) once, before the runs
    initial = parts.task.evaluate(parts.learner.model, rng=np.random.default_rng(0))
    rows, seconds = [], {}
    for name in schedules:
        clock = time.perf_counter()
        summary = compare(config, schedules=[name], seeds=args.seeds, out=args.out / name)
        seconds[name] = time.perf_counter() - clock
        row = summary["rows"][0]
        rows.append(row)
        print(f"{name}: {row['final_mean']:.3f} dB [{row['ci_low']:.3f}, {row['ci_high']:.3f}] "
              f"in {seconds[name]:.0f} s", flush=True)
        (args.out / "summary.json").write_text(json.dumps(
            {"budget": args.budget, "seeds": args.seeds, "tolerance": args.tolerance, "initial": initial,
             "rows": rows, "seconds": seconds}, indent=1))


if __name__ == "__main__":
    main()
