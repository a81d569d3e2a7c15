"""From a validated config to a wired loop: single runs and schedule comparisons at equal budget."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import platform
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from synthloop.configs import (
    ConfigError,
    RunConfig,
    family_for,
    loop_settings,
    make_planner,
    mark_stored_adaptive,
    parse_config,
    to_yaml,
)
from synthloop.diagnostics.stage import Diagnose
from synthloop.loop import Components, Report, run
from synthloop.metric_ranges import clamp_interval
from synthloop.policies import PromptScorer, UniformPrompts, make_prompt_policy
from synthloop.records import IterationRecord
from synthloop.store import CONFIG, RunDirectoryError, RunStore, RunStoreFactory
from synthloop.thirdparty import THIRDPARTY_LOG, routed
from synthloop.training_set import LabeledSource, make_training_set
from synthloop.yamlio import load_yaml

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
    if config.diagnose is not None:
        components.diagnose = Diagnose(config.diagnose.max_samples, config.diagnose.reference_samples)
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
    data = mark_stored_adaptive(load_yaml(text, source=source))
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
    with _thirdparty_to(run_dir), on_engine(config, components or build_components(config)) as components:
        store = None
        if run_dir is not None:
            store = open_store(run_dir)
            store.create(resolved_config_text(config), overwrite=overwrite)
        return run(components, planner, config.budget.cost_model(), loop_settings(config),
                   seed=config.seed, store=store, report=report)


@contextlib.contextmanager
def on_engine(config: RunConfig, components: Components) -> Iterator[Components]:
    """``components`` as the config's ``engine`` runs them: here, or fanned out over Ray actors
    (started here and stopped after; Ray is imported only when an engine is set)."""
    if config.engine is None:
        yield components
        return
    from synthloop.engines.ray import actor_shards, fan_out

    engine = config.engine
    shards = actor_shards(components, workers=engine.workers, address=engine.address, max_redo=engine.max_redo)
    try:
        yield fan_out(components, shards, shard_size=engine.shard_size)
    finally:
        shards.close()


def _thirdparty_to(run_dir: Path | None) -> contextlib.AbstractContextManager[object]:
    """Libraries' warnings, logs and bars into ``RUN/logs/thirdparty.log`` (``synthloop.thirdparty``)."""
    return contextlib.nullcontext() if run_dir is None else routed(Path(run_dir) / THIRDPARTY_LOG)


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
    with _thirdparty_to(store.root), on_engine(config, build_components(config)) as components:
        history = run(components, make_planner(config), config.budget.cost_model(),
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
        lo, hi = clamp_interval(lo, hi, metric)  # a gap's interval never reaches below 0
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
