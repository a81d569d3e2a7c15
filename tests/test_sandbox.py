"""The sandbox's verdicts and limits, its command, and the HumanEval task and verifier built on it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from synthloop.configs import ConfigError, family_for, parse_config
from synthloop.records import Candidates, Prompts, Verdict
from synthloop.sandbox import Limits, Sandbox, new_token
from synthloop.tasks.code import (
    CodeVerifier,
    HumanEvalTask,
    build_program,
    load_humaneval,
    mean_pass_at_k,
    pass_at_k,
    prompts_for,
    split_indices,
)
from synthloop.testing import check_evaluation, check_task, check_verifier

ROOT = Path(__file__).resolve().parents[1]
works = os.geteuid() == 0 and Sandbox().check().status == "passed"
needs_sandbox = pytest.mark.skipif(not works, reason="needs root (to drop to throwaway uids) and user namespaces")
FAST = Limits(timeout_s=2.0, memory_mb=256)


# -- pass@k ---------------------------------------------------------------------------------------


def exact_pass_at_k(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@given(st.integers(1, 60).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_is_the_unbiased_estimator(nck: tuple[int, int, int]) -> None:
    n, c, k = nck
    assert pass_at_k(n, c, k) == pytest.approx(exact_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_is_stable_where_binomials_overflow_floats() -> None:
    value = pass_at_k(2000, 3, 100)  # C(2000, 100) is about 1e187: far past the exact ratio's float range
    assert value == pytest.approx(exact_pass_at_k(2000, 3, 100), rel=1e-9) and 0.14 < value < 0.15
    assert pass_at_k(5, 1, 1) == pytest.approx(0.2)
    assert mean_pass_at_k([4, 4], [4, 0], 2) == pytest.approx(0.5)


@pytest.mark.parametrize(("n", "c", "k"), [(3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)])
def test_pass_at_k_refuses_impossible_counts(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError, match="pass@k needs"):
        pass_at_k(n, c, k)


# -- the split ------------------------------------------------------------------------------------


def test_the_split_is_fixed_disjoint_and_covers_humaneval() -> None:
    train = load_humaneval("train")
    held_out = load_humaneval("held_out")
    assert len(train) == 100 and len(held_out) == 64 and len(load_humaneval("all")) == 164
    assert not {p.task_id for p in train} & {p.task_id for p in held_out}
    assert [p.task_id for p in load_humaneval("held_out")] == [p.task_id for p in held_out]
    assert split_indices(164, held_out_size=64, split_seed=1) != split_indices(164, held_out_size=64, split_seed=0)
    with pytest.raises(ValueError, match="held_out_size"):
        split_indices(10, held_out_size=11, split_seed=0)


# -- the sandbox ----------------------------------------------------------------------------------


def test_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        Limits(timeout_s=float("nan"))
    with pytest.raises(ValueError, match="memory_mb"):
        Limits(memory_mb=0)
    assert "--nproc=32" in Limits().prlimit_args() and "--core=0" in Limits().prlimit_args()
    assert "--cpu=11:12" in Limits(timeout_s=10).prlimit_args()


@needs_sandbox
def test_results_come_back_in_order_and_the_token_decides() -> None:
    token = new_token()
    programs = [f"print({i})\nprint({token!r})" if i % 2 else f"print({i})" for i in range(8)]
    results = Sandbox(limits=FAST, workers=4).run_many(programs, tokens=[token] * 8)
    assert [r.stdout_tail.splitlines()[0] for r in results] == [str(i) for i in range(8)]
    assert [r.status for r in results] == ["failed", "passed"] * 4
    assert all(r.exit_code == 0 for r in results)


@needs_sandbox
def test_a_token_printed_with_other_text_on_its_line_is_not_a_pass() -> None:
    token = new_token()
    assert Sandbox(limits=FAST).run(f"print('x' + {token!r})", token=token).status == "failed"


def test_a_sandbox_that_cannot_start_is_an_error_not_a_failure(tmp_path: Path) -> None:
    for bwrap in ("/usr/bin/false", str(tmp_path / "no-such-bwrap")):
        result = Sandbox(limits=FAST, bwrap=bwrap).run("print(1)")
        assert result.status == "error" and not result.started, result
        assert result.isolation == "bubblewrap" and "--unisolated" in result.detail


@needs_sandbox
def test_unisolated_runs_are_labelled_in_every_result() -> None:
    results = Sandbox(limits=FAST, isolation="unisolated", workers=2).run_many(["print(1)", "import sys; sys.exit(2)"])
    assert [r.status for r in results] == ["passed", "failed"]
    assert all(r.isolation == "unisolated" and r.detail.startswith("[unisolated]") for r in results)


@needs_sandbox
def test_without_namespaces_a_daemon_is_swept_by_its_uid() -> None:
    marker = f"synthloop-daemon-{new_token()}"
    daemon = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
              f"        os.execv('/bin/sh', ['/bin/sh', '-c', 'sleep 30; : {marker}'])\n    os._exit(0)\n"
              "time.sleep(0.3)\n")
    assert Sandbox(limits=FAST, isolation="unisolated").run(daemon).status == "passed"
    alive = [p for p in Path("/proc").iterdir() if p.name.isdigit() and marker.encode() in _cmdline(p)]
    assert alive == []


def _cmdline(process: Path) -> bytes:
    try:
        return (process / "cmdline").read_bytes()
    except OSError:
        return b""


def test_an_unknown_isolation_is_refused() -> None:
    with pytest.raises(ValueError, match="isolation"):
        Sandbox(isolation="none")  # type: ignore[arg-type]


# -- the command ----------------------------------------------------------------------------------


def synthloop(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "synthloop.cli", *args], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


@needs_sandbox
@pytest.mark.parametrize(("source", "status", "code"), [
    ("print('hello')", "passed", 0), ("raise SystemExit(4)", "failed", 1),
    ("import time\ntime.sleep(30)", "timeout", 1), ("x = bytearray(2**31)", "memory", 1)])
def test_sandbox_run_prints_one_json_line(tmp_path: Path, source: str, status: str, code: int) -> None:
    program = tmp_path / "p.py"
    program.write_text(source)
    out = synthloop("sandbox", "run", str(program), "--timeout", "1.5", "--memory-mb", "256")
    assert out.returncode == code, out.stderr
    (line,) = out.stdout.strip().splitlines()
    result = json.loads(line)
    assert result["status"] == status and {"exit_code", "seconds", "stdout_tail", "stderr_tail"} <= set(result)
    assert result["seconds"] < 10


def test_sandbox_run_rejects_bad_input_in_one_line(tmp_path: Path) -> None:
    missing = synthloop("sandbox", "run", str(tmp_path / "missing.py"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "No such file" in missing.stderr
    (tmp_path / "p.py").write_text("print(1)")
    bad = synthloop("sandbox", "run", str(tmp_path / "p.py"), "--timeout", "0")
    assert bad.returncode == 2 and "timeout_s" in bad.stderr


# -- the verifier and the task ----------------------------------------------------------------------


def candidates_for(completions: list[str]) -> Candidates:
    n = len(completions)
    return Candidates(samples={"completion": completions}, prompt_index=np.arange(n), usage={"samples": np.ones(n)})


@needs_sandbox
def test_the_verifier_maps_each_outcome_to_its_verdict() -> None:
    problem = load_humaneval("all")[0]
    completions = [problem.canonical_solution, "    return None\n", "    return not " + problem.canonical_solution.strip()[7:] + "\n",
                   "    while True:\n        pass\n", "    x = bytearray(2**31)\n", "    import os\n    os._exit(0)\n",
                   problem.canonical_solution + "\ndef helper():\n    while True: pass\n"]
    prompts = prompts_for([problem], [0] * len(completions))
    scores = check_verifier(CodeVerifier(sandbox=Sandbox(limits=FAST)), candidates_for(completions), prompts)
    assert scores.verdict.tolist() == [Verdict.PASS] + [Verdict.FAIL] * 5 + [Verdict.PASS]  # the helper is cut off
    assert scores.reward.tolist() == [1.0, 0, 0, 0, 0, 0, 1.0]
    details = list(scores.detail or [])
    assert details[3].startswith("timeout") and details[4].startswith("memory")
    assert "AssertionError" in details[1] and "without the pass token" in details[5]


def test_a_broken_sandbox_gives_error_verdicts_with_nan_rewards() -> None:
    problem = load_humaneval("all")[0]
    verifier = CodeVerifier(sandbox=Sandbox(limits=FAST, bwrap="/usr/bin/false"))
    scores = check_verifier(verifier, candidates_for([problem.canonical_solution]), prompts_for([problem], [0]))
    assert scores.verdict.tolist() == [Verdict.ERROR] and np.isnan(scores.reward[0])
    assert (scores.detail or [""])[0].startswith("sandbox error")


def test_the_program_runs_the_tests_then_prints_the_token() -> None:
    program = build_program("def f():\n", "    return 1\n", "def check(c):\n    assert c() == 1\n", "f", "TOKEN")
    assert program.index("check(f)") < program.index("print('TOKEN', flush=True)")


class Answers:
    """A stand-in generator: the canonical body for held-out problems whose index is in ``right``."""

    def __init__(self, right: set[int] | None = None) -> None:
        self.right = right

    def max_usage_per_draw(self) -> dict[str, float]:
        return {"samples": 1.0}

    def generate(self, model: Any, prompts: Prompts, *, rng: np.random.Generator) -> Candidates:
        good = [self.right is None or int(i) in self.right for i in prompts.index]
        return candidates_for([s if ok else "    return None\n" for s, ok in zip(prompts.items["solution"], good,
                                                                                strict=True)])


@needs_sandbox
def test_the_task_reports_pass_at_k_on_the_held_out_split() -> None:
    verifier = CodeVerifier(sandbox=Sandbox(limits=FAST))
    task = HumanEvalTask(evaluator=Answers(), held_out_size=6, verifier=verifier, samples_per_problem=2, ks=(1, 2))
    check_task(task)
    assert check_evaluation(task, None) == {"error_rate": 0.0, "pass@1": 1.0, "pass@2": 1.0}
    task.evaluator = Answers(right={0, 1, 2})
    metrics = task.evaluate(None, rng=np.random.default_rng(0))
    assert metrics["pass@1"] == pytest.approx(0.5) and metrics["pass@2"] == pytest.approx(0.5)
    assert task.prompts_at(np.array([3, 3])).items["task_id"][0] == task.train_[3].task_id


def test_the_task_refuses_ks_past_its_samples() -> None:
    with pytest.raises(ValueError, match="samples_per_problem"):
        HumanEvalTask(evaluator=Answers(), samples_per_problem=2, ks=(1, 4))


# -- the family -----------------------------------------------------------------------------------


def code_config(**task: Any) -> dict[str, Any]:
    return {"name": "code", "seed": 0, "task": {"kind": "code", **task}, "model": {"kind": "tiny"},
            "generator": {"kind": "hf", "max_new_tokens": 64}, "learner": {"kind": "sft", "lr": 1e-3}, "selector": {"kind": "passed"},
            "schedule": {"kind": "constant", "n0": 4, "iterations": 2}, "budget": {"total": 100, "unit": "samples",
                                                                  "costs": {"generate": 1.0}}}


def test_the_code_family_validates_and_plans_without_a_model() -> None:
    config = parse_config(code_config(samples_per_problem=4, ks=[1, 4], timeout=3.0))
    family = family_for(config)
    settings = family.validate(config)
    assert settings.task.ks == [1, 4] and "\ndef" in settings.generator.stop_strings
    usage = family.usage_per_draw(settings)
    assert usage["samples"] == 1.0 and 100 < usage["prompt_tokens"] < 400


@pytest.mark.parametrize(("task", "message"), [({"ks": [1, 4]}, "ks"), ({"held_out_size": 164}, "held_out_size"),
                                               ({"isolation": "none"}, "isolation")])
def test_the_code_family_names_the_bad_field(task: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=f"task.*{message}"):
        parse_config(code_config(**task))
