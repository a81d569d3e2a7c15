"""Pictures of runs and comparisons (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from synthloop.experiments import Trajectory


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def step_values(costs: Sequence[float], values: Sequence[float], grid: np.ndarray,
                initial: float) -> np.ndarray:
    """A run's metric as a step function of cumulative cost, read on ``grid``."""
    position = np.searchsorted(np.asarray(costs), grid, side="right")
    padded = np.concatenate([[initial], np.asarray(values, dtype=np.float64)])
    return padded[position]


def plot_comparison(trajectories: Sequence[Trajectory], summary: Mapping[str, Any], path: Path) -> None:
    """Metric vs cumulative cost, one line per schedule (mean over seeds) with a 95% band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    budget = float(summary["budget"])
    grid = np.linspace(0.0, budget, 400)
    initial = summary["initial"]
    for name in dict.fromkeys(t.schedule for t in trajectories):
        runs = [t for t in trajectories if t.schedule == name and t.metrics]
        curves = np.stack([step_values(t.costs, t.metrics, grid, initial) for t in runs])
        mean = curves.mean(axis=0)
        line = ax.plot(grid, mean, label=name, lw=1.8)[0]
        if len(runs) > 1:
            half = 1.96 * curves.std(axis=0, ddof=1) / np.sqrt(len(runs))
            ax.fill_between(grid, mean - half, mean + half, color=line.get_color(), alpha=0.2, lw=0)
    metric = summary["metric"]
    if not summary["higher_is_better"] and all(min(t.metrics) > 0 for t in trajectories if t.metrics):
        ax.set_yscale("log")
    ax.set_xlabel("cumulative cost")
    ax.set_ylabel(f"{metric} ({'higher' if summary['higher_is_better'] else 'lower'} is better)")
    ax.set_title(f"{summary.get('config', '')}: schedules at a total budget of {budget:g}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
