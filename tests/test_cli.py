"""The real command line, run as a subprocess on tiny budgets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synthloop.configs import FAMILIES

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "gaussian.yaml"


def synthloop(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "synthloop.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300, check=False)


def tiny_config(tmp_path: Path, **overrides) -> Path:
    config = yaml.safe_load(EXAMPLE.read_text())
    config["budget"]["total"] = 600
    config["schedule"] = {"kind": "exponential", "growth": 1.0, "n0": "auto", "iterations": 4}
    config["compare"] = {"seeds": 2, "schedules": {
        "constant": {"kind": "constant", "n0": "auto", "iterations": 4},
        "exponential": {"kind": "exponential", "growth": 1.0, "n0": "auto", "iterations": 4},
    }}
    for dotted, value in overrides.items():
        *parents, key = dotted.split("__")
        node = config
        for p in parents:
            node = node[p]
        if value is DELETE:
            del node[key]
        else:
            node[key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


DELETE = object()


def test_plan_prints_the_plan_without_running(tmp_path):
    result = synthloop("plan", tiny_config(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "4 iterations; plan uses 600 of 600 (100.0%)" in result.stdout
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("updates", ["refit", "fixed_steps"])
def test_plan_says_what_an_adaptive_schedule_knows_before_the_run(tmp_path, updates):
    config = tiny_config(tmp_path, schedule={"kind": "adaptive", "updates": updates})
    result = synthloop("plan", config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())  # rich wraps long lines
    if updates == "refit":
        assert "norm test" in out and "only this prefix is known before the run" in out
    else:
        assert "fixed-steps learner: n_t is fixed at its smallest update, 2 kept samples" in out
        assert "number of iterations depends on the measured acceptance rate" in out and "norm test" not in out
        assert "300 iterations; plan uses 600 of 600 (100.0%)" in out  # the whole plan is known


def test_run_writes_a_run_directory(tmp_path):
    result = synthloop("run", tiny_config(tmp_path), "--runs-dir", tmp_path / "runs", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "gaussian"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert len(manifest["iterations"]) == 4
    assert "spent 600 of 600 samples" in result.stdout
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["provenance"]["packages"]["numpy"]
    # what was accepted but not kept (paid for, unused) is said, and agrees with the records
    metrics = [json.loads((run_dir / f"iter-{t:04d}" / "metrics.json").read_text()) for t in range(4)]
    accepted = sum(m["n_accepted"] for m in metrics)
    unkept = sum(m["n_accepted"] - m["n_selected"] for m in metrics)
    assert unkept > 0 and f"{unkept} of {accepted} accepted candidates" in " ".join(result.stdout.split())
    # A second run of the same name refuses to overwrite silently.
    again = synthloop("run", tiny_config(tmp_path), "--runs-dir", tmp_path / "runs", cwd=tmp_path)
    assert again.returncode == 1 and "already holds a run" in again.stderr


def test_compare_writes_table_and_plot(tmp_path):
    out = tmp_path / "cmp"
    result = synthloop("compare", tiny_config(tmp_path), "--out", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "compare.json").read_text())
    assert [r["schedule"] for r in summary["rows"]] == ["constant", "exponential"]
    assert all(r["seeds"] == 2 and r["budget_used"] == pytest.approx(1.0) for r in summary["rows"])
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| exponential" in (out / "table.md").read_text()
    only = synthloop("compare", tiny_config(tmp_path), "--out", tmp_path / "one", "--schedules", "constant",
                     "--seeds", "1", cwd=tmp_path)
    assert only.returncode == 0, only.stderr
    assert len(json.loads((tmp_path / "one" / "compare.json").read_text())["trajectories"]) == 1


BAD: dict[str, tuple[dict[str, object], str]] = {
    "unknown key": ({"budget__totl": 5}, "budget.totl: unknown key"),
    "wrong type": ({"budget__total": "lots"}, "budget.total: Input should be a valid number"),
    "negative budget": ({"budget__total": -5}, "budget.total: Input should be greater than 0"),
    "zero growth": ({"schedule": {"kind": "exponential", "growth": 0, "n0": 10}},
                    "schedule.exponential.growth: Input should be greater than 0"),
    "negative growth": ({"schedule": {"kind": "exponential", "growth": -1.5, "n0": 10}},
                        "schedule.exponential.growth"),
    "empty schedule list": ({"schedule": {"kind": "explicit", "values": []}},
                            "schedule.explicit.values: List should have at least 1 item"),
    "unknown schedule kind": ({"schedule": {"kind": "cosine", "n0": 10}}, "schedule.kind: unknown kind 'cosine'; allowed: "),
    "unknown task kind": ({"task": {"kind": "sudoku"}}, "task.kind: unknown kind 'sudoku'; allowed: " + ", ".join(sorted(FAMILIES))),
    "task field": ({"task__sigma": 0}, "task.sigma: Input should be greater than 0"),
    "auto n0 without iterations": ({"schedule": {"kind": "constant", "n0": "auto"}}, "needs 'iterations'"),
    "missing section": ({"budget": DELETE}, "budget: required field is missing"),
    "unknown cost stage": ({"budget__costs": {"sampling": 1.0}}, "unknown stage 'sampling'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_gives_one_line_and_exit_2(tmp_path, case):
    overrides, message = BAD[case]
    result = synthloop("plan", tiny_config(tmp_path, **overrides), cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("synthloop: config error: ")
    assert message in lines[0], lines[0]


@pytest.mark.parametrize("text, message", [
    ("name: [unclosed\n", "not valid YAML at line"),
    ("- just\n- a list\n", "must be a mapping of sections"),
])
def test_unreadable_config_gives_one_line_and_exit_2(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = synthloop("run", path, cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr


def test_missing_config_file(tmp_path):
    result = synthloop("plan", tmp_path / "nope.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "cannot read config" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_compare_schedule(tmp_path):
    result = synthloop("compare", tiny_config(tmp_path), "--schedules", "cosine", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown schedule 'cosine'; the config names constant, exponential" in result.stderr


@pytest.mark.parametrize("name", ["..", "."])
def test_a_run_named_dot_or_dotdot_writes_nothing_and_keeps_the_users_config(tmp_path, name):
    # `name: ".."` used to pass the name pattern: the run went into the parent of --runs-dir (here the
    # working directory) and overwrote the user's own config.yaml there.
    own = b"# the user's own config\nname: mine\n"
    (tmp_path / "config.yaml").write_bytes(own)
    (tmp_path / "cfg").mkdir()
    path = tiny_config(tmp_path / "cfg", name=name)  # cfg/config.yaml, beside the user's own
    for args in (("run", path), ("run", path, "--runs-dir", tmp_path / "runs")):
        result = synthloop(*args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert f"name: {name!r} is not a folder name" in result.stderr
    assert (tmp_path / "config.yaml").read_bytes() == own
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg", "config.yaml"]


def test_compare_runs_stay_inside_out(tmp_path):
    path = tiny_config(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["compare"]["schedules"] = {"../../escaped": config["compare"]["schedules"]["constant"]}
    path.write_text(yaml.safe_dump(config))
    result = synthloop("compare", path, "--out", tmp_path / "out" / "cmp", cwd=tmp_path)
    assert result.returncode == 2
    assert "compare.schedules: schedule names name folders: '../../escaped' is not a folder name" in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "escaped").exists()


def test_version_and_short_help() -> None:
    from synthloop import __version__

    version = synthloop("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"synthloop {__version__}"
    for args in (("-h",), ("plan", "-h"), ("run", "-h")):
        shown = synthloop(*args)
        assert shown.returncode == 0 and "Usage:" in shown.stdout, args
