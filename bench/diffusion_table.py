"""Paper-style table (Spend Wisely, Table 2(a)) and PSNR-vs-compute plots from diffusion_compare runs.

    python bench/diffusion_table.py runs/diffusion-s10 runs/diffusion-s20 \
        --markdown docs/diffusion-table.md --plot docs/diffusion-compare.png \
        --json docs/diffusion-results.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from synthloop.report import step_values


def load(folder: Path) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    summary = json.loads((folder / "summary.json").read_text())
    trajectories = {row["schedule"]: json.loads((folder / row["schedule"] / "compare.json").read_text())
                    ["trajectories"] for row in summary["rows"]}
    return summary, trajectories


def table(summaries: list[dict[str, Any]]) -> str:
    header = " | ".join(f"s = {s['noise_step']}" for s in summaries)
    lines = [f"| schedule | {header} |", "|---" * (1 + len(summaries)) + "|"]
    initial = " | ".join(f"{s['initial']['psnr']:.2f}" for s in summaries)
    lines.append(f"| pretrained | {initial} |")
    names = [r["schedule"] for r in summaries[0]["rows"]]
    best = [max(s["rows"], key=lambda r: r["final_mean"])["schedule"] for s in summaries]
    for name in names:
        cells = []
        for s, top in zip(summaries, best, strict=True):
            row = next(r for r in s["rows"] if r["schedule"] == name)
            half = (row["ci_high"] - row["ci_low"]) / 2
            text = f"{row['final_mean']:.2f} ± {half:.2f}"
            cells.append(f"**{text}**" if name == top else text)
        lines.append(f"| {name} | {' | '.join(cells)} |")
    noisy = " | ".join(f"{s['initial']['psnr_noisy']:.2f}" for s in summaries)
    lines.append(f"| (noisy input) | {noisy} |")
    return "\n".join(lines) + "\n"


def per_seed(folder: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """The summary with, per schedule, each seed's final PSNR, optimizer steps, and acceptance in its
    first and last iterations that the budget did not cut."""
    rows = []
    for row in summary["rows"]:
        name, seeds = row["schedule"], []
        for run in sorted((folder / name / "runs" / name).glob("seed-*")):
            metrics = [json.loads(p.read_text()) for p in sorted(run.glob("iter-*/metrics.json"))]
            whole = [m for m in metrics if not m["cut"]] or metrics  # a cut last iteration may draw nothing
            seeds.append({"seed": run.name, "final": metrics[-1]["eval"]["psnr"], "iterations": len(metrics),
                          "optimizer_steps": sum(m["train"].get("optimizer_steps", 0.0) for m in metrics),
                          "acceptance_first": whole[0]["acceptance_rate"],
                          "acceptance_last": whole[-1]["acceptance_rate"]})
        rows.append({**row, "per_seed": seeds})
    return {**summary, "rows": rows}


def plot(runs: list[tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(6.2 * len(runs), 4.4), dpi=120, squeeze=False)
    for ax, (summary, trajectories) in zip(axes[0], runs, strict=True):
        grid = np.linspace(0.0, summary["budget"], 300)
        start = summary["initial"]["psnr"]
        for name, runs_of in trajectories.items():
            curves = np.stack([step_values(t["costs"], t["metrics"], grid, start) for t in runs_of])
            mean = curves.mean(axis=0)
            line = ax.plot(grid / 1e3, mean, label=name, lw=1.6)[0]
            half = stats.t.ppf(0.975, len(curves) - 1) * curves.std(axis=0, ddof=1) / np.sqrt(len(curves))
            ax.fill_between(grid / 1e3, mean - half, mean + half, color=line.get_color(), alpha=0.15, lw=0)
        ax.axhline(start, color="grey", ls=":", lw=1, label="pretrained")
        ax.set_title(f"8x8 digits, noise level s = {summary['noise_step']}")
        ax.set_xlabel(f"cumulative compute (thousand UNet forward passes, {summary['seeds']} seeds)")
        ax.set_ylabel("held-out PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--markdown", type=Path, required=True)
    parser.add_argument("--plot", type=Path, required=True)
    parser.add_argument("--json", type=Path, default=None, help="also write per-seed results here")
    args = parser.parse_args()
    runs = [load(folder) for folder in args.folders]
    text = table([summary for summary, _ in runs])
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(text)
    plot(runs, args.plot)
    if args.json is not None:
        merged = {f"s{summary['noise_step']}": per_seed(folder, summary)
                  for folder, (summary, _) in zip(args.folders, runs, strict=True)}
        args.json.write_text(json.dumps(merged, indent=1))
    print(text)


if __name__ == "__main__":
    main()
