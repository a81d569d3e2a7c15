"""Tables and plots of ``bench/active_experiment.py``'s results (one JSON line per run).

    python bench/active_table.py docs/active-results.jsonl docs/active-results-smollm2.jsonl \
        --md docs/active-tables.md --png docs/active-curves.png

Several result files (one per student or machine) are read as one experiment; a run key
(task, student, selector, seed, sizes) found twice is an error, not a silent double count.

The metric per task is held-out accuracy, unless every run of the task scores 0 (a student too weak
for the task), then minus the held-out loss of the reference solutions (higher is better either way).
Cells of the win-rate matrix are task x student x budget, at equal generated samples (k, 2k, ... the
active runs' length) and at equal teacher tokens (label tokens + a judge's tokens; a run's value at a
token budget is that of its last iteration within it). Selector i beats j in a cell when its mean
over seeds is higher.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from synthloop import experiments


def load(paths: list[Path]) -> list[dict[str, Any]]:
    runs, seen = [], set()
    for path in paths:
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            run = json.loads(line)
            key = json.dumps(run["key"], sort_keys=True)
            if key in seen:
                raise SystemExit(f"{path}: run {key} appears twice in the result files")
            seen.add(key)
            runs.append(run)
    return runs


def points(run: dict[str, Any], metric: str) -> list[tuple[float, float, float]]:
    """(samples, teacher tokens, metric value) after each iteration, starting from the untrained student."""
    def value(m: dict[str, float]) -> float:
        return m["accuracy"] if metric == "accuracy" else -m["gold_loss"]

    out, samples, tokens = [(0.0, 0.0, value(run["initial"]))], 0.0, 0.0
    for it in run["curve"]:
        usage = it["usage"]
        samples += usage.get("label.samples", 0.0)
        tokens += usage.get("label.tokens", 0.0) + usage.get("score.tokens", 0.0)
        out.append((samples, tokens, value(it)))
    return out


def at_budget(curve: list[tuple[float, float, float]], budget: float, axis: int) -> float:
    within = [p for p in curve if p[axis] <= budget + 1e-9]
    return within[-1][2]


def seed_curves(runs: list[dict[str, Any]], force: str | None = None
                ) -> tuple[dict[tuple[str, str, str], dict[int, list[tuple[float, float, float]]]], dict[str, str]]:
    """(task, student, selector) -> seed -> curve; static's one-point runs are joined by seed."""
    metric = {}
    for task in {r["key"]["task"] for r in runs}:
        accuracies = [it.get("accuracy", 0.0) for r in runs if r["key"]["task"] == task for it in r["curve"]]
        metric[task] = force or ("accuracy" if any(a > 0 for a in accuracies) else "gold_loss")
    grouped: dict[tuple[str, str, str], dict[int, list[tuple[float, float, float]]]] = defaultdict(dict)
    for run in sorted(runs, key=lambda r: sum(r["key"]["sizes"])):
        key = run["key"]
        cell = (key["task"], key["student"], key["selector"])
        curve = points(run, metric[key["task"]])
        if key["selector"] == "static":
            grouped[cell].setdefault(key["seed"], curve[:1]).append(curve[-1])
        else:
            grouped[cell][key["seed"]] = curve
    return dict(grouped), metric


def curves(runs: list[dict[str, Any]], force: str | None = None) -> tuple[dict[tuple[str, str, str], list[list[tuple[float, float, float]]]],
                                                 dict[str, str]]:
    """(task, student, selector) -> one curve per seed, in seed order."""
    grouped, metric = seed_curves(runs, force)
    return {cell: [seeds[s] for s in sorted(seeds)] for cell, seeds in grouped.items()}, metric


def paired_table(runs: list[dict[str, Any]], force: str, order: list[str]) -> list[str]:
    """Each selector minus random at the active runs' last sample budget and at the matching token
    budget, paired by seed (the seeds both ran), mean ± 95% t-interval: the shared data seed and
    student make the difference far less noisy than two separate intervals."""
    grouped, _ = seed_curves(runs, force)
    table = {cell: [seeds[s] for s in sorted(seeds)] for cell, seeds in grouped.items()}
    lines = ["| task | student | selector | n | minus random at B samples | minus random at B tokens |",
             "|---" * 6 + "|"]
    for task, student in sorted({(t, s) for t, s, _ in grouped}):
        randoms = grouped.get((task, student, "random"), {})
        samples, tokens = budgets(table, task, student)
        if not randoms or not samples:
            continue
        for selector in order:
            mine = grouped.get((task, student, selector), {})
            shared = sorted(set(mine) & set(randoms))
            if selector == "random" or len(shared) < 2:
                continue
            cells_ = []
            for axis, budget in ((0, samples[-1]), (1, tokens[-1])):
                diffs = [at_budget(mine[s], budget, axis) - at_budget(randoms[s], budget, axis) for s in shared]
                m, h = mean_interval(diffs)
                cells_.append(f"{m:+.3f} ± {h:.3f} (B = {budget:.0f})")
            lines.append(f"| {task} | {student} | {selector} | {len(shared)} | " + " | ".join(cells_) + " |")
    return lines


def mean_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t interval (nan for one value)."""
    mean, low, high = experiments.mean_interval(values)
    return mean, (high - low) / 2


def budgets(table: dict[tuple[str, str, str], list[list[tuple[float, float, float]]]], task: str,
            student: str) -> tuple[list[float], list[float]]:
    """Sample budgets: those of the active runs; token budgets: the same fractions of the median
    teacher tokens the non-judge active runs spend in all, plus 5% (their spread per iteration)."""
    active = [c for (t, s, sel), cs in table.items() if (t, s) == (task, student) and sel not in ("random", "static")
              for c in cs]
    samples = sorted({p[0] for c in active for p in c[1:]})
    plain = [c[-1][1] for (t, s, sel), cs in table.items() if (t, s) == (task, student)
             and sel not in ("random", "static", "judge", "judge_hard") for c in cs]
    final = float(np.median(plain)) if plain else 0.0
    tokens = [1.05 * final * b / samples[-1] for b in samples] if samples else []  # 5%: per-iteration spread
    return samples, tokens


def cells(table: dict[tuple[str, str, str], list[list[tuple[float, float, float]]]]
          ) -> dict[str, dict[tuple[str, str, str, float], float]]:
    """selector -> (task, student, axis, budget) -> mean over seeds."""
    out: dict[str, dict[tuple[str, str, str, float], float]] = defaultdict(dict)
    for task, student in sorted({(t, s) for t, s, _ in table}):
        samples, tokens = budgets(table, task, student)
        for (t, s, selector), curves_ in table.items():
            if (t, s) != (task, student):
                continue
            for axis, levels in ((0, samples), (1, tokens)):
                for b in levels:
                    values = [at_budget(c, b, axis) for c in curves_]
                    out[selector][(task, student, "samples" if axis == 0 else "tokens", b)] = float(np.mean(values))
    return out


def win_matrix(means: dict[str, dict[tuple[str, str, str, float], float]], order: list[str]) -> list[str]:
    lines = ["| i beats j | " + " | ".join(order) + " | mean win rate |", "|---" * (len(order) + 2) + "|"]
    for i in order:
        row, rates = [], []
        for j in order:
            shared = set(means[i]) & set(means[j])
            wins = sum(means[i][c] > means[j][c] + 1e-12 for c in shared)
            row.append("-" if i == j else str(wins))
            if i != j and shared:
                rates.append(wins / len(shared))
        lines.append(f"| {i} | " + " | ".join(row) + f" | {np.mean(rates):.2f} |")
    return lines


def per_pair_wins(table: dict[tuple[str, str, str], list[list[tuple[float, float, float]]]],
                  order: list[str]) -> list[str]:
    """The win-rate matrix of each task x student alone (its sample and token budget cells): the
    pooled matrix weighs each pair by its number of cells, so a pair with every selector shows here."""
    means, lines = cells(table), []
    for task, student in sorted({(t, s) for t, s, _ in table}):
        mine = {sel: {c: v for c, v in by.items() if c[:2] == (task, student)} for sel, by in means.items()}
        present = [sel for sel in order if mine.get(sel)]
        lines += [f"\n**{task}, {student} student alone**\n", *win_matrix(mine, present)]
    return lines


def curve_table(table: dict[tuple[str, str, str], list[list[tuple[float, float, float]]]],
                metric: dict[str, str], order: list[str]) -> list[str]:
    lines = []
    for task, student in sorted({(t, s) for t, s, _ in table}):
        samples, tokens = budgets(table, task, student)
        name = metric[task] if metric[task] == "accuracy" else "-gold_loss"
        lines += [f"\n**{task}, {student} student** ({name}, mean ± 95% t-interval over seeds; "
                  f"n = seeds)\n", "| selector | n | " + " | ".join(f"{b:g} samples" for b in samples)
                  + " | " + " | ".join(f"{b:.0f} tokens" for b in tokens) + " |",
                  "|---" * (2 + len(samples) + len(tokens)) + "|"]
        for selector in order:
            curves_ = table.get((task, student, selector))
            if not curves_:
                continue
            row = []
            for axis, levels in ((0, samples), (1, tokens)):
                for b in levels:
                    m, h = mean_interval([at_budget(c, b, axis) for c in curves_])
                    row.append(f"{m:.3f} ± {h:.3f}" if not math.isnan(h) else f"{m:.3f}")
            lines.append(f"| {selector} | {len(curves_)} | " + " | ".join(row) + " |")
    return lines


def random_needs(table: dict[tuple[str, str, str], list[list[tuple[float, float, float]]]],
                 order: list[str]) -> list[str]:
    lines = ["| task | student | best active selector | its value at B | random needs | ratio |", "|---" * 6 + "|"]
    for task, student in sorted({(t, s) for t, s, _ in table}):
        samples, _ = budgets(table, task, student)
        if not samples or (task, student, "random") not in table:
            continue
        final = samples[-1]
        best = max((sel for sel in order if sel not in ("random", "static") and (task, student, sel) in table),
                   key=lambda sel: np.mean([at_budget(c, final, 0) for c in table[(task, student, sel)]]))
        target = float(np.mean([at_budget(c, final, 0) for c in table[(task, student, best)]]))
        randoms = table[(task, student, "random")]
        levels = sorted({p[0] for c in randoms for p in c})
        needed = next((b for b in levels if b > 0 and np.mean([at_budget(c, b, 0) for c in randoms]) >= target), None)
        shown = f"{needed:g}" if needed is not None else f"> {levels[-1]:g}"
        ratio = f"{needed / final:.2f}x" if needed is not None else f"> {levels[-1] / final:.2f}x"
        lines.append(f"| {task} | {student} | {best} | {target:.3f} at {final:g} | {shown} samples | {ratio} |")
    return lines


def cost_table(runs: list[dict[str, Any]], order: list[str]) -> list[str]:
    lines = ["| task | student | selector | student forward passes / iteration | judge tokens / iteration | "
             "teacher tokens / iteration | seconds / run |", "|---" * 7 + "|"]
    by: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        by[(run["key"]["task"], run["key"]["student"], run["key"]["selector"])].append(run)
    for (task, student, selector) in sorted(by, key=lambda k: (k[0], k[1], order.index(k[2]) if k[2] in order else 99)):
        group = by[(task, student, selector)]
        its = [it["usage"] for r in group for it in r["curve"]]
        fp = np.mean([u.get("score.forward_passes", 0.0) for u in its])
        judge = np.mean([u.get("score.tokens", 0.0) for u in its])
        label = np.mean([u.get("label.tokens", 0.0) for u in its])
        seconds = np.mean([r["seconds"] for r in group])
        lines.append(f"| {task} | {student} | {selector} | {fp:.0f} | {judge:.0f} | {label:.0f} | {seconds:.0f} |")
    return lines


def plot(table: dict[tuple[str, str, str], list[list[tuple[float, float, float]]]], metric: dict[str, str],
         order: list[str], path: Path) -> None:
    import matplotlib.pyplot as plt

    pairs = sorted({(t, s) for t, s, _ in table})
    fig, axes = plt.subplots(len(pairs), 2, figsize=(11, 3.8 * len(pairs)), squeeze=False)
    for row, (task, student) in enumerate(pairs):
        for col, axis in enumerate((0, 1)):
            ax = axes[row][col]
            for selector in order:
                curves_ = table.get((task, student, selector))
                if not curves_:
                    continue
                levels = sorted({p[axis] for c in curves_ for p in c})
                stats = [mean_interval([at_budget(c, b, axis) for c in curves_]) for b in levels]
                m = np.array([s[0] for s in stats])
                h = np.nan_to_num(np.array([s[1] for s in stats]))
                style = "--" if selector in ("random", "static") else "-"
                ax.plot(levels, m, style, marker="o", ms=3, label=selector)
                ax.fill_between(levels, m - h, m + h, alpha=0.12)
            ax.set_xlabel("generated samples" if axis == 0 else "teacher tokens (label + judge)")
            ax.set_ylabel(metric[task] if metric[task] == "accuracy" else "- held-out gold loss")
            ax.set_title(f"{task}, {student} student")
        axes[row][1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="result files, read as one experiment")
    parser.add_argument("--md", type=Path, required=True)
    parser.add_argument("--png", type=Path, required=True)
    args = parser.parse_args()
    runs = load(args.results)
    from synthloop.active.policy import SELECTORS

    text: list[str] = []
    for force in ("accuracy", "gold_loss"):
        table, metric = curves(runs, force)
        order = [s for s in [*SELECTORS, "static"] if any(sel == s for _, _, sel in table)]
        name = "held-out accuracy" if force == "accuracy" else "minus the held-out gold-solution loss"
        text += [f"## Metric: {name}\n", "### Learning curves", *curve_table(table, metric, order),
                 "\n### Pairwise win-rate matrix (task x student x budget cells, samples and tokens)\n",
                 *win_matrix(cells(table), order), *per_pair_wins(table, order),
                 "\n### How much data random selection needs to match the best active selector\n",
                 *random_needs(table, order),
                 "\n### Each selector minus random, paired by seed (higher is better)\n",
                 *paired_table(runs, force, order), ""]
        if force == "gold_loss":
            plot(table, metric, order, args.png)
    text += ["## What each selector cost\n", *cost_table(runs, order)]
    args.md.write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
