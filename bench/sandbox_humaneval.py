"""The sandbox on HumanEval: correctness of the verdicts and throughput against a bare subprocess.

In one process:
- all 164 canonical solutions through :class:`~synthloop.tasks.code.CodeVerifier` (must all PASS);
- 164 stubs whose body is ``return None`` (must all FAIL; none may be an ERROR);
- throughput, interleaved repeats: the same 164 canonical programs (prompt, solution, tests, token
  print) through the sandbox and through a bare ``subprocess.run([python3, file])`` with the same
  number of programs in flight; programs per second for each and the ratio sandbox / bare.

    python bench/sandbox_humaneval.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from synthloop.records import Candidates, Verdict
from synthloop.sandbox import Limits, Sandbox, new_token
from synthloop.tasks.code import CodeVerifier, build_program, load_humaneval, prompts_for

PYTHON = "/usr/bin/python3"


def verdict_counts(sandbox: Sandbox, completions: list[str]) -> tuple[dict[str, int], float, list[str]]:
    problems = load_humaneval("all")
    prompts = prompts_for(problems, range(len(problems)))
    candidates = Candidates(samples={"completion": completions}, prompt_index=prompts.index,
                            usage={"samples": np.ones(len(problems))})
    begin = time.perf_counter()
    scores = CodeVerifier(sandbox=sandbox).verify(candidates, prompts)
    seconds = time.perf_counter() - begin
    counts = {v.name: int(np.sum(scores.verdict == v)) for v in Verdict}
    odd = [f"{problems[i].task_id}: {(scores.detail or [''] * len(problems))[i]}"
           for i in range(len(problems)) if scores.verdict[i] != scores.verdict[0]]
    return counts, seconds, odd


def canonical_programs() -> tuple[list[str], list[str]]:
    tokens = [new_token() for _ in load_humaneval("all")]
    programs = [build_program(p.prompt, p.canonical_solution, p.test, p.entry_point, t)
                for p, t in zip(load_humaneval("all"), tokens, strict=True)]
    return programs, tokens


def bare_run(programs: list[str], tokens: list[str], *, workers: int, timeout: float) -> float:
    """The same programs as plain subprocesses (no namespaces, no limits); returns seconds."""
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i, program in enumerate(programs):
            path = Path(folder) / f"p{i}.py"
            path.write_text(program)
            paths.append(path)

        def one(k: int) -> bool:
            out = subprocess.run([PYTHON, "-I", "-B", str(paths[k])], capture_output=True, timeout=timeout,
                                 check=False, cwd=folder)
            return out.returncode == 0 and tokens[k] in out.stdout.decode().splitlines()

        begin = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            passed = list(pool.map(one, range(len(programs))))
        seconds = time.perf_counter() - begin
    assert all(passed), "a canonical solution failed outside the sandbox"
    return seconds


def sandbox_run(sandbox: Sandbox, programs: list[str], tokens: list[str]) -> float:
    begin = time.perf_counter()
    results = sandbox.run_many(programs, tokens=tokens)
    seconds = time.perf_counter() - begin
    assert all(r.status == "passed" for r in results), [r for r in results if r.status != "passed"][:2]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    sandbox = Sandbox(limits=Limits(timeout_s=args.timeout), workers=args.workers)
    problems = load_humaneval("all")
    canonical, seconds, odd = verdict_counts(sandbox, [p.canonical_solution for p in problems])
    print(f"canonical solutions: {canonical} in {seconds:.2f} s; not PASS: {odd}")
    stubs, seconds, odd = verdict_counts(sandbox, ["    return None\n"] * len(problems))
    print(f"return-None stubs: {stubs} in {seconds:.2f} s; not FAIL: {odd}")
    programs, tokens = canonical_programs()
    rows = []
    for repeat in range(args.repeats):
        bare = bare_run(programs, tokens, workers=args.workers, timeout=args.timeout)
        boxed = sandbox_run(sandbox, programs, tokens)
        rows.append({"bare_per_s": len(programs) / bare, "sandbox_per_s": len(programs) / boxed,
                     "ratio": bare / boxed})
        print(f"repeat {repeat}: bare {rows[-1]['bare_per_s']:.1f} programs/s, sandbox "
              f"{rows[-1]['sandbox_per_s']:.1f} programs/s, ratio sandbox/bare {rows[-1]['ratio']:.3f}")
    summary = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    print(json.dumps({"canonical": canonical, "stubs": stubs, "workers": args.workers, "programs": len(programs),
                      "repeats": args.repeats, "median": summary}, indent=1))


if __name__ == "__main__":
    main()
