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


# -- the HTML report of runs -------------------------------------------------------------------


def html_report(run_dirs: Sequence[Path], out: Path) -> list[str]:
    """Write one self-contained HTML page (PNG plots as data URIs) about ``run_dirs``.

    Returns notes for the console: a note that the runs do not share a total budget and task, if so
    (the page says it too, at the top).
    """
    from synthloop.store import RunDirectoryError, atomic_write_bytes
    from synthloop.views import run_summary

    if not run_dirs:
        raise RunDirectoryError("report: name at least one run directory")
    runs = [run_summary(Path(d)) for d in run_dirs]
    notes = comparability_notes(runs)
    figures = [
        ("Metric vs cumulative cost", _png(_plot_metric_vs_cost, runs)),
        ("Selected (n_t) and generated (N_t) per iteration", _png(_plot_counts, runs)),
        ("Acceptance rate per iteration", _png(_plot_acceptance, runs)),
        ("Cost split by stage", _png(_plot_cost_split, runs)),
    ]
    from synthloop.report_samples import html_sections
    atomic_write_bytes(out, _page(runs, notes, figures).replace("</body>", html_sections(run_dirs) + "</body>").encode())
    return notes


def comparability_notes(runs: Sequence[Any]) -> list[str]:
    budgets = {(r.budget, r.unit) for r in runs}
    tasks = {r.task for r in runs}
    notes = []
    if len(budgets) > 1:
        notes.append("These runs do not share a total budget ("
                     + ", ".join(f"{b:g} {u}" for b, u in sorted(budgets)) + "): their results are not comparable.")
    if len(tasks) > 1:
        notes.append("These runs do not share a task (their task sections differ): their results are not comparable.")
    return notes


def _legend(ax: Any, **options: Any) -> None:
    if ax.get_legend_handles_labels()[0]:  # a run with no committed iteration draws nothing
        ax.legend(fontsize=7, **options)


def _png(draw: Any, runs: Sequence[Any]) -> str:
    import base64
    import io

    plt = _pyplot()
    fig = draw(plt, runs)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _label(run: Any) -> str:
    return str(run.name)


def _plot_metric_vs_cost(plt: Any, runs: Sequence[Any]) -> Any:
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    metric = runs[0].primary
    for run in runs:
        points = [(0.0, run.initial[metric])] if metric in run.initial else []
        points += [(m["cumulative_cost"], m["eval"][metric]) for m in run.iterations if metric in m["eval"]]
        if points:
            costs, values = zip(*points, strict=True)
            ax.step(costs, values, where="post", marker="o", ms=3, label=_label(run))
    if runs[0].higher_is_better is False and all(
            v > 0 for r in runs for m in r.iterations for k, v in m["eval"].items() if k == metric):
        ax.set_yscale("log")
    direction = {True: "higher", False: "lower"}.get(runs[0].higher_is_better)
    ax.set_xlabel(f"cumulative cost ({runs[0].unit})")
    ax.set_ylabel(f"{metric} ({direction} is better)" if direction else metric)
    ax.axvline(runs[0].budget, color="grey", ls=":", lw=1)
    ax.grid(alpha=0.3)
    _legend(ax)
    fig.tight_layout()
    return fig


def _plot_counts(plt: Any, runs: Sequence[Any]) -> Any:
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8), dpi=110)
    for run in runs:
        its = [m["iteration"] for m in run.iterations]
        left.plot(its, [m["n_selected"] for m in run.iterations], marker="o", ms=3, label=_label(run))
        right.plot(its, [m["n_generated"] for m in run.iterations], marker="o", ms=3, label=_label(run))
    for ax, title in ((left, "n_t (selected)"), (right, "N_t (generated)")):
        ax.set_xlabel("iteration")
        ax.set_title(title)
        if any(m["n_selected"] > 0 for r in runs for m in r.iterations):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    _legend(left)
    fig.tight_layout()
    return fig


def _plot_acceptance(plt: Any, runs: Sequence[Any]) -> Any:
    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=110)
    for run in runs:
        ax.plot([m["iteration"] for m in run.iterations], [m["acceptance_rate"] for m in run.iterations],
                marker="o", ms=3, label=_label(run))
    ax.set_xlabel("iteration")
    ax.set_ylabel("acceptance rate n_t / N_t")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    _legend(ax)
    fig.tight_layout()
    return fig


def _plot_cost_split(plt: Any, runs: Sequence[Any]) -> Any:
    stages = ("generate", "verify", "train")
    fig, ax = plt.subplots(figsize=(7.5, 0.6 + 0.45 * len(runs)), dpi=110)
    left = np.zeros(len(runs))
    for stage in stages:
        totals = np.array([sum(m["cost"].get(stage, 0.0) for m in r.iterations) for r in runs])
        ax.barh([_label(r) for r in runs], totals, left=left, label=stage)
        left += totals
    ax.axvline(runs[0].budget, color="grey", ls=":", lw=1)
    ax.set_xlabel(f"cost ({runs[0].unit}); dotted: total budget")
    ax.tick_params(axis="y", labelsize=7)
    _legend(ax, loc="lower right")
    fig.tight_layout()
    return fig


def _page(runs: Sequence[Any], notes: Sequence[str], figures: Sequence[tuple[str, str]]) -> str:
    from html import escape

    head = ("<!doctype html><html><head><meta charset='utf-8'><title>synthloop report</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
            "table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}"
            "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f3f3f3}"
            ".warn{background:#fff3cd;border:1px solid #e0c060;padding:.6em 1em}img{max-width:100%}"
            "</style></head><body>")
    parts = [head, f"<h1>synthloop report: {len(runs)} run{'s' if len(runs) > 1 else ''}</h1>"]
    parts += [f"<p class='warn'>{escape(note)}</p>" for note in notes]
    if not notes:
        parts.append(f"<p>All runs share the task and a total budget of {runs[0].budget:g} {escape(runs[0].unit)}.</p>")
    parts.append("<table><tr><th>run</th><th>schedule</th><th>task</th><th>budget</th><th>iterations</th>"
                 f"<th>final {escape(runs[0].primary)}</th><th>status</th></tr>")
    for run in runs:
        final = next((m["eval"][run.primary] for m in reversed(run.iterations) if run.primary in m["eval"]), None)
        parts.append(f"<tr><td>{escape(run.name)}</td><td>{escape(run.schedule)}</td><td>{escape(run.task)}</td>"
                     f"<td>{run.budget:g} {escape(run.unit)}</td><td>{len(run.iterations)}</td>"
                     f"<td>{'' if final is None else f'{final:.6g}'}</td><td>{escape(run.status)}</td></tr>")
    parts.append("</table>")
    for title, png in figures:
        parts.append(f"<h2>{escape(title)}</h2><img alt='{escape(title)}' src='data:image/png;base64,{png}'>")
    parts.append("<h2>Iterations</h2>")
    for run in runs:
        parts.append(f"<h3>{escape(run.name)}</h3>{_iteration_table(run)}")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _iteration_table(run: Any) -> str:
    from html import escape

    names = sorted({k for m in run.iterations for k in m["eval"]})
    rows = ["<table><tr><th>iteration</th><th>n_t</th><th>N_t</th><th>acceptance</th><th>cost</th>"
            "<th>cumulative</th>" + "".join(f"<th>{escape(n)}</th>" for n in names) + "</tr>"]
    for m in run.iterations:
        cells = [str(m["iteration"]) + (" (cut)" if m["cut"] else ""), str(m["n_selected"]), str(m["n_generated"]),
                 f"{m['acceptance_rate']:.4f}", f"{m['iteration_cost']:.6g}", f"{m['cumulative_cost']:.6g}"]
        cells += [f"{m['eval'][n]:.6g}" if n in m["eval"] else "" for n in names]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "\n".join(rows) + "</table>"
