"""The ``synthloop`` command line."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from synthloop.configs import ConfigError, load_config, make_planner
from synthloop.store import RunDirectoryError

app = typer.Typer(
    help="Iterative synthetic-data bootstrapping under a compute budget.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(width=None if sys.stdout.isatty() else 140)  # logs: no truncated columns
T = TypeVar("T")

ConfigArg = Annotated[Path, typer.Argument(help="YAML run config.", show_default=False)]


@contextmanager
def clear_errors() -> Iterator[None]:
    """Bad input ends in one line and a non-zero exit code, never a traceback."""
    try:
        yield
    except ConfigError as error:
        typer.echo(f"synthloop: config error: {error}", err=True)
        raise typer.Exit(2) from None
    except RunDirectoryError as error:
        typer.echo(f"synthloop: {error}", err=True)
        raise typer.Exit(1) from None
    except OSError as error:
        typer.echo(f"synthloop: {error.strerror or error}: {error.filename or ''}".rstrip(": "), err=True)
        raise typer.Exit(1) from None


def guarded(fn: Callable[[], T]) -> T:
    with clear_errors():
        return fn()
    raise AssertionError("unreachable")  # pragma: no cover


@app.command()
def plan(config: ConfigArg) -> None:
    """Print the per-iteration plan (n_t, expected N_t, cost) without running anything."""
    with clear_errors():
        cfg = load_config(config)
        planner = make_planner(cfg)
        rows = planner.plan()
    table = Table(title=f"{cfg.name}: plan for a budget of {cfg.budget.total:g} {cfg.budget.unit}")
    for column in ("iteration", "n_t (selected)", "expected N_t (drawn)", "cost", "cumulative", "note"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(str(r.iteration), str(r.n_selected), f"{r.expected_generated:.1f}",
                      f"{r.expected_cost:.6g}", f"{r.cumulative_cost:.6g}", "cut to fit" if r.cut else "")
    console.print(table)
    used = rows[-1].cumulative_cost if rows else 0.0
    console.print(f"{len(rows)} iterations; plan uses {used:.6g} of {cfg.budget.total:g} "
                  f"({100 * used / cfg.budget.total:.1f}%), assuming acceptance rate "
                  f"{planner.acceptance_rate:g}")


@app.command()
def run(
    config: ConfigArg,
    runs_dir: Annotated[Path, typer.Option(help="Where run directories go.")] = Path("runs"),
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run of the same name.")] = False,
) -> None:
    """Run a bootstrapping job; everything it produces goes to RUNS_DIR/NAME."""
    from synthloop.experiments import run_config
    from synthloop.progress import RunProgress

    with clear_errors():
        cfg = load_config(config)
        run_dir = runs_dir / cfg.name
        with RunProgress() as progress:
            history = run_config(cfg, run_dir=run_dir, report=progress, overwrite=overwrite)
    last = history[-1] if history else None
    spent = last["cumulative_cost"] if last else 0.0
    console.print(f"{len(history)} iterations, spent {spent:.6g} of {cfg.budget.total:g} "
                  f"{cfg.budget.unit}; run directory: {run_dir}")
    if last and last["eval"]:
        console.print("final: " + ", ".join(f"{k}={v:.6g}" for k, v in last["eval"].items()))


@app.command()
def compare(
    config: ConfigArg,
    schedules: Annotated[
        str | None, typer.Option(help="Comma-separated names from the config's compare.schedules.")
    ] = None,
    seeds: Annotated[int | None, typer.Option(min=1, help="Seeds per schedule.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default runs/NAME-compare).")] = None,
    store: Annotated[str, typer.Option(help="Candidates to keep in each run: none, selected, all.")] = "none",
) -> None:
    """Run several schedules at the same total budget over seeds; write a table and a plot."""
    from rich.progress import Progress

    from synthloop.experiments import compare as run_compare

    if store not in ("none", "selected", "all"):
        typer.echo(f"synthloop: --store must be none, selected or all (got {store!r})", err=True)
        raise typer.Exit(2)
    with clear_errors():
        cfg = load_config(config)
        if cfg.compare is None:
            raise ConfigError("compare: the config has no 'compare' section naming the schedules")
        names = [s.strip() for s in schedules.split(",") if s.strip()] if schedules is not None else None
        if names is not None and not names:
            raise ConfigError("--schedules: give at least one schedule name")
        n_seeds = seeds or cfg.compare.seeds
        folder = out or Path("runs") / f"{cfg.name}-compare"
        total = len(names or cfg.compare.schedules) * n_seeds
        with Progress(console=Console(stderr=True), disable=not sys.stderr.isatty()) as bar:
            task = bar.add_task("runs", total=total)
            summary = run_compare(cfg, schedules=names, seeds=n_seeds, out=folder, store_candidates=store,
                                  progress=lambda name, k: bar.advance(task))
    _print_summary(summary)
    console.print(f"table: {folder / 'table.md'}  plot: {folder / 'compare.png'}  runs: {folder / 'runs'}")


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
