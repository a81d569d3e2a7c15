"""``synthloop sandbox``: run one program under the verifiers' limits, to debug a verifier."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from synthloop.sandbox.limits import Limits
from synthloop.sandbox.runner import Sandbox

app = typer.Typer(help="Run Python programs in the sandbox the code verifiers use.", no_args_is_help=True,
                  add_completion=False)
EXIT_NOT_PASSED, EXIT_SANDBOX_ERROR, EXIT_BAD_INPUT = 1, 3, 2

UnisolatedOpt = Annotated[bool, typer.Option(
    "--unisolated", help="Run without namespaces (the program sees the host); every result says so.")]


@app.command("run")
def run(
    file: Annotated[Path, typer.Argument(help="A Python program.", show_default=False)],
    timeout: Annotated[float, typer.Option(help="Wall-clock limit in seconds.")] = 10.0,
    memory_mb: Annotated[int, typer.Option(help="Address space per process, MiB.")] = 512,
    unisolated: UnisolatedOpt = False,
) -> None:
    """Print one JSON line: status (passed, failed, timeout, memory, error), exit_code, seconds, the
    tails of stdout and stderr, detail and isolation. Here "passed" means exit code 0. Exit code 0
    when passed, 1 when failed / timeout / memory, 3 when the sandbox could not run it."""
    try:
        source = file.read_text(encoding="utf-8", errors="surrogateescape")
        limits = Limits(timeout_s=timeout, memory_mb=memory_mb)
    except (OSError, ValueError) as error:
        typer.echo(f"synthloop: {error}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    result = Sandbox(limits=limits, isolation="unisolated" if unisolated else "bubblewrap").run(source)
    typer.echo(json.dumps(result.to_json()))
    if result.status != "passed":
        raise typer.Exit(EXIT_SANDBOX_ERROR if result.status == "error" else EXIT_NOT_PASSED)


@app.command("check")
def check(unisolated: UnisolatedOpt = False) -> None:
    """Run a trivial program: says whether the sandbox works on this machine (exit code 0) or why not."""
    result = Sandbox(isolation="unisolated" if unisolated else "bubblewrap").check()
    typer.echo(json.dumps(result.to_json()))
    if result.status != "passed":
        raise typer.Exit(EXIT_SANDBOX_ERROR)
