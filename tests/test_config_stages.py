"""Configs of the open stages, through the real command line: a price nobody can pay, an unknown
stage, a wrong policy / selector / mix kind are one-line errors (exit 2); a batch selector with no
mode runs generate-then-select instead of spending the budget for nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

CRASH = Path(__file__).parent / "data" / "crash.yaml"


def synthloop(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "synthloop.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=120, check=False, cwd=cwd)


def write(tmp_path: Path, **sections: object) -> Path:
    config = yaml.safe_load(CRASH.read_text())
    config.update(sections)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


BAD: dict[str, tuple[dict[str, object], str]] = {
    "priced-unreported": ({"budget": {"total": 800, "costs": {"generate": {"tokens": 5}, "train": 1.0}}},
                          "budget.costs.generate.tokens"),
    "unknown-stage": ({"budget": {"total": 800, "costs": {"generat": 0.1, "train": 1.0}}}, "generat"),
    "stage-nobody-reports": ({"budget": {"total": 800, "costs": {"judge": 0.5, "train": 1.0}}},
                             "budget.costs.judge"),
    "policy-kind": ({"prompt_policy": {"kind": "boosting"}}, "prompt_policy.kind"),
    "policy-field": ({"prompt_policy": {"kind": "weighted", "eta": -1}}, "prompt_policy.weighted.eta"),
    "selector-kind": ({"selector": {"kind": "top-k"}}, "selector.kind"),
    "mix-kind": ({"training_set": {"kind": "mixed", "alpha": 0.2}}, "training_set.kind"),
    "mix-alpha": ({"training_set": {"kind": "mix", "alpha": 1.0}}, "training_set.mix.alpha"),
    "accept-top-k": ({"selector": {"kind": "top_k"}, "loop": {"mode": "accept"}}, "loop.mode"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_stage_config_is_one_line_naming_the_field(case: str, tmp_path: Path):
    sections, field = BAD[case]
    out = synthloop("plan", write(tmp_path, **sections))
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0] and "Traceback" not in out.stderr, out.stderr


@pytest.mark.parametrize("sections,field", [
    ({"prompt_policy": {"kind": "weighted"}}, "prompt_policy.kind"),  # the gaussian task has no pool
    ({"training_set": {"kind": "mix", "alpha": 0.3}}, "training_set.kind"),  # nor an outside source
], ids=["weighted-without-pool", "mix-without-source"])
def test_a_policy_the_task_cannot_serve_is_refused_before_any_work(sections, field, tmp_path: Path):
    out = synthloop("run", write(tmp_path, **sections), "--runs-dir", tmp_path / "runs")
    assert out.returncode == 2, out.stderr
    assert field in out.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "runs" / "crash" / "iter-0000").exists()


def test_top_k_with_no_mode_runs_generate_then_select(tmp_path: Path):
    config = write(tmp_path, selector={"kind": "top_k"}, loop={"chunk_size": 150, "oversample": 3.0})
    out = synthloop("run", config, "--runs-dir", tmp_path / "runs")
    assert out.returncode == 0, out.stderr
    run_dir = tmp_path / "runs" / "crash"
    summaries = [json.loads((run_dir / f"iter-{t:04d}" / "metrics.json").read_text()) for t in range(8)]
    assert all(m["n_selected"] == m["n_target"] > 0 for m in summaries)
    assert all(m["n_generated"] == pytest.approx(3 * m["n_target"], abs=1) for m in summaries)
    assert summaries[-1]["cumulative_cost"] <= 800
