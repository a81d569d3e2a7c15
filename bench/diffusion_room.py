"""How much room the starting denoiser leaves: fine-tune it on the *clean* training digits.

Self-training learns from the model's own kept outputs; learning from the clean images instead is
what a perfect verifier and a perfect generator would give, so this curve bounds what the
bootstrapping loop can reach in the same number of optimizer steps (same learner: B, Adam, EMA,
t ~ U{0..s-1}). Prints held-out PSNR (the task's evaluation) every ``--every`` steps and writes
``--out`` (JSON).

    OMP_NUM_THREADS=1 python bench/diffusion_room.py examples/digits-denoise-s10.yaml --steps 400
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from synthloop.configs import load_config
from synthloop.experiments import build_components
from synthloop.records import Candidates, Prompts, ones_usage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_config(args.config)
    parts = build_components(config)
    task, learner = parts.task, parts.learner
    train = task.data.train  # type: ignore[attr-defined]
    rng = np.random.default_rng(args.seed)
    batch = learner.batch_size  # type: ignore[attr-defined]
    curve = [(0, task.evaluate(learner.model, rng=rng)["psnr"])]
    print(f"step 0: {curve[0][1]:.3f} dB", flush=True)
    for step in range(1, args.steps + 1):
        index = rng.integers(0, len(train), batch)
        prompts = Prompts(index=index, items={"clean": train[index]})
        clean = Candidates(samples={"image": train[index]}, prompt_index=index, usage=ones_usage(batch, samples=1))
        learner.update(clean, prompts, rng=rng)  # exactly one optimizer step on B clean images
        if step % args.every == 0:
            curve.append((step, task.evaluate(learner.model, rng=rng)["psnr"]))
            print(f"step {step}: {curve[-1][1]:.3f} dB", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps({"config": str(args.config), "batch_size": batch, "curve": curve}))


if __name__ == "__main__":
    main()
