"""Changing a config from the command line (``--set``, ``--budget``), reusing a run's name with
another config, and validation that lists every problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from crashsafe_support import ROOT, cli, snapshot
from synthloop.cli import app
from synthloop.configs import ConfigError, config_differences, load_config
from synthloop.experiments import config_from_run_text
from synthloop.overrides import apply_overrides, parse_override
from synthloop.store import RunStore
from synthloop.yamlio import MAX_PROBLEMS

EXAMPLE = ROOT / "examples" / "gaussian.yaml"
runner = CliRunner()
FAST = {"SYNTHLOOP_FAULT_NO_FSYNC": "1"}


def test_set_and_budget_reach_the_run_and_its_config_so_resume_uses_them(tmp_path: Path) -> None:
    """The example shrunk from the command line runs as shrunk, and config.yaml holds the shrunk
    config: a resume of a run cut short finishes exactly like the uninterrupted one."""
    shrink = ["--budget", "700", "--set", "schedule.iterations=3", "--set", "task.theta0=[2.5, 2.0]",
              "--set", "compare=", "--set", "name=small"]
    done = cli("run", EXAMPLE, "--runs-dir", tmp_path / "a", *shrink, env=FAST)
    assert "3 iterations, spent 700 of 700 samples" in done.stdout
    run_dir = tmp_path / "a" / "small"
    config = config_from_run_text(RunStore(run_dir).config_text())
    assert (config.budget.total, config.schedule.model_dump()["iterations"], config.task.params()["theta0"],
            config.compare) == (700.0, 3, [2.5, 2.0], None)
    # The same command stopped after one iteration (an injected I/O error), then resumed.
    cut = cli("run", EXAMPLE, "--runs-dir", tmp_path / "b", *shrink, check=False,
              env={**FAST, "SYNTHLOOP_FAULT_OSERROR": "train:2:EIO"})
    assert cut.returncode == 1 and len(RunStore(tmp_path / "b" / "small").manifest().iterations) == 1
    cli("resume", tmp_path / "b" / "small", env=FAST)
    assert snapshot(tmp_path / "b" / "small") == snapshot(run_dir)


def test_plan_and_compare_take_overrides(tmp_path: Path) -> None:
    planned = runner.invoke(app, ["plan", str(EXAMPLE), "--budget", "2e3", "--set", "schedule.iterations=4"])
    assert planned.exit_code == 0, planned.output
    assert "4 iterations; plan uses 2000 of 2000 (100.0%)" in planned.stdout
    compared = runner.invoke(app, [
        "compare", str(EXAMPLE), "--out", str(tmp_path / "cmp"), "--budget", "300", "--set", "compare.seeds=2",
        "--set", "compare.schedules={flat: {kind: constant, n0: auto, iterations: 2}, "
                 "rising: {kind: exponential, growth: 1.0, n0: auto, iterations: 2}}"])
    assert compared.exit_code == 0, compared.output
    table = (tmp_path / "cmp" / "table.md").read_text()
    assert "at a total budget of 300" in table and "| flat" in table and "| rising" in table
    assert sorted(p.name for p in (tmp_path / "cmp" / "runs").iterdir()) == ["flat", "rising"]


INVALID = {
    "unknown key": (["--set", "budget.totl=5"], "budget.totl: unknown key"),
    "unknown family key": (["--set", "task.bogus=1"], "task.bogus: unknown key"),
    "unknown section": (["--set", "extras.x=1"], "extras: unknown key"),
    "bad type": (["--set", "budget.total=lots"], "budget.total: Input should be a valid number (got 'lots')"),
    "bad bound": (["--set", "schedule.iterations=0"], "schedule.gaussian_optimal.iterations: Input should be"),
    "bad budget": (["--budget", "-3"], "budget.total: Input should be greater than 0 (got -3)"),
    "budget word": (["--budget", "small"], "budget.total: Input should be a valid number (got 'small')"),
    "no equals sign": (["--set", "budget.total"], "--set 'budget.total': expected KEY.PATH=VALUE"),
    "empty key part": (["--set", "budget..total=1"], "'budget..total' is not a key path"),
    "into a number": (["--set", "budget.total.x=1"], "budget.total is 20000, not a section"),
    "past a list": (["--set", "task.theta0.2=1"], "task.theta0 is a list of 2; a position is 0..1"),
    "bad YAML value": (["--set", "schedule={kind: constant"], "--set schedule: not valid YAML"),
    "bad kind": (["--set", "selector.kind=best"], "selector.kind: unknown kind 'best'"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
@pytest.mark.parametrize("command", ["run", "plan", "compare"])
def test_an_invalid_override_is_one_line_naming_the_key_and_exit_2(case: str, command: str, tmp_path: Path) -> None:
    args, message = INVALID[case]
    where = {"run": ["--runs-dir", str(tmp_path / "runs")], "compare": ["--out", str(tmp_path / "out")]}
    result = runner.invoke(app, [command, str(EXAMPLE), *where.get(command, []), *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("synthloop: config error: ") and message in result.stderr, result.stderr
    assert result.stdout == "" and not list(tmp_path.iterdir())  # nothing written


def test_an_invalid_override_through_the_real_entry_point(tmp_path: Path) -> None:
    result = cli("run", EXAMPLE, "--runs-dir", tmp_path, "--set", "budget.total=lots", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == "synthloop: config error: budget.total: Input should be a valid number (got 'lots')\n"


def test_overrides_apply_in_order_walk_lists_and_keys_with_dots() -> None:
    data: dict[str, Any] = {"task": {"theta0": [1.0, 2.0]}, "compare": {"schedules": {"exponential-0.5": {"growth": 0.5}}}}
    changed = apply_overrides(data, [parse_override(t) for t in (
        "task.theta0.1=7", "compare.schedules.exponential-0.5.growth=2", "seed=3", "seed=4", "model.kind=x")])
    assert changed == {"task": {"theta0": [1.0, 7]}, "compare": {"schedules": {"exponential-0.5": {"growth": 2}}},
                       "seed": 4, "model": {"kind": "x"}}
    assert data["task"]["theta0"] == [1.0, 2.0]  # the document read from the file is left as it was


def test_reusing_a_name_with_another_config_says_the_configs_differ(tmp_path: Path) -> None:
    base = ["--runs-dir", str(tmp_path), "--budget", "300", "--set", "schedule.iterations=2"]
    assert runner.invoke(app, ["run", str(EXAMPLE), *base]).exit_code == 0
    run_dir = tmp_path / "gaussian"
    before = snapshot(run_dir)
    same = runner.invoke(app, ["run", str(EXAMPLE), *base])
    assert same.exit_code == 1 and f"`synthloop resume {run_dir}` continues it" in same.stderr
    other = runner.invoke(app, ["run", str(EXAMPLE), *base, "--set", "seed=5", "--budget", "400"])
    assert other.exit_code == 1 and other.stderr.count("\n") == 1
    assert (f"{run_dir} already holds a run of a different config (it differs in seed, budget)"
            in other.stderr), other.stderr
    assert "resume" not in other.stderr.replace("cannot be resumed", "")
    assert snapshot(run_dir) == before
    replaced = runner.invoke(app, ["run", str(EXAMPLE), *base, "--set", "seed=5", "--overwrite"])
    assert replaced.exit_code == 0 and config_from_run_text(RunStore(run_dir).config_text()).seed == 5


def test_config_differences_names_top_level_keys() -> None:
    config = load_config(EXAMPLE)
    other = load_config(EXAMPLE, ["loop.chunk_size=7", "task.sigma=2.0", "name=x"])
    assert config_differences(config, other) == ["name", "task", "loop"]
    assert config_differences(config, load_config(EXAMPLE)) == []


def test_validation_lists_every_problem_one_line_each(tmp_path: Path) -> None:
    config = yaml.safe_load(EXAMPLE.read_text())
    config["seed"] = -1
    config["budget"]["total"] = "lots"
    config["loop"]["oversample"] = 0.5
    path = tmp_path / "three.yaml"
    path.write_text(yaml.safe_dump(config))
    result = cli("plan", path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "synthloop: config error: seed: Input should be greater than or equal to 0 (got -1)",
        "synthloop: config error: budget.total: Input should be a valid number (got 'lots')",
        "synthloop: config error: loop.oversample: Input should be greater than or equal to 1 (got 0.5)",
    ]


def test_a_value_that_fits_no_member_of_a_union_is_one_problem() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(EXAMPLE, ["budget.costs.train={samples: -1}"])
    assert caught.value.problems == (
        "budget.costs.train.samples: Input should be greater than or equal to 0 (got -1)",)


def test_the_list_of_problems_is_bounded() -> None:
    many = [f"extra{k}=1" for k in range(MAX_PROBLEMS + 7)]
    with pytest.raises(ConfigError) as caught:
        load_config(EXAMPLE, many)
    problems = caught.value.problems
    assert len(problems) == MAX_PROBLEMS + 1 and problems[-1] == "... and 7 more"
    assert problems[0] == "extra0: unknown key (check its spelling and the section's allowed keys)"
