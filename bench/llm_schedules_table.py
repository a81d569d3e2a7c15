"""Spend Wisely Table 2(b) from a ``synthloop compare`` output folder: final held-out accuracy per
difficulty level, mean and 95% interval over seeds, one row per schedule plus the pretrained model.

Only finished cells count (a comparison still running, or stopped part-way, gives the table of what
has finished so far, with each row's number of seeds); schedules come in the comparison's order.
``--plot`` draws held-out accuracy against cumulative tokens spent, one line per schedule (mean over
its finished seeds at each evaluated iteration, averaged by position since every seed of a schedule
evaluates at the same iterations).

    synthloop compare examples/math-schedules.yaml --out runs/math-schedules-compare
    python bench/llm_schedules_table.py runs/math-schedules-compare --plot docs/llm-schedules.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from synthloop.experiments import mean_interval
from synthloop.metric_ranges import clamp_interval
from synthloop.yamlio import load_yaml


def evaluated(run_dir: Path) -> list[tuple[float, dict[str, float]]]:
    """(cumulative cost, held-out metrics) at every evaluated iteration, the pretrained model first."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    points = [(0.0, manifest["initial"]["metrics"])]
    for path in sorted(run_dir.glob("iter-*/metrics.json")):
        metrics = json.loads(path.read_text())
        if metrics["eval"]:
            points.append((float(metrics["cumulative_cost"]), metrics["eval"]))
    return points


def finished_cells(compare_dir: Path) -> dict[str, list[Path]]:
    """Each schedule's finished cells, in the comparison's schedule order."""
    request = compare_dir / "compare.yaml"
    names = (list(load_yaml(request.read_text(), source=str(request))["request"]["schedules"]) if request.is_file()
             else sorted(p.name for p in (compare_dir / "runs").iterdir()))
    cells: dict[str, list[Path]] = {}
    for name in names:
        folder = compare_dir / "runs" / name
        runs = sorted(folder.iterdir()) if folder.is_dir() else []
        cells[name] = [r for r in runs if (r / "manifest.json").is_file()
                       and json.loads((r / "manifest.json").read_text()).get("finished")]
    return cells


def shown(values: list[float]) -> str:
    """Accuracies in %: the mean, and with two seeds or more its interval cut to [0, 100]."""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    mean, low, high = mean_interval(values)
    low, high = (100 * x for x in clamp_interval(low / 100, high / 100, "accuracy"))
    return f"{mean:.1f} [{low:.1f}, {high:.1f}]"


def table(cells: dict[str, list[Path]]) -> list[str]:
    first = next(runs[0] for runs in cells.values() if runs)
    initial = evaluated(first)[0][1]
    columns = ["accuracy", *sorted(k for k in initial if k.startswith("accuracy/"))]
    lines = ["| schedule | " + " | ".join(c.removeprefix("accuracy/") if "/" in c else "all levels" for c in columns)
             + " | seeds |", "|---|" + "---|" * (len(columns) + 1),
             "| pretrained | " + " | ".join(f"{100 * initial[c]:.1f}" for c in columns) + " | - |"]
    for name, runs in cells.items():
        if not runs:
            lines.append(f"| {name} | " + " | ".join("-" for _ in columns) + " | 0 |")
            continue
        finals = [evaluated(r)[-1][1] for r in runs]
        lines.append(f"| {name} | " + " | ".join(shown([100 * f[c] for f in finals]) for c in columns)
                     + f" | {len(runs)} |")
    return lines


def plot(cells: dict[str, list[Path]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, runs in cells.items():
        curves = [evaluated(r) for r in runs]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        xs = [sum(c[i][0] for c in curves) / len(curves) for i in range(length)]
        ys = [100 * sum(c[i][1]["accuracy"] for c in curves) / len(curves) for i in range(length)]
        ax.plot(xs, ys, "o-", label=f"{name} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
    ax.set_xlabel("tokens spent (generated + trained)")
    ax.set_ylabel("held-out accuracy (%), all levels")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compare_dir", type=Path)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    cells = finished_cells(args.compare_dir)
    if not any(cells.values()):
        raise SystemExit(f"{args.compare_dir}: no finished cell yet")
    print("\n".join(table(cells)))
    if args.plot is not None:
        plot(cells, args.plot)


if __name__ == "__main__":
    main()
