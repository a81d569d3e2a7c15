"""From a validated config to a wired loop: single runs and schedule comparisons at equal budget."""

from __future__ import annotations

import datetime as dt
import json
import math
import platform
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from synthloop.configs import (
    ConfigError,
    RunConfig,
    ScheduleConfig,
    family_for,
    loop_settings,
    make_planner,
    parse_config,
    to_yaml,
    with_schedule,
)
from synthloop.loop import Components, Report, run
from synthloop.names import child_path
from synthloop.policies import PromptScorer, UniformPrompts, make_prompt_policy
from synthloop.records import IterationRecord
from synthloop.store import CONFIG, RunDirectoryError, RunStore, RunStoreFactory
from synthloop.training_set import LabeledSource, make_training_set
from synthloop.yamlio import load_yaml, shown

PACKAGES = ("synthloop", "numpy", "pyarrow", "pydantic", "torch", "transformers", "diffusers", "peft", "trl")


def build_components(config: RunConfig) -> Components:
    """The family's components, with the configured prompt policy and training-set policy."""
    family = family_for(config)
    components: Components = family.build(config, family.validate(config))
    task = components.task
    try:
        if isinstance(components.prompt_policy, UniformPrompts):  # a family's own policy (active) stays
            components.prompt_policy = make_prompt_policy(
                config.prompt_policy, task, scorer=task if isinstance(task, PromptScorer) else None)
        components.training_set = make_training_set(
            config.training_set, source=task if isinstance(task, LabeledSource) else None)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return components


def provenance() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "packages": versions,
        "git_commit": _git_commit(Path(__file__).parent),  # synthloop's own source, if a checkout
        "project_git_commit": _git_commit(Path.cwd()),  # the project the run was started from
    }


def _git_commit(folder: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=folder, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def resolved_config_text(config: RunConfig) -> str:
    """config.yaml of a run: the resolved config, then where and with what it ran."""
    return to_yaml(config) + yaml.safe_dump({"provenance": provenance()}, sort_keys=False)


def config_from_run_text(text: str, *, source: str = CONFIG) -> RunConfig:
    """The config a run's ``config.yaml`` holds (its provenance dropped), read as strictly as a user's."""
    data = load_yaml(text, source=source)
    if isinstance(data, dict):
        data.pop("provenance", None)
    return parse_config(data, source=source)


def run_config(
    config: RunConfig,
    *,
    run_dir: Path | None,
    report: Report | None = None,
    overwrite: bool = False,
    components: Components | None = None,
    open_store: RunStoreFactory = RunStore,
) -> list[IterationRecord]:
    """Run ``config``; with ``run_dir`` set, write the run directory there (``open_store(run_dir)``)."""
    planner = make_planner(config)
    components = components or build_components(config)
    store = None
    if run_dir is not None:
        store = open_store(run_dir)
        store.create(resolved_config_text(config), overwrite=overwrite)
    return run(components, planner, config.budget.cost_model(), loop_settings(config),
               seed=config.seed, store=store, report=report)


def resume_run(run_dir: Path, *, report: Report | None = None,
               open_store: RunStoreFactory = RunStore) -> tuple[RunConfig, list[IterationRecord]]:
    """Continue the run in ``run_dir`` from its last committed state, with the config it holds.

    Every file the manifest lists is checked first; a failed check raises ``IntegrityError``.
    """
    store = open_store(run_dir)
    source = str(store.root / CONFIG)
    try:
        config = config_from_run_text(store.config_text(), source=source)
    except ConfigError as error:  # the run directory is at fault, not a file the user passed
        message = str(error) if str(error).startswith(source) else f"{source}: {error}"
        raise RunDirectoryError(message) from None
    history = run(build_components(config), make_planner(config), config.budget.cost_model(),
                  loop_settings(config), seed=config.seed, store=store, report=report)
    return config, history


@dataclass(frozen=True)
class Trajectory:
    """One run of a comparison: cumulative cost and primary metric after each iteration."""

    schedule: str
    seed: int
    costs: list[float]
    metrics: list[float]
    n_selected: list[int]
    budget_used: float


def compare(
    config: RunConfig,
    *,
    schedules: Sequence[str] | None,
    seeds: int,
    out: Path,
    store_candidates: str = "none",
    report: Report | None = None,
    progress: Any = None,
    open_store: RunStoreFactory = RunStore,
) -> dict[str, Any]:
    """Run each named schedule of ``config.compare`` over ``seeds`` seeds at the same total budget."""
    if config.compare is None:
        raise ConfigError("compare: the config has no 'compare' section naming the schedules")
    names = list(schedules or config.compare.schedules)
    variants = _variants(config, config.compare.schedules, names, seeds=seeds, store_candidates=store_candidates)
    runs = child_path(out, "runs", what="--out")
    trajectories: list[Trajectory] = []
    initial: float | None = None
    for name in names:
        for k, variant in enumerate(variants[name]):
            components = build_components(variant)
            task = components.task
            run_dir = child_path(child_path(runs, name, what="compare.schedules"), f"seed-{k}")
            history = run_config(variant, run_dir=run_dir, overwrite=True, report=report,
                                 components=components, open_store=open_store)
            initial = _initial(run_dir, task.primary_metric)
            trajectories.append(_trajectory(name, config.seed + k, history, task.primary_metric,
                                            config.budget.total))
            if progress is not None:
                progress(name, k)
    summary = summarize(trajectories, metric=task.primary_metric, higher_is_better=task.higher_is_better,
                        budget=config.budget.total, initial=initial)
    summary["config"] = config.name
    summary["schedules"] = {n: config.compare.schedules[n].model_dump(mode="json") for n in names}
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(
        {**summary, "trajectories": [t.__dict__ for t in trajectories]}, indent=1))
    (out / "table.md").write_text(markdown_table(summary))
    from synthloop.report import plot_comparison

    plot_comparison(trajectories, summary, out / "compare.png")
    return summary


def _initial(run_dir: Path, metric: str) -> float:
    committed = RunStore(run_dir).manifest().initial
    assert committed is not None  # run_config commits it first
    return committed.metrics[metric]


def _variants(config: RunConfig, schedules: Mapping[str, ScheduleConfig], names: Sequence[str], *,
              seeds: int, store_candidates: str) -> dict[str, list[RunConfig]]:
    """Each named schedule's runs, one per seed; every plan is checked before anything is written."""
    unknown = [n for n in names if n not in schedules]
    if unknown:
        raise ConfigError(
            f"--schedules: unknown schedule {shown(unknown[0])}; the config names {', '.join(schedules)}"
        )
    loop = config.loop.model_copy(update={"store_candidates": store_candidates})
    variants = {name: [with_schedule(config, schedules[name], seed=config.seed + k,
                                     name=f"{config.name}-{name}-seed{k}").model_copy(update={"loop": loop})
                       for k in range(seeds)] for name in names}
    for runs in variants.values():
        make_planner(runs[0])
    return variants


def _trajectory(name: str, seed: int, history: Sequence[IterationRecord], metric: str,
                budget: float) -> Trajectory:
    evaluated = [m for m in history if metric in m.eval]
    return Trajectory(
        schedule=name,
        seed=seed,
        costs=[m.cumulative_cost for m in evaluated],
        metrics=[m.eval[metric] for m in evaluated],
        n_selected=[m.n_selected for m in history],
        budget_used=(history[-1].cumulative_cost / budget) if history else 0.0,
    )


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and the two ends of its Student-t confidence interval."""
    from scipy import stats

    data = np.asarray(values, dtype=np.float64)
    mean = float(data.mean())
    if len(data) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, len(data) - 1) * data.std(ddof=1) / math.sqrt(len(data)))
    return mean, mean - half, mean + half


def summarize(trajectories: Sequence[Trajectory], *, metric: str, higher_is_better: bool,
              budget: float, initial: float | None) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for name in dict.fromkeys(t.schedule for t in trajectories):
        runs = [t for t in trajectories if t.schedule == name and t.metrics]
        mean, lo, hi = mean_interval([t.metrics[-1] for t in runs])
        rows.append({
            "schedule": name,
            "final_mean": mean,
            "ci_low": lo,
            "ci_high": hi,
            "seeds": len(runs),
            "iterations": float(np.mean([len(t.n_selected) for t in runs])),
            "budget_used": float(np.mean([t.budget_used for t in runs])),
        })
    finals = [float(r["final_mean"]) for r in rows]
    best = rows[int(np.argmax(finals) if higher_is_better else np.argmin(finals))]["schedule"]
    return {"metric": metric, "higher_is_better": higher_is_better, "budget": budget,
            "initial": initial, "rows": rows, "best": best}


def markdown_table(summary: Mapping[str, Any]) -> str:
    arrow = "higher is better" if summary["higher_is_better"] else "lower is better"
    lines = [
        f"Final {summary['metric']} ({arrow}) at a total budget of {summary['budget']:g}; "
        f"mean and 95% interval over seeds. Starting value: {summary['initial']:.6g}.",
        "",
        "| schedule | final mean | 95% interval | seeds | iterations | budget used |",
        "|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        mark = " **(best)**" if r["schedule"] == summary["best"] else ""
        lines.append(
            f"| {r['schedule']}{mark} | {r['final_mean']:.6g} | [{r['ci_low']:.6g}, {r['ci_high']:.6g}] "
            f"| {r['seeds']} | {r['iterations']:.1f} | {100 * r['budget_used']:.2f}% |"
        )
    return "\n".join(lines) + "\n"
