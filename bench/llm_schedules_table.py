"""Spend Wisely Table 2(b) from a ``synthloop compare`` output folder: final held-out accuracy per
difficulty level, mean and 95% interval over seeds, one row per schedule plus the pretrained model.

    synthloop compare examples/math-schedules.yaml --out runs/math-schedules-compare
    python bench/llm_schedules_table.py runs/math-schedules-compare
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from synthloop.experiments import mean_interval


def final_metrics(run_dir: Path) -> dict[str, float]:
    last = sorted(run_dir.glob("iter-*/metrics.json"))[-1]
    metrics: dict[str, float] = json.loads(last.read_text())["eval"]
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compare_dir", type=Path)
    args = parser.parse_args()
    schedules = sorted(p.name for p in (args.compare_dir / "runs").iterdir())
    first = next((args.compare_dir / "runs" / schedules[0]).iterdir())
    initial = json.loads((first / "manifest.json").read_text())["initial"]["metrics"]
    levels = sorted(k for k in initial if k.startswith("accuracy/"))
    columns = ["accuracy", *levels]
    print("| schedule | " + " | ".join(c.replace("accuracy/", "") if "/" in c else "all levels" for c in columns)
          + " | seeds |")
    print("|---|" + "---|" * (len(columns) + 1))
    print("| pretrained | " + " | ".join(f"{100 * initial[c]:.1f}" for c in columns) + " | - |")
    for name in schedules:
        runs = sorted((args.compare_dir / "runs" / name).iterdir())
        finals = [final_metrics(r) for r in runs]
        cells = []
        for c in columns:
            mean, lo, hi = mean_interval([100 * f[c] for f in finals])
            cells.append(f"{mean:.1f} [{lo:.1f}, {hi:.1f}]")
        print(f"| {name} | " + " | ".join(cells) + f" | {len(runs)} |")


if __name__ == "__main__":
    main()
