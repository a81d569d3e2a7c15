"""Table and plots of ``bench/collapse_experiment.py``'s results (one JSON line per run).

    python bench/collapse_table.py docs/collapse-results.jsonl --plot docs/escaping-collapse.png

Every figure is the mean over seeds with a 95% t interval (seeds are the replicates; each run's
pass@k is already a mean over 50 prompts x 8 samples). (d) - (c) is paired by seed: both arms
share the seed's pretrained model, prompts and filter coins, so the pairing removes their noise.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from synthloop.experiments import mean_interval

ARMS = {"a": "(a) no filter", "b": "(b) filter only", "c": "(c) filter + labels, random",
        "d": "(d) filter + labels, hardest"}
METRICS = ("pass@1", "pass@8", "train/pass@1", "train/pass@8")


def mean_half(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t interval (nan for one value)."""
    mean, _, high = mean_interval(values)
    return mean, high - mean


def curve(run: dict[str, Any], metric: str) -> list[float]:
    return [run["initial"][metric]] + [r["eval"][metric] for r in run["rounds"]]


def load(path: Path) -> dict[tuple[str, float, float], list[dict[str, Any]]]:
    cells: dict[tuple[str, float, float], list[dict[str, Any]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        run = json.loads(line)
        cells[(run["arm"], run["beta"], run["noise"])].append(run)
    return cells


def fmt(values: list[float]) -> str:
    mean, half = mean_half(values)
    return f"{100 * mean:.1f}" if np.isnan(half) else f"{100 * mean:.1f} ± {100 * half:.1f}"


def table(cells: dict[tuple[str, float, float], list[dict[str, Any]]]) -> str:
    lines = ["| arm | beta | noise | seeds | start pass@1 | final pass@1 | best pass@1 | final pass@8 "
             "| final train pass@1 | final train pass@8 | labels/round |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (arm, beta, noise), runs in sorted(cells.items()):
        start = [r["initial"]["pass@1"] for r in runs]
        final = {m: [curve(r, m)[-1] for r in runs] for m in METRICS}
        best = [float(max(curve(r, "pass@1")[1:])) for r in runs]
        labels = np.mean([np.mean([x["n_outside"] for x in r["rounds"]]) for r in runs])
        lines.append(f"| {ARMS[arm]} | {beta if arm in 'cd' else '-'} | {noise if arm != 'a' else '-'} | "
                     f"{len(runs)} | {fmt(start)} | {fmt(final['pass@1'])} | {fmt(best)} | "
                     f"{fmt(final['pass@8'])} | {fmt(final['train/pass@1'])} | {fmt(final['train/pass@8'])} "
                     f"| {labels:.0f} |")
    return "\n".join(lines)


def paired(cells: dict[tuple[str, float, float], list[dict[str, Any]]]) -> str:
    """Differences paired by seed: (b) - (a), then (c) - (b), (d) - (b) and (d) - (c) per cell."""
    lines = ["| comparison | beta | noise | seeds | final pass@1 | mean pass@1, rounds 1-6 | final pass@8 "
             "| mean pass@8, rounds 1-6 |", "|---|---|---|---|---|---|---|---|"]
    wanted = [(("b", 0.0, n), ("a", 0.0, 0.0)) for (arm, _, n) in sorted(cells) if arm == "b"]
    for (arm, beta, noise) in sorted(cells):
        if arm in "cd":
            wanted.append(((arm, beta, noise), ("b", 0.0, noise)))
        if arm == "d":
            wanted.append(((arm, beta, noise), ("c", beta, noise)))
    for left, right in wanted:
        if right not in cells:
            continue
        by_seed = {r["seed"]: r for r in cells[right]}
        pairs = [(r, by_seed[r["seed"]]) for r in cells[left] if r["seed"] in by_seed]
        row = [f"({left[0]}) - ({right[0]})", str(left[1]) if left[0] in "cd" else "-", str(left[2]),
               str(len(pairs))]
        for metric in ("pass@1", "pass@8"):
            final = [curve(x, metric)[-1] - curve(y, metric)[-1] for x, y in pairs]
            area = [float(np.mean(curve(x, metric)[1:]) - np.mean(curve(y, metric)[1:])) for x, y in pairs]
            row += [fmt(final), fmt(area)]
        lines.append("| " + " | ".join([*row[:4], row[4], row[5], row[6], row[7]]) + " |")
    return "\n".join(lines)


def plot(cells: dict[tuple[str, float, float], list[dict[str, Any]]], out: Path, *, beta: float,
         noise: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = {"a": ("a", 0.0, 0.0), "b": ("b", 0.0, noise), "c": ("c", beta, noise), "d": ("d", beta, noise)}
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), sharex=True)
    for ax, metric in zip(axes, METRICS, strict=True):
        for arm, key in chosen.items():
            runs = cells.get(key, [])
            if not runs:
                continue
            curves = np.array([curve(r, metric) for r in runs])
            stats_ = [mean_half(list(curves[:, t])) for t in range(curves.shape[1])]
            mean = np.array([m for m, _ in stats_])
            half = np.nan_to_num(np.array([h for _, h in stats_]))
            rounds = np.arange(len(mean))
            ax.plot(rounds, 100 * mean, marker="o", ms=3, label=ARMS[arm])
            ax.fill_between(rounds, 100 * (mean - half), 100 * (mean + half), alpha=0.15)
        ax.set_title(("held-out " if not metric.startswith("train") else "train ") + metric.split("/")[-1])
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("percent")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"from-scratch GPT-2 on chain_sum, beta = {beta}, filter noise = {noise} (95% t intervals over seeds)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--noise", type=float, default=0.1)
    args = parser.parse_args()
    cells = load(args.results)
    print(table(cells))
    print()
    print(paired(cells))
    if args.plot:
        plot(cells, args.plot, beta=args.beta, noise=args.noise)


if __name__ == "__main__":
    main()
