"""Pictures of runs and comparisons (matplotlib, Agg backend: no display needed).

Every plot follows the same rules, so that a reader can look at ``compare.png`` and a report side
by side:

- **A schedule has one colour everywhere** (:func:`schedule_colours`): its kind picks the hue
  (constant blue, linear orange, exponential green, Gaussian-optimal red, polynomial purple,
  explicit brown) and its settings a shade, so the same schedules get the same colours in every
  plot. Stages in the cost split are greys with hatching, never a schedule's colour.
- **Legends sit outside the axes**, right of the plot or above it, never on the data.
- **Each plot carries one sentence saying what it shows** (in the page under it; in
  ``compare.png`` under the axes), including what the metric means and what a band is.
- **Intervals are clamped to the metric's range** (:mod:`synthloop.metric_ranges`): a gap's band
  never goes below 0, an accuracy's never past 1.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from synthloop.metric_ranges import metric_note, metric_range

if TYPE_CHECKING:
    from synthloop.experiments import Trajectory

#: schedule kind -> the matplotlib colour map its shades come from.
KIND_COLOURS = {"constant": "Blues", "linear": "Oranges", "exponential": "Greens", "gaussian_optimal": "Reds",
                "polynomial": "Purples", "explicit": "YlOrBr"}
STAGE_STYLES = {  # stage -> (grey, hatch): distinct from every schedule colour
    "generate": ("#3c3c3c", ""), "verify": ("#b4b4b4", ""), "train": ("#7c7c7c", ""),
    "score": ("#7a7a7a", "//"), "label": ("#b0b0b0", "\\\\"), "judge": ("#606060", ".."),
    "diagnose": ("#e4e4e4", "xx"),
}
OUTSIDE_RIGHT = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0, "frameon": False}


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


def schedule_colours(schedules: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[float, ...]]:
    """A colour for each schedule (name -> its config section): the kind's hue, a shade per setting.

    The shades of one kind go from light to dark in the order of the schedules' settings (numbers
    compared as numbers: ``iterations 6`` before ``iterations 12``), so the same set of schedules
    is coloured the same in every plot whatever order it is listed in.

    >>> colours = schedule_colours({"a": {"kind": "constant", "iterations": 12},
    ...                             "b": {"kind": "constant", "iterations": 6}, "c": {"kind": "linear"}})
    >>> colours["a"] != colours["b"] and colours["b"][2] < colours["a"][2] + 1  # two blues
    True
    """
    from matplotlib import colormaps

    by_kind: dict[str, list[str]] = {}
    for name, section in schedules.items():
        by_kind.setdefault(str(section.get("kind")), []).append(name)
    colours: dict[str, tuple[float, ...]] = {}
    for kind, names in by_kind.items():
        ordered = sorted(names, key=lambda n: _settings_key(schedules[n]))
        shades = [0.7] if len(ordered) == 1 else np.linspace(0.45, 0.95, len(ordered))
        cmap = colormaps[KIND_COLOURS.get(kind, "Greys")]
        for name, shade in zip(ordered, shades, strict=True):
            colours[name] = tuple(float(c) for c in cmap(float(shade)))
    return colours


def _settings_key(section: Mapping[str, Any]) -> list[tuple[str, int, float, str]]:
    def one(value: Any) -> tuple[int, float, str]:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return (0, float(value), "")
        return (1, 0.0, json.dumps(value, sort_keys=True, default=str))

    return [(key, *one(value)) for key, value in sorted(section.items()) if key != "kind"]


def mean_band(curves: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The 95% Student-t interval of the mean over seeds (rows), clamped to the metric's range."""
    from scipy import stats

    n = curves.shape[0]
    half = stats.t.ppf(0.975, n - 1) * curves.std(axis=0, ddof=1) / math.sqrt(n)
    mean = curves.mean(axis=0)
    lowest, highest = metric_range(metric)
    return np.clip(mean - half, lowest, highest), np.clip(mean + half, lowest, highest)


def plot_comparison(trajectories: Sequence[Trajectory], summary: Mapping[str, Any], path: Path) -> None:
    """Metric vs cumulative cost, one line per schedule (mean over seeds) with its 95% band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 4.8), dpi=120)
    budget, metric, initial = float(summary["budget"]), str(summary["metric"]), summary["initial"]
    grid = np.linspace(0.0, budget, 400)
    names = list(dict.fromkeys(t.schedule for t in trajectories))
    colours = schedule_colours({n: summary.get("schedules", {}).get(n, {"kind": n}) for n in names})
    seeds, means = set(), []
    for name in names:
        runs = [t for t in trajectories if t.schedule == name and t.metrics]
        if not runs:
            continue
        seeds.add(len(runs))
        curves = np.stack([step_values(t.costs, t.metrics, grid, initial) for t in runs])
        means.append(curves.mean(axis=0))
        ax.plot(grid, means[-1], label=name, lw=1.8, color=colours[name])
        if len(runs) > 1:
            low, high = mean_band(curves, metric)
            ax.fill_between(grid, low, high, color=colours[name], alpha=0.12, lw=0)
    if not summary["higher_is_better"] and all(min(t.metrics) > 0 for t in trajectories if t.metrics):
        ax.set_yscale("log")
        _fit_log_axis(ax, means)
    ax.set_xlabel("cumulative cost")
    ax.set_ylabel(f"{metric} ({'higher' if summary['higher_is_better'] else 'lower'} is better)")
    ax.set_title(f"{summary.get('config', '')}: schedules at a total budget of {budget:g}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, **OUTSIDE_RIGHT)
    fig.text(0.01, 0.01, _wrap(comparison_caption(metric, sorted(seeds))), fontsize=8, va="bottom")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def _fit_log_axis(ax: Any, means: Sequence[np.ndarray]) -> None:
    """On a log axis the means set the limits: a band clamped at 0 would pull the axis down for ever."""
    values = np.concatenate(means) if means else np.array([])
    values = values[np.isfinite(values) & (values > 0)]
    if len(values):
        ax.set_ylim(values.min() / 3, values.max() * 3)


def comparison_caption(metric: str, seeds: Sequence[int]) -> str:
    """The sentence under ``compare.png``: what the lines, the bands and the metric are."""
    count = "/".join(map(str, seeds)) or "0"
    note = metric_note(metric)
    lowest, highest = metric_range(metric)
    clamp = "" if (lowest, highest) == (-math.inf, math.inf) else f", cut to the metric's range {range_text(lowest, highest)}"
    return (f"Lines: mean {metric} over the {count} seeds of each schedule after each iteration, against the "
            f"cumulative cost; bands: 95% Student-t interval of that mean{clamp}."
            + (f" {metric}: {note}." if note else ""))


def range_text(lowest: float, highest: float) -> str:
    """``[0, inf)`` written as a reader expects it.

    >>> range_text(0.0, math.inf), range_text(0.0, 1.0)
    ('[0, ∞)', '[0, 1]')
    """
    low = "(-∞" if lowest == -math.inf else f"[{lowest:g}"
    high = "∞)" if highest == math.inf else f"{highest:g}]"
    return f"{low}, {high}"


def _wrap(text: str, width: int = 130) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


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
    styles = run_styles(runs)
    figures = [
        ("Metric vs cumulative cost", _png(_plot_metric_vs_cost, runs, styles), metric_caption(runs)),
        ("Selected (n_t) and generated (N_t) per iteration", _png(_plot_counts, runs, styles),
         "n_t is how many samples an iteration selected (kept to train on) and N_t how many it generated "
         "to find them, both on a log scale; a cut iteration is one the plan shrank to fit the budget."),
        ("Acceptance rate per iteration", _png(_plot_acceptance, runs, styles),
         "The share of an iteration's generated samples the selector kept (n_t / N_t): how often the "
         "model's own samples pass, which the planner uses to size the next iteration."),
        ("Cost split by stage", _png(_plot_cost_split, runs, styles),
         f"What each run spent, summed over its committed iterations, by the stage that spent it (in "
         f"{runs[0].unit}); the dotted line is the total budget."),
    ]
    from synthloop.report_samples import html_sections
    atomic_write_bytes(out, _page(runs, notes, figures).replace("</body>", html_sections(run_dirs) + "</body>").encode())
    return notes


def metric_caption(runs: Sequence[Any]) -> str:
    """The sentence under the metric plot: what the metric is and what the points are."""
    metric = runs[0].primary or "the primary metric"
    note = metric_note(runs[0].primary)
    direction = {True: "higher", False: "lower"}.get(runs[0].higher_is_better)
    return (f"The task's primary metric, {metric}" + (f" ({note})" if note else "")
            + (f", {direction} is better" if direction else "")
            + ", measured on held-out data after each evaluated iteration, against the cumulative cost "
            f"spent so far; the first point is the model before any iteration and the dotted line the "
            f"total budget ({runs[0].budget:g} {runs[0].unit}). Each run is one seed, so no interval is drawn.")


def run_styles(runs: Sequence[Any]) -> list[dict[str, Any]]:
    """Each run's line style: its schedule's colour (:func:`schedule_colours`), and a dash pattern
    and marker of its own when several runs share a schedule (seeds)."""
    keys = [json.dumps(r.schedule_config, sort_keys=True) for r in runs]
    colours = schedule_colours({k: r.schedule_config or {"kind": "?"} for k, r in zip(keys, runs, strict=True)})
    dashes, markers = ["-", "--", ":", "-."], ["o", "s", "^", "D", "v"]
    styles, seen = [], dict[str, int]()
    for key in keys:
        k = seen[key] = seen.get(key, -1) + 1
        styles.append({"color": colours[key], "ls": dashes[k % len(dashes)], "marker": markers[k % len(markers)]})
    return styles


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
        ax.legend(fontsize=7, **{**OUTSIDE_RIGHT, **options})


def _png(draw: Any, runs: Sequence[Any], styles: Sequence[dict[str, Any]]) -> str:
    import base64
    import io

    plt = _pyplot()
    fig = draw(plt, runs, styles)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _label(run: Any) -> str:
    return str(run.name)


def _plain_axes(ax: Any, *, integer_x: bool) -> None:
    """Iterations on whole-number ticks, and log-axis labels as plain numbers (``40``, not ``4 x 10^1``)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ax.get_yscale() == "log":
        low, high = ax.get_ylim()
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: plain_number(value)))
        few_decades = high < 100 * low  # with many decades the powers of ten are enough
        ax.yaxis.set_minor_formatter(FuncFormatter(
            lambda value, _: plain_number(value) if few_decades and f"{value:g}"[0] in "25" else ""))


def plain_number(value: float) -> str:
    """A tick label: whole numbers with thousands separators, others as ``%g``.

    >>> plain_number(1e6), plain_number(20.0), plain_number(0.001)
    ('1,000,000', '20', '0.001')
    """
    return f"{int(value):,}" if 1 <= value < 1e12 and value == int(value) else f"{value:g}"


def _plot_metric_vs_cost(plt: Any, runs: Sequence[Any], styles: Sequence[dict[str, Any]]) -> Any:
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    metric = runs[0].primary
    for run, style in zip(runs, styles, strict=True):
        points = [(0.0, run.initial[metric])] if metric in run.initial else []
        points += [(m["cumulative_cost"], m["eval"][metric]) for m in run.iterations if metric in m["eval"]]
        if points:
            costs, values = zip(*points, strict=True)
            ax.step(costs, values, where="post", ms=3, label=_label(run), **style)
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


def _plot_counts(plt: Any, runs: Sequence[Any], styles: Sequence[dict[str, Any]]) -> Any:
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    for run, style in zip(runs, styles, strict=True):
        its = [m["iteration"] for m in run.iterations]
        left.plot(its, [m["n_selected"] for m in run.iterations], ms=3, label=_label(run), **style)
        right.plot(its, [m["n_generated"] for m in run.iterations], ms=3, label=_label(run), **style)
    for ax, title in ((left, "n_t (selected)"), (right, "N_t (generated)")):
        ax.set_xlabel("iteration")
        ax.set_title(title)
        if any(m["n_selected"] > 0 for r in runs for m in r.iterations):
            ax.set_yscale("log")
        _plain_axes(ax, integer_x=True)
        ax.grid(alpha=0.3)
    _legend(right)
    fig.tight_layout()
    return fig


def _plot_acceptance(plt: Any, runs: Sequence[Any], styles: Sequence[dict[str, Any]]) -> Any:
    fig, ax = plt.subplots(figsize=(7.5, 3.4), dpi=110)
    for run, style in zip(runs, styles, strict=True):
        ax.plot([m["iteration"] for m in run.iterations], [m["acceptance_rate"] for m in run.iterations],
                ms=3, label=_label(run), **style)
    ax.set_xlabel("iteration")
    ax.set_ylabel("acceptance rate n_t / N_t")
    ax.set_ylim(0, 1.05)
    _plain_axes(ax, integer_x=True)
    ax.grid(alpha=0.3)
    _legend(ax)
    fig.tight_layout()
    return fig


def _plot_cost_split(plt: Any, runs: Sequence[Any], styles: Sequence[dict[str, Any]]) -> Any:
    spent = [{s: sum(m["cost"].get(s, 0.0) for m in r.iterations) for s in STAGE_STYLES} for r in runs]
    stages = [s for s in STAGE_STYLES if any(row[s] > 0 for row in spent)] or ["train"]
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.4 * len(runs)), dpi=110)
    left = np.zeros(len(runs))
    for stage in stages:
        totals = np.array([row[stage] for row in spent])
        grey, hatch = STAGE_STYLES[stage]
        ax.barh([_label(r) for r in runs], totals, left=left, label=stage, color=grey, hatch=hatch,
                edgecolor="white", height=0.6)
        left += totals
    ax.axvline(runs[0].budget, color="black", ls=":", lw=1)
    ax.set_xlabel(f"cost ({runs[0].unit}); dotted: total budget")
    ax.tick_params(axis="y", labelsize=7)
    for tick, style in zip(ax.get_yticklabels(), styles, strict=True):
        tick.set_color(style["color"])  # the run's name in its schedule's colour
    ax.invert_yaxis()  # runs top to bottom in the order of the table
    _legend(ax, loc="lower left", bbox_to_anchor=(0.0, 1.02), ncol=len(stages))
    fig.tight_layout()
    return fig


def _page(runs: Sequence[Any], notes: Sequence[str], figures: Sequence[tuple[str, str, str]]) -> str:
    from html import escape

    head = ("<!doctype html><html><head><meta charset='utf-8'><title>synthloop report</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
            "table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}"
            "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}"
            "th{background:#f3f3f3;text-align:left}td.text{text-align:left;white-space:normal}td.name{white-space:nowrap}.caption{color:#555;font-size:13px;margin-top:.2em;max-width:760px}"
            ".swatch{display:inline-block;width:.8em;height:.8em;margin-right:.4em;border-radius:2px}"
            ".warn{background:#fff3cd;border:1px solid #e0c060;padding:.6em 1em}img{max-width:100%}"
            "</style></head><body>")
    parts = [head, f"<h1>synthloop report: {len(runs)} run{'s' if len(runs) > 1 else ''}</h1>"]
    parts += [f"<p class='warn'>{escape(note)}</p>" for note in notes]
    if not notes:
        parts.append(f"<p>All runs share the task and a total budget of {runs[0].budget:g} {escape(runs[0].unit)}.</p>")
    parts.append(_runs_table(runs))
    for title, png, caption in figures:
        parts.append(f"<h2>{escape(title)}</h2><img alt='{escape(title)}' src='data:image/png;base64,{png}'>"
                     f"<p class='caption'>{escape(caption)}</p>")
    parts.append("<h2>Iterations</h2>")
    for run in runs:
        parts.append(f"<h3>{escape(run.name)}</h3>{_iteration_table(run)}")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _runs_table(runs: Sequence[Any]) -> str:
    """One row per run; the task and schedule as ``kind: key value, ...`` (the whole task on hover)."""
    from html import escape

    from matplotlib.colors import to_hex

    rows = ["<table><tr><th>run</th><th>schedule</th><th>task</th><th>budget</th><th>iterations</th>"
            f"<th>final {escape(runs[0].primary)}</th><th>status</th></tr>"]
    for run, style in zip(runs, run_styles(runs), strict=True):
        final = next((m["eval"][run.primary] for m in reversed(run.iterations) if run.primary in m["eval"]), None)
        swatch = f"<span class='swatch' style='background:{to_hex(style['color'])}'></span>"
        rows.append(f"<tr><td class='text name'>{swatch}{escape(run.name)}</td><td class='text'>{escape(run.schedule)}</td>"
                    f"<td class='text' title='{escape(run.task)}'>{escape(run.task_label)}</td>"
                    f"<td>{run.budget:g} {escape(run.unit)}</td><td>{len(run.iterations)}</td>"
                    f"<td>{'' if final is None else f'{final:.6g}'}</td><td class='text'>{escape(_short_status(run))}</td></tr>")
    return "\n".join(rows) + "</table>"


def _short_status(run: Any) -> str:
    spent = run.iterations[-1]["cumulative_cost"] if run.iterations else 0.0
    state = "finished" if run.finished else "not finished"
    return f"{state}, {100 * spent / run.budget:.1f}% spent" + (f", {run.open_parts} parts open" if run.open_parts else "")


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
