"""The report and compare.png: readable columns, one colour per schedule, legends off the data,
a caption per plot, and intervals clamped to the metric's range."""

from __future__ import annotations

import math
import re
from html import unescape
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crashsafe_support import CRASH_CONFIG, FAST
from synthloop.configs import load_config
from synthloop.experiments import Trajectory, mean_interval, run_config, summarize
from synthloop.metric_ranges import clamp_interval, metric_range
from synthloop.report import (
    STAGE_STYLES,
    _plot_cost_split,
    _plot_metric_vs_cost,
    _pyplot,
    html_report,
    mean_band,
    run_styles,
    schedule_colours,
)
from synthloop.views import run_summary

CONSTANT = "schedule={kind: constant, n0: auto, iterations: 4}"
EXPONENTIAL = "schedule={kind: exponential, growth: 1.0, n0: auto, iterations: 4}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three small runs: two seeds of a constant schedule and one exponential one."""
    out = []
    for name, schedule, seed in (("flat-a", CONSTANT, 7), ("flat-b", CONSTANT, 8), ("rising", EXPONENTIAL, 7)):
        config = load_config(CRASH_CONFIG, [f"name={name}", schedule, f"seed={seed}", "budget.total=300"])
        run_dir = tmp_path_factory.mktemp(name) / "run"
        run_config(config, run_dir=run_dir, open_store=FAST)
        out.append(run_dir)
    return out


def test_two_seeds_of_a_small_gap_give_an_interval_that_stays_at_or_above_zero() -> None:
    finals = [1e-4, 3e-3]
    _, low, high = mean_interval(finals)
    assert low < 0  # what the Student-t interval of two seeds says, unclamped
    trajectories = [Trajectory("s", k, [10.0], [v], [5], 1.0) for k, v in enumerate(finals)]
    row = summarize(trajectories, metric="gap", higher_is_better=False, budget=10.0, initial=0.5)["rows"][0]
    assert (row["ci_low"], row["ci_high"]) == (0.0, high)
    accuracy = summarize([Trajectory("s", k, [10.0], [v], [5], 1.0) for k, v in enumerate([0.9, 1.0])],
                         metric="accuracy", higher_is_better=True, budget=10.0, initial=0.2)["rows"][0]
    assert accuracy["ci_high"] == 1.0 and 0 < accuracy["ci_low"] < 0.95
    assert clamp_interval(-3.0, 2.0, "psnr") == (-3.0, 2.0)  # a metric with no known range is left alone
    assert math.isnan(clamp_interval(math.nan, math.nan, "gap")[0])


def test_the_plotted_band_is_clamped_to_the_metric_range() -> None:
    curves = np.array([[0.5, 0.01, 1e-4], [0.5, 0.03, 2e-3]])
    low, high = mean_band(curves, "gap")
    assert low.min() == 0.0 and np.all(high >= curves.mean(axis=0))
    acc_low, acc_high = mean_band(np.array([[0.2, 0.95], [0.3, 1.0]]), "accuracy/add2")
    assert acc_high.max() == 1.0 and acc_low.min() >= 0.0
    assert metric_range("accuracy/add2") == (0.0, 1.0) and metric_range("gap") == (0.0, math.inf)


def test_a_schedule_has_the_same_colour_whatever_else_is_listed_and_stages_are_grey() -> None:
    sections: dict[str, dict[str, Any]] = {"T6": {"kind": "constant", "iterations": 6}, "T12": {"kind": "constant", "iterations": 12},
                "exp": {"kind": "exponential", "growth": 1.0}, "opt": {"kind": "gaussian_optimal"}}
    colours = schedule_colours(sections)
    assert schedule_colours(dict(reversed(sections.items()))) == colours  # the order listed does not matter
    assert len(set(colours.values())) == 4
    blue = [c for n, c in colours.items() if n.startswith("T")]
    assert all(c[2] > c[0] for c in blue)  # the constant ones are blues; 6 lighter than 12
    assert sum(colours["T6"][:3]) > sum(colours["T12"][:3])
    assert colours["opt"][0] > colours["opt"][2] and colours["exp"][1] > colours["exp"][0]  # red, green
    for grey, _ in STAGE_STYLES.values():
        assert grey[1:3] == grey[3:5] == grey[5:7]  # a grey: never mistaken for a schedule


def test_runs_of_one_schedule_share_its_colour_and_differ_in_dashes(runs: list[Path]) -> None:
    summaries = [run_summary(r) for r in runs]
    styles = run_styles(summaries)
    assert styles[0]["color"] == styles[1]["color"] != styles[2]["color"]
    assert styles[0]["ls"] != styles[1]["ls"]
    compare_colours = schedule_colours({"constant": summaries[0].schedule_config,
                                        "exponential": summaries[2].schedule_config})
    assert (styles[0]["color"], styles[2]["color"]) == (compare_colours["constant"], compare_colours["exponential"])


def test_legends_sit_outside_the_axes(runs: list[Path]) -> None:
    plt = _pyplot()
    summaries = [run_summary(r) for r in runs]
    for draw in (_plot_metric_vs_cost, _plot_cost_split):
        fig = draw(plt, summaries, run_styles(summaries))
        fig.canvas.draw()
        ax = fig.axes[0]
        legend, box = ax.get_legend().get_window_extent(), ax.get_window_extent()
        assert legend.x0 >= box.x1 or legend.y0 >= box.y1, (draw.__name__, legend, box)
        plt.close(fig)


def test_the_page_has_readable_columns_and_a_caption_under_each_plot(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    html_report(runs, out)
    page = out.read_text()
    cells = [unescape(c) for c in re.findall(r"<td class='text'[^>]*>([^<]*)</td>", page)]
    assert "gaussian: theta0 [2, 2], sigma 1, kappa 1" in cells
    assert "constant: n0 auto, iterations 4" in cells
    assert [c for c in cells if c.startswith("exponential: ")] == ["exponential: n0 auto, iterations 4, growth 1"]
    assert not any("{" in c or '"' in c for c in cells)  # no JSON in the table
    assert "title='{&quot;kappa&quot;: 1.0, &quot;kind&quot;: &quot;gaussian&quot;" in page  # the whole task on hover
    captions = re.findall(r"<img [^>]+><p class='caption'>([^<]+)</p>", page)
    assert len(captions) == 4
    assert "gap (the optimal expected reward minus the model&#x27;s expected reward" in captions[0]
    assert "n_t is how many samples" in captions[1] and "n_t / N_t" in captions[2]
    assert "by the stage that spent it" in captions[3]
