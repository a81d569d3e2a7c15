"""The adaptive schedules against constant schedules on the digits-denoising task, at equal compute.

The config is ``examples/digits-denoise-s10.yaml`` (8x8 digits, s = 10, DDIM, B = 16) at 24,000
UNet forward passes; schedules: constant 1B, 10B, 100B (n_t = 16, 160, 1600 kept images),
``adaptive`` (what the learner declares: the digits learner takes fixed optimizer steps, so one
step an iteration, reading no statistic) and ``adaptive-refit`` (the growth rule, reading the
learner's per-example output-layer gradients, ``NoisePredictionLearner.update_statistics``, with
the one tolerance chosen on the Gaussian calibration setting, ``bench/adaptive_gaussian.py``, not
tuned here). Each schedule runs through ``synthloop.comparisons.compare`` (one folder per
schedule, resumable); the table is the final held-out PSNR, mean and 95% interval over seeds.

    OMP_NUM_THREADS=1 python bench/adaptive_digits.py --out runs/ad-0 --first-seed 0 --seeds 4 --only adaptive
    python bench/adaptive_digits.py --paired runs/ad-0 [more folders] --json docs/adaptive-digits.json

``--paired`` reads the finished comparisons under the folders named (schedules run separately with
``--only`` land in separate folders) and reports each schedule's final PSNR per seed, and each
adaptive candidate's paired difference with every constant and with the other candidate, by seed,
with a 95% t-interval. Runs recorded before ``schedule.updates`` existed read as ``adaptive-refit``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from synthloop.comparisons import compare
from synthloop.configs import CompareConfig, EvalConfig, load_config
from synthloop.experiments import build_components, mean_interval

SCHEDULES = {"constant-1B": {"kind": "constant", "n0": 16}, "constant-10B": {"kind": "constant", "n0": 160},
             "constant-100B": {"kind": "constant", "n0": 1600}}
LARGEST_BINS = (0, 200, 400, 700, 10**9)  # the adaptive run's largest iteration, in kept images


def finals(folders: list[Path]) -> dict[str, dict[int, dict]]:
    """Each schedule's trajectory per seed, from every ``compare.json`` under the folders. An
    adaptive schedule recorded without ``updates`` ran before that field existed, when the growth
    rule was the only one: it is read as ``adaptive-refit``."""
    out: dict[str, dict[int, dict]] = {}
    for folder in folders:
        for path in sorted(folder.glob("*/compare.json")):
            comparison = json.loads(path.read_text())
            for trajectory in comparison["trajectories"]:
                name = trajectory["schedule"]
                spec = comparison.get("schedules", {}).get(name, {})
                if spec.get("kind") == "adaptive" and "updates" not in spec:
                    name = "adaptive-refit"
                out.setdefault(name, {})[int(trajectory["seed"])] = trajectory
    return out


CANDIDATES = ("adaptive", "adaptive-refit")  # each compared, by seed, with every constant and the other


def paired(folders: list[Path]) -> dict:
    """Per schedule: final PSNR per seed and its interval; each adaptive candidate minus every
    constant schedule and minus each later candidate, by seed (``minus[candidate][other]``)."""
    runs = finals(folders)
    report: dict = {"schedules": {}, "minus": {}, "by_largest_iteration": {}}
    for name, per in sorted(runs.items()):
        values = np.array([per[s]["metrics"][-1] for s in sorted(per)])
        report["schedules"][name] = {"seeds": sorted(per), "final": values.tolist(), "mean_ci": mean_interval(values),
                                     "n_selected": [per[s]["n_selected"] for s in sorted(per)]}
    for candidate in (c for c in CANDIDATES if c in runs):
        mine, rows = runs[candidate], {}
        for name, per in sorted(runs.items()):
            common = sorted(set(mine) & set(per))
            if name in CANDIDATES[:CANDIDATES.index(candidate) + 1] or len(common) < 2:
                continue  # itself, and each pair of candidates once (the first minus the second)
            diff = np.array([mine[s]["metrics"][-1] - per[s]["metrics"][-1] for s in common])
            rows[name] = {"seeds": common, "by_seed": diff.tolist(), "mean_ci": mean_interval(diff),
                          "better": int((diff > 0).sum())}
        report["minus"][candidate] = rows
        # a candidate that never grows (fixed steps: the rest of the budget joins the last one or
        # two iterations, under twice the step) has no largest iteration to group by
        if any(max(n) >= 2 * n[0] for n in report["schedules"][candidate]["n_selected"]):
            report["by_largest_iteration"][candidate] = by_largest_iteration(report, candidate)
    return report


def by_largest_iteration(report: dict, candidate: str) -> dict[str, dict]:
    """The candidate minus each other schedule, by seed, grouped by the candidate's largest
    iteration (does a deficit come with large iterations?), each group's mean with its 95% interval,
    and the correlation of the two over seeds. Observational: the planner sizes each seed from
    that seed's statistics, so a seed's largest iteration and its outcome share causes."""
    mine = report["schedules"][candidate]
    largest = dict(zip(mine["seeds"], (max(n) for n in mine["n_selected"]), strict=True))
    out: dict[str, dict] = {}
    for name, row in report["minus"][candidate].items():
        sizes = np.array([largest[s] for s in row["seeds"]], dtype=np.float64)
        diffs = np.asarray(row["by_seed"])
        bins = [{"largest": [lo, hi], "seeds": int(m.sum()), "mean": float(diffs[m].mean()),
                 "mean_ci": mean_interval(diffs[m]) if m.sum() > 1 else None}
                for lo, hi in itertools.pairwise(LARGEST_BINS) if (m := (sizes >= lo) & (sizes < hi)).any()]
        correlation = float(np.corrcoef(sizes, diffs)[0, 1]) if len(diffs) > 2 and sizes.std() > 0 else None
        out[name] = {"bins": bins, "correlation": correlation}
    return out


def print_paired(report: dict) -> None:
    for name, row in report["schedules"].items():
        mean, low, high = row["mean_ci"]
        print(f"{name}: {mean:.3f} dB [{low:.3f}, {high:.3f}] over {len(row['seeds'])} seeds")
    for candidate, rows in report["minus"].items():
        for name, row in rows.items():
            mean, low, high = row["mean_ci"]
            print(f"{candidate} - {name}: mean {mean:+.4f} dB, 95% t-interval [{low:+.3f}, {high:+.3f}], "
                  f"{candidate} better in {row['better']} of {len(row['seeds'])}")
        for name, group in report["by_largest_iteration"].get(candidate, {}).items():
            correlation = group["correlation"]
            print(f"{candidate} - {name} by {candidate}'s largest iteration: " + "; ".join(
                f"[{r['largest'][0]}, {r['largest'][1]}) images: {r['mean']:+.4f} dB over {r['seeds']} seeds"
                + (" [{1:+.3f}, {2:+.3f}]".format(*r["mean_ci"]) if r["mean_ci"] else "")
                for r in group["bins"]) + "; correlation " + ("n/a" if correlation is None else f"{correlation:+.3f}"))


def draw(report: dict, out: Path, *, start: float | None = None, margin: float | None = None) -> None:
    """Left: each schedule's final PSNR, mean and 95% interval; right: each adaptive candidate minus
    each constant by seed (dots), with the mean, its 95% interval and the non-inferiority margin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 3.8), width_ratios=[1, 1.5])
    names = list(report["schedules"])
    for i, name in enumerate(names):
        mean, low, high = report["schedules"][name]["mean_ci"]
        left.errorbar(i, mean, yerr=[[mean - low], [high - mean]], fmt="o", capsize=4,
                      color=f"C{3 + CANDIDATES.index(name)}" if name in CANDIDATES else "C0")
    if start is not None:  # a line would flatten the differences: the start is far below
        left.set_title(f"pretrained start: {start:.2f} dB", fontsize=8)
    left.set_xticks(range(len(names)), [f"{n}\n({len(report['schedules'][n]['seeds'])} seeds)" for n in names],
                    fontsize=6.5)
    left.set_ylabel("final held-out PSNR (dB)")
    rng = np.random.default_rng(0)
    # the paired panel leaves out constants run on a handful of seeds (constant-100B: 6, far below)
    pairs = [(c, n) for c, rows in report["minus"].items() for n, row in rows.items() if len(row["seeds"]) >= 20]
    for i, (candidate, name) in enumerate(pairs):
        row = report["minus"][candidate][name]
        diffs = np.asarray(row["by_seed"])
        right.scatter(i + rng.uniform(-0.18, 0.18, len(diffs)), diffs, s=5, alpha=0.3, color="C0")
        mean, low, high = row["mean_ci"]
        right.errorbar(i + 0.3, mean, yerr=[[mean - low], [high - mean]], fmt="s", capsize=4,
                       color=f"C{3 + CANDIDATES.index(candidate)}")
    right.axhline(0.0, color="k", lw=0.8)
    if margin is not None:
        right.axhline(-margin, color="C2", ls="--", lw=1, label=f"non-inferiority margin (-{margin:.3f} dB)")
        right.legend(fontsize=7)
    right.set_xticks(range(len(pairs)), [f"{c}\n- {n}" for c, n in pairs], fontsize=6.5)
    right.set_ylabel("adaptive minus the other, by seed (dB)")
    fig.suptitle("digits denoising: adaptive schedules vs constant schedules at equal compute", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("examples/digits-denoise-s10.yaml"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--paired", type=Path, nargs="+", help="report finished comparisons in these folders")
    parser.add_argument("--json", type=Path, help="with --paired: also write the report here")
    parser.add_argument("--png", type=Path, help="with --paired: also draw it here")
    parser.add_argument("--start", type=float, help="with --png: the pretrained model's PSNR, named in the plot")
    parser.add_argument("--margin", type=float, help="with --png: the non-inferiority margin (dB), drawn as a line")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=None,
                        help="seeds first-seed .. first-seed + seeds - 1 (default: the config's seed), to add "
                             "seeds to a finished comparison in a new folder; --paired reads both")
    parser.add_argument("--budget", type=float, default=24000.0, help="budget.total (UNet forward passes)")
    parser.add_argument("--tolerance", type=float, default=0.25,
                        help="adaptive-refit's tolerance (the Gaussian calibration's); fixed steps read none")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-every", type=int, default=None,
                        help="eval.every (default: the config's, 1); the final model is evaluated anyway, and "
                             "evaluation draws on its own seed, so the final PSNR is the same, only faster")
    parser.add_argument("--only", nargs="*", help="run only these schedules (default: all)")
    return parser


def _report(args: argparse.Namespace) -> None:
    report = paired(args.paired)
    print_paired(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.png:
        draw(report, args.png, start=args.start, margin=args.margin)


def _run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    base = load_config(args.config)
    # "adaptive": what the learner declares (digits: fixed steps, one step an iteration);
    # "adaptive-refit": the growth rule, for updates whose noise falls as V / n (docs/adaptive.md)
    schedules = {"adaptive": {"kind": "adaptive"},
                 "adaptive-refit": {"kind": "adaptive", "tolerance": args.tolerance, "updates": "refit"},
                 **SCHEDULES}
    schedules = {k: v for k, v in schedules.items() if not args.only or k in args.only}
    config = base.model_copy(update={
        "seed": base.seed if args.first_seed is None else args.first_seed,
        "budget": base.budget.model_copy(update={"total": args.budget}),
        "compare": CompareConfig.model_validate({"schedules": schedules, "seeds": args.seeds}),
        **({"eval": EvalConfig(every=args.eval_every)} if args.eval_every is not None else {})})
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


def main() -> None:
    parser = _parser()
    args = parser.parse_args()
    if args.eval_every is not None and args.eval_every < 1:
        parser.error(f"--eval-every must be at least 1, got {args.eval_every}")
    if args.paired:
        _report(args)
    elif args.out is None:
        parser.error("--out is required (or --paired)")
    else:
        _run(args)


if __name__ == "__main__":
    main()
