"""Escaping Collapse at CPU scale: does outside signal stop self-training from stalling, and does
spending labels on the hardest prompts beat spending them uniformly?

Arms, all with the same generation (prompts drawn uniformly, k = 8 samples each, n_t kept a round):
  (a) no filter      every readable sample is kept (pure self-training)
  (b) filter only    samples a gamma-noisy filter passes (false accept = false reject = noise)
  (c) + labels, random   (b) plus L labels a round from a beta-weak labeler on uniform prompts
  (d) + labels, hardest  (b) plus L labels on the prompts of highest boosting weight
Each run goes through synthloop's loop from a config dict (experiments.run_config), so the filter,
labeler, allocation and mix are the configured plug-ins. Per round: held-out greedy accuracy and
sampled pass@1 / pass@8 on held-out and on a fixed subset of training prompts.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 nice -n 10 python bench/collapse_experiment.py \\
        --out docs/collapse-results.jsonl --grid oat --seeds 3 --rounds 6
    python bench/collapse_table.py docs/collapse-results.jsonl

Results are appended one JSON line per run, so a stopped sweep continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from synthloop.configs import parse_config
from synthloop.events import Started
from synthloop.experiments import run_config

LEVELS = [
    {"name": "add2", "dataset": "chain_sum", "params": {"min_terms": 2, "max_terms": 2, "min_digits": 1,
                                                        "max_digits": 1}},
    {"name": "add3", "dataset": "chain_sum", "params": {"min_terms": 3, "max_terms": 3, "min_digits": 1,
                                                        "max_digits": 1}},
]
MODEL = {"kind": "scratch", "n_layer": 2, "n_embd": 48, "n_head": 4, "n_positions": 128, "vocab_size": 400,
         "seed_problems": 500, "pretrain_steps": 300, "pretrain_batch_size": 32, "pretrain_lr": 1.0e-2,
         "pretrain_bf16": False}


#: the students' model, generator and learner. "scratch": the model above, fully fine-tuned, continuing.
#: "smollm2": SmolLM2-135M-Instruct (the packaged GGUF, exported once) in its chat template, LoRA adapters
#: (rank 16, alpha 32) trained in bf16 autocast, continuing across rounds; answers are a few tokens, so 24
#: new tokens hold every answer of these levels. Batches of 8: 8 optimizer steps a round at 64 kept samples.
STUDENTS: dict[str, dict[str, Any]] = {
    "scratch": {"model": MODEL,
                "generator": {"kind": "hf", "max_new_tokens": 24, "temperature": 0.7, "batch_size": 256,
                              "eval_batch_size": 400, "bf16": False},
                "learner": {"kind": "sft", "lr": 5.0e-4, "warmup_steps": 20, "batch_size": 16, "epochs": 1,
                            "bf16": False, "reset": "continue"}},
    "smollm2": {"model": {"kind": "smollm2"},
                "generator": {"kind": "hf", "max_new_tokens": 24, "temperature": 0.7, "batch_size": 64,
                              "eval_batch_size": 64, "bf16": True},
                "learner": {"kind": "sft", "lr": 3.0e-4, "batch_size": 8, "epochs": 1, "bf16": True,
                            "reset": "continue", "lora": {"rank": 16, "alpha": 32}}},
}


def config(arm: str, *, beta: float, noise: float, seed: int, rounds: int, n_kept: int, alpha: float,
           train_size: int, eval_size: int, pretrain_steps: int = 300, lr: float | None = None,
           student: str = "scratch") -> dict[str, Any]:
    """One run's config; ``lr`` None keeps the student's own learning rate."""
    filtered = arm != "a"
    task: dict[str, Any] = {
        "kind": "math", "levels": LEVELS, "train_size": train_size, "eval_size": eval_size,
        **({"style": "chat"} if student == "smollm2" else {"shots": 0}),
        "data_seed": 0, "eval_samples": 8, "eval_train_size": eval_size,
        "filter": {"kind": "noisy", "false_accept": noise, "false_reject": noise, "seed": seed}
        if filtered else {"kind": "gold"}}
    labeled = arm in ("c", "d")
    if labeled:
        task["labeler"] = {"kind": "controlled", "beta": beta}
    parts = STUDENTS[student]
    model = {**parts["model"], "pretrain_steps": pretrain_steps} if student == "scratch" else parts["model"]
    learner = parts["learner"] if lr is None else {**parts["learner"], "lr": lr}
    return {
        "name": f"collapse-{arm}", "seed": seed, "task": task, "model": model,
        "generator": parts["generator"], "learner": learner,
        "selector": {"kind": "passed"} if filtered else {"kind": "threshold", "threshold": 0.0},
        "prompt_policy": {"kind": "hardest_first", "samples_per_prompt": 8, "eta": 1.0,
                          "allocation": "hardest" if arm == "d" else "uniform"},
        "training_set": {"kind": "mix", "alpha": alpha} if labeled else {"kind": "this_iteration"},
        "schedule": {"kind": "constant", "n0": n_kept, "iterations": rounds},
        "budget": {"total": 1e9, "unit": "samples", "costs": {"generate": {"samples": 1.0},
                                                              "train": {"samples": 1.0}}},
    }


def cells(grid: str) -> list[tuple[str, float, float]]:
    """(arm, beta, noise), most informative first: the four arms at beta 0.5 and noise 0.1, then
    beta in {1.0, 0.25}, then noise in {0, 0.3}; ``full`` adds the rest of the factorial."""
    core = [("a", 0.0, 0.0), ("b", 0.0, 0.1), ("c", 0.5, 0.1), ("d", 0.5, 0.1)]
    betas = [(arm, b, 0.1) for b in (1.0, 0.25) for arm in ("c", "d")]
    noises = [cell for n in (0.0, 0.3) for cell in (("b", 0.0, n), ("c", 0.5, n), ("d", 0.5, n))]
    rest = [(arm, b, n) for b in (0.25, 1.0) for n in (0.0, 0.3) for arm in ("c", "d")] if grid == "full" else []
    return core + betas + noises + rest


def order(grid: str, seeds: int) -> list[tuple[str, float, float, int]]:
    """Runs in priority groups, each group over all seeds, so a cut sweep has whole comparisons."""
    groups = [cells(grid)[:4], cells(grid)[4:8], cells(grid)[8:14], cells(grid)[14:]]
    return [(arm, beta, noise, seed) for group in groups for seed in range(seeds) for arm, beta, noise in group]


def one_run(arm: str, beta: float, noise: float, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    raw = config(arm, beta=beta, noise=noise, seed=seed, rounds=args.rounds, n_kept=args.n_kept,
                 alpha=args.alpha, train_size=args.train_size, eval_size=args.eval_size,
                 pretrain_steps=args.pretrain_steps, lr=args.lr, student=args.student)
    clock = time.perf_counter()
    initial: dict[str, float] = {}

    def report(event: Any) -> None:
        if isinstance(event, Started):
            initial.update(event.initial)

    history = run_config(parse_config(raw, source="collapse"), run_dir=None, report=report)
    return {"arm": arm, "beta": beta, "noise": noise, "seed": seed, "student": args.student,
            "pretrain_steps": args.pretrain_steps if args.student == "scratch" else None,
            "lr": raw["learner"]["lr"], "seconds": time.perf_counter() - clock,
            "initial": initial,
            "rounds": [{"eval": r.eval, "n_selected": r.n_selected, "n_generated": r.n_generated,
                        "n_outside": r.n_outside, "verdicts": r.verdicts, "acceptance": r.acceptance_rate}
                       for r in history]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/collapse-results.jsonl"))
    parser.add_argument("--grid", choices=("full", "oat"), default="oat")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--n-kept", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=0.2)
    parser.add_argument("--train-size", type=int, default=500)
    parser.add_argument("--eval-size", type=int, default=50)
    # the student's start: 300 steps is the weak start of docs/escaping-collapse.md (about 13% pass@1);
    # more pretraining gives a student good enough for its own correct answers to teach it
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--student", choices=tuple(STUDENTS), default="scratch",
                        help="the from-scratch GPT-2 of the math family, or SmolLM2-135M-Instruct with LoRA")
    parser.add_argument("--lr", type=float, default=None,
                        help="the learner's learning rate (default: 5e-4 scratch, 3e-4 SmolLM2 LoRA)")
    parser.add_argument("--workers", type=int, default=1)  # processes sharing one results file
    parser.add_argument("--worker", type=int, default=0)
    args = parser.parse_args()
    done = set()
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            row = json.loads(line)
            done.add((row.get("student", "scratch"), row["arm"], row["beta"], row["noise"], row["seed"]))
    for position, (arm, beta, noise, seed) in enumerate(order(args.grid, args.seeds)):
        if (args.student, arm, beta, noise, seed) in done or position % args.workers != args.worker:
            continue
        row = one_run(arm, beta, noise, seed, args)
        with args.out.open("a") as out:
            out.write(json.dumps(row) + "\n")
        last = row["rounds"][-1]["eval"]
        print(f"{arm} beta={beta} noise={noise} seed={seed}: {row['seconds']:.0f}s "
              f"held-out pass@1 {last.get('pass@1', float('nan')):.3f}", flush=True)


if __name__ == "__main__":
    main()
