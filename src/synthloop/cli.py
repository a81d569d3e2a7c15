"""The ``synthloop`` command line."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from synthloop.budget import AdaptivePlanner
from synthloop.configs import (
    ConfigError,
    RunConfig,
    config_differences,
    draw_usage,
    family_for,
    label_plan,
    label_usage,
    load_config,
    make_planner,
)
from synthloop.faults import Faults, fsync_from_environment
from synthloop.names import child_path
from synthloop.records import IterationRecord
from synthloop.sandbox.command import app as sandbox_app
from synthloop.store import RunDirectoryError, RunStore
from synthloop.yamlio import MAX_MESSAGE, one_line

app = typer.Typer(
    help="Iterative synthetic-data bootstrapping under a compute budget.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console(width=None if sys.stdout.isatty() else 140)  # logs: no truncated columns


def _version(value: bool) -> None:
    if value:
        from synthloop import __version__

        typer.echo(f"synthloop {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Iterative synthetic-data bootstrapping under a compute budget."""

ConfigArg = Annotated[Path, typer.Argument(help="YAML run config.", show_default=False)]
RunDirArg = Annotated[Path, typer.Argument(help="A run directory (RUNS_DIR/NAME).", show_default=False)]
TensorBoardOpt = Annotated[
    Path | None, typer.Option(help="Also log per-iteration metrics to this TensorBoard log folder.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="KEY.PATH=VALUE", show_default=False,
                 help="Change one config value, checked like the file (repeatable): --set loop.max_iterations=3, "
                      "--set 'schedule={kind: constant, n0: auto, iterations: 4}'."),
]
BudgetOpt = Annotated[
    str | None, typer.Option(metavar="TOTAL", show_default=False, help="The total budget: --set budget.total=TOTAL.")
]
MlflowOpt = Annotated[
    str | None,
    typer.Option(help="Also log to MLflow at this tracking URI (a folder, file:///... or sqlite:///...)."),
]


def overrides(sets: list[str] | None, budget: str | None) -> list[str]:
    """The ``--set`` overrides in order, then ``--budget`` as the override it stands for."""
    return [*(sets or []), *([f"budget.total={budget}"] if budget is not None else [])]


def open_store(root: Path) -> RunStore:
    """A writer's store: fault injection and fsync come from the environment at this edge only
    (``SYNTHLOOP_FAULT_*``, which tests set; see ``synthloop.faults``)."""
    return RunStore(root, fsync=fsync_from_environment(), faults=Faults.from_environment())


@contextmanager
def clear_errors() -> Iterator[None]:
    """Bad input ends in one line and a non-zero exit code, never a traceback."""
    try:
        yield
    except ConfigError as error:
        for problem in error.problems:  # one line each: a config with three mistakes names all three
            typer.echo(f"synthloop: config error: {problem}", err=True)
        raise typer.Exit(2) from None
    except RunDirectoryError as error:
        typer.echo(f"synthloop: {error}", err=True)
        raise typer.Exit(1) from None
    except OSError as error:
        typer.echo(f"synthloop: {error.strerror or error}: {error.filename or ''}".rstrip(": "), err=True)
        raise typer.Exit(1) from None


@app.command()
def plan(config: ConfigArg, set_: SetOpt = None, budget: BudgetOpt = None) -> None:
    """Print the per-iteration plan (n_t, expected N_t, cost) without running anything."""
    with clear_errors():
        cfg = load_config(config, overrides(set_, budget))
        planner = make_planner(cfg)
        rows = planner.plan()
    family = family_for(cfg)
    settings = family.validate(cfg)
    per_selected, per_label = label_plan(cfg, family, settings)
    labels = ("labels", "label cost") if per_selected else ()  # a mix: L = round(alpha / (1 - alpha) n_t)
    table = Table(title=f"{cfg.name}: plan for a budget of {cfg.budget.total:g} {cfg.budget.unit}")
    for column in ("iteration", "n_t (selected)", "expected N_t (drawn)", *labels, "cost", "cumulative", "note"):
        table.add_column(column, justify="right")
    for r in rows:
        n_labels = round(per_selected * r.n_selected)
        label_cells = (str(n_labels), f"{n_labels * per_label:.6g}") if labels else ()
        table.add_row(str(r.iteration), str(r.n_selected), f"{r.expected_generated:.1f}", *label_cells,
                      f"{r.expected_cost:.6g}", f"{r.cumulative_cost:.6g}", "cut to fit" if r.cut else "")
    console.print(table)
    used = rows[-1].cumulative_cost if rows else 0.0
    console.print(f"{len(rows)} iterations; plan uses {used:.6g} of {cfg.budget.total:g} "
                  f"({100 * used / cfg.budget.total:.1f}%), assuming acceptance rate "
                  f"{planner.acceptance_rate:g}")
    if isinstance(planner, AdaptivePlanner):
        known = ("the number of iterations depends on the measured acceptance rate" if planner.fixed_steps
                 else "only this prefix is known before the run")
        console.print(f"{planner.describe()}: {known}")
    usage = draw_usage(cfg, family, settings)  # what each stage reports, per draw
    console.print("expected usage per draw: " + "; ".join(
        f"{stage} " + ", ".join(f"{q} {v:.4g}" for q, v in quantities.items())
        for stage, quantities in usage.items() if quantities and stage != "train"))
    if labels:
        console.print(f"expected usage per label (label stage, {per_label:.6g} {cfg.budget.unit} each, "
                      "plus the training of its row): "
                      + ", ".join(f"{q} {v:.4g}" for q, v in label_usage(cfg, family, settings).items()))


@app.command()
def run(
    config: ConfigArg,
    runs_dir: Annotated[Path, typer.Option(help="Where run directories go.")] = Path("runs"),
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run of the same name.")] = False,
    tensorboard: TensorBoardOpt = None,
    mlflow: MlflowOpt = None,
    set_: SetOpt = None,
    budget: BudgetOpt = None,
) -> None:
    """Run a bootstrapping job; everything it produces goes to RUNS_DIR/NAME (the resolved config,
    overrides included, is its config.yaml: `resume` continues with it)."""
    from synthloop.experiments import run_config
    from synthloop.progress import RunProgress, fan_out

    with clear_errors():
        cfg = load_config(config, overrides(set_, budget))
        run_dir = child_path(runs_dir, cfg.name)
        if not overwrite:
            refuse_another_config(run_dir, cfg)
        make_planner(cfg)  # a plan that cannot run fails here, before a tracker writes its first file
        with _interruptible(run_dir), RunProgress() as progress, \
                _trackers(cfg.name, tensorboard, mlflow) as trackers:
            history = run_config(cfg, run_dir=run_dir, report=fan_out(progress, *trackers),
                                 overwrite=overwrite, open_store=open_store)
    _print_outcome(history, cfg.budget.total, cfg.budget.unit, run_dir)


def refuse_another_config(run_dir: Path, config: RunConfig) -> None:
    """A run directory holding a run of a different config is not one to resume: say how they differ.

    A directory whose config cannot be read is left to the store, which refuses it the usual way.
    """
    from synthloop.experiments import config_from_run_text

    store = RunStore(run_dir)
    if not store.holds_run():
        return
    try:
        old = config_from_run_text(store.config_text(), source=str(run_dir / "config.yaml"))
    except (ConfigError, RunDirectoryError, OSError):
        return
    differ = config_differences(old, config)
    if differ:
        raise RunDirectoryError(
            f"{run_dir} already holds a run of a different config (it differs in {', '.join(differ)}), so "
            f"it cannot be resumed with this one; choose another name (--set name=...) or --overwrite it")


@contextmanager
def _interruptible(run_dir: Path) -> Iterator[None]:
    """Ctrl-C: one line saying what is committed and how to continue, exit 130 (128 + SIGINT)."""
    try:
        yield
    except KeyboardInterrupt:
        store = RunStore(run_dir)
        if not store.holds_run():
            typer.echo("synthloop: interrupted before anything was committed; run the same command again",
                       err=True)
            raise typer.Exit(130) from None
        open_ = store.open_iteration()
        committed = f"{len(store.manifest().iterations)} iterations committed" + (
            f" and {len(open_.parts)} parts of iteration {open_.iteration}" if open_ else "")
        typer.echo(f"synthloop: interrupted; {committed} in {run_dir}; `synthloop resume {run_dir}` "
                   "continues it", err=True)
        raise typer.Exit(130) from None


@app.command()
def resume(run_dir: RunDirArg, tensorboard: TensorBoardOpt = None, mlflow: MlflowOpt = None) -> None:
    """Continue a stopped run (or a comparison folder) from its last committed state (every file is checked first)."""
    from synthloop.comparisons import is_comparison
    from synthloop.experiments import resume_run
    from synthloop.progress import RunProgress, fan_out

    if is_comparison(run_dir):  # a `compare --out` folder: finish its cells, then its table
        _resume_comparison(run_dir)
        return
    with clear_errors(), _interruptible(run_dir), RunProgress() as progress, \
            _trackers(run_dir.name, tensorboard, mlflow) as trackers:
        cfg, history = resume_run(run_dir, report=fan_out(progress, *trackers), open_store=open_store)
    _print_outcome(history, cfg.budget.total, cfg.budget.unit, run_dir)


@contextmanager
def _trackers(name: str, tensorboard: Path | None, mlflow: str | None) -> Iterator[list[Any]]:
    from synthloop.trackers import FILE_STORE_VARIABLE, MLflowTracker, TensorBoardTracker

    trackers: list[Any] = []
    try:
        if tensorboard is not None:
            trackers.append(TensorBoardTracker(tensorboard / name))
        if mlflow is not None:
            os.environ.setdefault(FILE_STORE_VARIABLE, "true")  # the command line's choice: folders work
            trackers.append(MLflowTracker(mlflow, run_name=name))
        yield trackers
    finally:
        for tracker in trackers:
            tracker.close()


def _print_outcome(history: list[IterationRecord], budget: float, unit: str, run_dir: Path) -> None:
    last = history[-1] if history else None
    spent = last.cumulative_cost if last else 0.0
    console.print(f"{len(history)} iterations, spent {spent:.6g} of {budget:g} "
                  f"{unit}; run directory: {run_dir}")
    accepted = sum(r.n_accepted for r in history)
    unkept = sum(max(0, r.n_accepted - r.n_selected) for r in history)
    if unkept:  # their draws were paid for: many here argue for fewer, larger iterations
        console.print(f"{unkept} of {accepted} accepted candidates ({100 * unkept / accepted:.1f}%) were not "
                      "kept: accepted past n_t in an iteration's last part, or outranked by the selector")
    if last and last.eval:
        console.print("final: " + ", ".join(f"{k}={v:.6g}" for k, v in last.eval.items()))


WorkersOpt = Annotated[int | None, typer.Option(
    min=1, help="Cells run at the same time, in local processes (default 1), or as Ray tasks with --ray "
                "(default: the cluster's CPUs).")]
RayOpt = Annotated[str | None, typer.Option(
    "--ray", help="Run the cells as Ray tasks: 'local' starts Ray here, or give a cluster's address.")]


@app.command()
def compare(
    config: ConfigArg,
    schedules: Annotated[
        str | None, typer.Option(help="Comma-separated names from the config's compare.schedules.")
    ] = None,
    seeds: Annotated[int | None, typer.Option(min=1, help="Seeds per schedule.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default runs/NAME-compare).")] = None,
    store: Annotated[str, typer.Option(help="Candidates to keep in each run: none, selected, all.")] = "none",
    workers: WorkersOpt = None,
    ray: RayOpt = None,
    set_: SetOpt = None,
    budget: BudgetOpt = None,
) -> None:
    """Run several schedules at the same total budget over seeds; write a table and a plot.

    Run again with the same --out (or `synthloop resume OUT`) to finish an interrupted comparison:
    finished runs are kept, unfinished ones resume from their last commit.
    """
    from synthloop.compare_progress import CompareProgress
    from synthloop.comparisons import compare as run_compare

    if store not in ("none", "selected", "all"):
        typer.echo(f"synthloop: --store must be none, selected or all (got {store!r})", err=True)
        raise typer.Exit(2)
    with clear_errors():
        cfg = load_config(config, overrides(set_, budget))
        if cfg.compare is None:
            raise ConfigError("compare: the config has no 'compare' section naming the schedules")
        names = [s.strip() for s in schedules.split(",") if s.strip()] if schedules is not None else None
        if names is not None and not names:
            raise ConfigError("--schedules: give at least one schedule name")
        folder = out or child_path(Path("runs"), f"{cfg.name}-compare")
        with _compare_interruptible(folder), CompareProgress() as progress:
            summary = run_compare(cfg, schedules=names, seeds=seeds or cfg.compare.seeds, out=folder,
                                  store_candidates=store, workers=workers, ray=ray, progress=progress,
                                  open_store=open_store)
    _print_compare_outcome(summary, folder)


def _print_compare_outcome(summary: dict[str, Any], folder: Path) -> None:
    _print_summary(summary)
    console.print(f"table: {folder / 'table.md'}  plot: {folder / 'compare.png'}  runs: {folder / 'runs'}")


@contextmanager
def _compare_interruptible(folder: Path) -> Iterator[None]:
    """Ctrl-C on a comparison: finished cells are kept; say how to finish the rest, exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        typer.echo(f"synthloop: interrupted; finished cells are kept in {folder}; `synthloop resume {folder}` "
                   "finishes the comparison", err=True)
        raise typer.Exit(130) from None


def _resume_comparison(folder: Path) -> None:
    """``synthloop resume OUT`` on a comparison folder: finish its cells, then the table."""
    from synthloop.compare_progress import CompareProgress
    from synthloop.comparisons import resume_compare

    with clear_errors(), _compare_interruptible(folder), CompareProgress() as progress:
        summary = resume_compare(folder, progress=progress, open_store=open_store)
    _print_compare_outcome(summary, folder)


@app.command()
def repair(run_dir: RunDirArg) -> None:
    """Roll a damaged run back to its last intact iteration (then `synthloop resume` continues it)."""
    from synthloop.runs import repair as repair_run

    with clear_errors():
        result = repair_run(open_store(run_dir))
    for problem in result.problems:
        console.print(f"failed check: {problem}", soft_wrap=True)
    if result.used_backup:
        console.print("manifest.json was damaged: restored from manifest.backup.json")
    if result.removed_iterations:
        console.print(f"rolled back iterations {', '.join(map(str, result.removed_iterations))}")
    console.print(f"{run_dir}: {result.kept_iterations} committed iterations"
                  + (f" and {result.kept_parts} parts of the next" if result.kept_parts else "")
                  + f" intact; removed {len(result.removed_files)} files", soft_wrap=True)


@app.command()
def check(run_dir: RunDirArg) -> None:
    """Check every file of a run against its manifest; exit 1 naming each file that fails."""
    from synthloop.runs import check_run

    with clear_errors():
        problems = check_run(RunStore(run_dir))
    for problem in problems:
        typer.echo(f"synthloop: {problem}", err=True)
    if problems:
        raise typer.Exit(1)
    console.print(f"{run_dir}: every file matches the manifest")


@app.command()
def inspect(run_dir: RunDirArg, samples: Annotated[int, typer.Option(
        min=0, help="Also print N kept and N rejected candidates per iteration.")] = 0) -> None:
    """Show a run's iterations (n_t, N_t, acceptance, budget used, metrics), its disk use, and samples."""
    from synthloop.views import disk_use, run_summary

    with clear_errors():
        summary = run_summary(run_dir, content=True)
    metric_names = sorted({k for m in summary.iterations for k in m["eval"]})
    initial = ", ".join(f"{k}={v:.4g}" for k, v in summary.initial.items())
    table = Table(title=f"{summary.name}: {summary.schedule}, budget {summary.budget:g} {summary.unit}; "
                        f"initial {initial}")
    for column in ("iteration", "n_t", "N_t", "acceptance", "cost", "cumulative", "used", *metric_names):
        table.add_column(column, justify="right")
    for m in summary.iterations:
        table.add_row(str(m["iteration"]) + (" (cut)" if m["cut"] else ""), str(m["n_selected"]),
                      str(m["n_generated"]), f"{m['acceptance_rate']:.4f}", f"{m['iteration_cost']:.6g}",
                      f"{m['cumulative_cost']:.6g}", f"{100 * m['cumulative_cost'] / summary.budget:.1f}%",
                      *(f"{m['eval'][k]:.4g}" if k in m["eval"] else "" for k in metric_names))
    wide = console if console.is_terminal else Console(width=160)
    wide.print(table)
    wide.print(summary.status, soft_wrap=True)
    wide.print(disk_use(run_dir).line(), soft_wrap=True)
    if samples:
        from synthloop.report_samples import terminal_samples
        with clear_errors():
            wide.print(terminal_samples(run_dir, samples), markup=False, highlight=False, soft_wrap=True)


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories to put in one report.")],
    out: Annotated[Path, typer.Option(help="The HTML file to write.")] = Path("report.html"),
) -> None:
    """Write a self-contained HTML page (embedded PNG plots) about one or more runs."""
    from synthloop.report import html_report

    with clear_errors():
        notes = html_report(run_dirs, out)
    for note in notes:
        console.print(note, soft_wrap=True)
    console.print(f"report: {out}")


@app.command()
def export(
    run_dir: RunDirArg,
    iteration: Annotated[int, typer.Option(help="Which iteration's selected set (default: the last).")] = -1,
    out: Annotated[Path, typer.Option(help="Output file: .parquet or .jsonl.")] = Path("selected.parquet"),
) -> None:
    """Export an iteration's selected set as a Parquet or JSONL file `datasets.load_dataset` reads."""
    from synthloop.views import export_selected

    with clear_errors():
        rows = export_selected(run_dir, iteration=iteration, out=out)
    console.print(f"{rows} rows written to {out}")


def _print_summary(summary: dict[str, Any]) -> None:
    arrow = "higher" if summary["higher_is_better"] else "lower"
    table = Table(title=f"final {summary['metric']} ({arrow} is better), budget {summary['budget']:g}; "
                        f"start {summary['initial']:.6g}")
    table.add_column("schedule", no_wrap=True)
    for column in ("mean", "95% interval", "seeds", "iterations", "budget used"):
        table.add_column(column, justify="right", no_wrap=True)
    for r in summary["rows"]:
        name = f"[bold]{r['schedule']}[/bold]" if r["schedule"] == summary["best"] else r["schedule"]
        table.add_row(name, f"{r['final_mean']:.4g}", f"[{r['ci_low']:.3g}, {r['ci_high']:.3g}]",
                      str(r["seeds"]), f"{r['iterations']:.1f}", f"{100 * r['budget_used']:.2f}%")
    console.print(table)


app.add_typer(sandbox_app, name="sandbox")


def main() -> None:
    """Run the app; a usage error is one line too (click's own is a box under a usage line)."""
    if len(sys.argv) < 2:
        app()  # no arguments: the help page
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as error:  # click's usage errors (exit 2) and other click errors
        typer.echo(f"synthloop: {one_line(error.format_message(), MAX_MESSAGE)} (see --help)", err=True)
        code = error.exit_code
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
