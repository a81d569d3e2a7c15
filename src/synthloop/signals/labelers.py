"""beta-weak labelers: an outside source whose label for a prompt is correct at least a beta share
of the time (Escaping Collapse, section 2's weak labeler).

``ControlledLabeler`` takes the task's gold solution (``prompts.items["solution"]``) and, with
probability 1 - beta, replaces it by a plausible wrong one (``corrupt_math`` keeps the worked
solution's shape and changes its final number; ``corrupt_code`` mutates a reference function: a
flipped comparison, an off-by-one constant, a swapped operator, a wrong return). Each row draws from
its own seed, itself drawn from the rng in row order, so the labels are reproducible and
prefix-stable (the first k of ``generate`` on n prompts are those on the first k), which the
``mix`` training set relies on. Where every corruption is wrong (math: the final number differs),
P(correct) = beta exactly. A code mutant can be equivalent to the reference or slip past the
tests (16 of HumanEval's 164 first mutants pass them); with ``check`` set (the task's verifier, the
sandbox for code), a corrupted label that still passes is corrupted again, up to ``max_tries``.

``ModelLabeler`` makes any generator with a fixed model a labeler: a local Hugging Face model
through ``models.hf.HFGenerator``, or a server through an OpenAI-compatible client (any object with
the Generator protocol works); its beta is measured against gold with ``measure.measure_beta``.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np

from synthloop.protocols import Generator, Verifier
from synthloop.records import Candidates, Prompts, Verdict

MARKER = "####"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")

Corrupt = Callable[[str, np.random.Generator], str]


def wrong_number(text: str, rng: np.random.Generator) -> str:
    """A nearby, different number of the same kind (an integer stays an integer, >= 0 stays >= 0).

    >>> wrong_number("14", np.random.default_rng(0)) != "14"
    True
    """
    try:
        value = Decimal(text.replace(",", ""))
    except InvalidOperation:
        return text + "1"  # not a number: still a different answer
    spread = max(2, int(abs(value) // 10))
    step = int(rng.integers(1, spread + 1)) * (1 if rng.random() < 0.5 else -1)
    wrong = value + step
    if value >= 0 > wrong:
        wrong = value - step
    return str(wrong)


def corrupt_math(solution: str, rng: np.random.Generator) -> str:
    """The same worked solution with its final answer changed: the number after ``####`` and its
    last appearance in the working before it, so the wrong answer reads as the chain's result.

    >>> corrupt_math("12 + 5 = 17. 17 - 3 = 14. #### 14", np.random.default_rng(1))
    '12 + 5 = 17. 17 - 3 = 13. #### 13'
    """
    if MARKER not in solution:
        numbers = list(_NUMBER.finditer(solution))
        if not numbers:
            return f"{solution} {MARKER} 1".strip()
        last = numbers[-1]
        return solution[:last.start()] + wrong_number(last.group(), rng) + solution[last.end():]
    body, tail = solution.rsplit(MARKER, 1)
    answer = tail.strip().splitlines()[0].strip() if tail.strip() else ""
    wrong = wrong_number(answer, rng)
    at = body.rfind(answer) if answer else -1
    if at >= 0 and _whole_number_at(body, at, len(answer)):
        body = body[:at] + wrong + body[at + len(answer):]
    return f"{body}{MARKER} {wrong}"


def _whole_number_at(text: str, start: int, length: int) -> bool:
    before = text[start - 1] if start > 0 else " "
    after = text[start + length] if start + length < len(text) else " "
    return not (before.isdigit() or before == "." or after.isdigit())


_FLIPS = (("<=", "<"), (">=", ">"), ("==", "!="), ("!=", "=="), (" < ", " <= "), (" > ", " >= "),
          (" + ", " - "), (" - ", " + "), (" and ", " or "), (" or ", " and "))


def code_mutants(solution: str) -> list[str]:
    """Plausible wrong versions of a reference function, each one small edit, that still parse."""
    mutants = []
    for old, new in _FLIPS:
        at = solution.find(old)
        if at >= 0:
            mutants.append(solution[:at] + new + solution[at + len(old):])
    for match in re.finditer(r"(?<![\w.])(\d+)(?![\w.])", solution):  # off by one
        mutants.append(solution[:match.start()] + str(int(match.group()) + 1) + solution[match.end():])
    lines = solution.splitlines()
    returns = [i for i, line in enumerate(lines) if line.strip().startswith("return ")]
    if returns:
        i = returns[-1]
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        mutants.append("\n".join([*lines[:i], f"{indent}return None", *lines[i + 1:]]))
    return [m for m in mutants if m != solution and _parses(m)]


def _parses(source: str) -> bool:
    """Whether ``source`` parses as a module or as a function body (HumanEval's solutions are bodies)."""
    for text in (source, "def f():\n" + source):
        try:
            ast.parse(text)
        except SyntaxError:
            continue
        return True
    return False


def corrupt_code(solution: str, rng: np.random.Generator) -> str:
    """One of ``code_mutants``, chosen by ``rng`` (the function body returning None if none applies)."""
    mutants = code_mutants(solution)
    if not mutants:
        return "    return None\n"
    return mutants[int(rng.integers(len(mutants)))]


@dataclass(frozen=True)
class ControlledLabeler:
    """The gold solution, replaced by ``corrupt(gold, rng)`` with probability ``1 - beta``.

    ``extra["label_correct"]`` says which rows kept the gold solution (for measuring, never for
    training). It ignores the model the loop passes: it is outside signal.
    """

    beta: float
    corrupt: Corrupt = corrupt_math
    solution_key: str = "solution"
    carry: tuple[str, ...] = ("prompt", "question_prompt")  # prompt columns the learner reads
    check: Verifier | None = None  # re-corrupt a wrong label this verifier still passes
    max_tries: int = 8
    prefix: str = ""  # put before every label, so it reads as the student's completions do
    count_tokens: Callable[[str], int] | None = None  # the student's tokenizer: report label tokens too

    def __post_init__(self) -> None:
        if not 0 <= self.beta <= 1:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")

    def max_usage_per_draw(self) -> dict[str, float]:
        """One sample a label; with ``count_tokens``, also the generator's token quantities, which
        have no bound known ahead (the loop prices a mix's labels on the exact rows, never by this)."""
        if self.count_tokens is None:
            return {"samples": 1.0}
        return {"samples": 1.0, "tokens": math.inf, "prompt_tokens": math.inf, "completion_tokens": math.inf}

    def generate(self, model: Any, prompts: Prompts, *, rng: np.random.Generator) -> Candidates:
        if self.solution_key not in prompts.items:
            raise ValueError(f"a controlled labeler needs the gold solution in prompts.items"
                             f"[{self.solution_key!r}]; the prompts carry {sorted(prompts.items)}")
        seeds = rng.integers(0, 2**63 - 1, size=len(prompts))  # one per row, in row order: prefix-stable
        golds = [str(g) for g in prompts.items[self.solution_key]]
        rows = [np.random.default_rng(int(seed)) for seed in seeds]
        correct = np.array([row.random() < self.beta for row in rows], dtype=bool)
        texts = [gold if keep else self.corrupt(gold, row) for gold, keep, row in zip(golds, correct, rows, strict=True)]
        labels = self._candidates(prompts, texts, correct)
        for _ in range(self.max_tries if self.check is not None else 0):
            wrong = np.flatnonzero(~correct)
            assert self.check is not None
            slipped = wrong[self.check.verify(labels.take(wrong), prompts.take(wrong)).verdict == Verdict.PASS]
            if len(slipped) == 0:
                break
            for i in slipped:  # each row's own rng draws its next corruption: still prefix-stable
                texts[i] = self.corrupt(golds[i], rows[i])
            labels = self._candidates(prompts, texts, correct)
        return labels

    def _candidates(self, prompts: Prompts, texts: list[str], correct: np.ndarray) -> Candidates:
        samples: dict[str, Any] = {k: list(prompts.items[k]) for k in self.carry if k in prompts.items}
        samples["completion"] = [self.prefix + text for text in texts]
        return Candidates(samples=samples, prompt_index=prompts.index.copy(),
                          usage=self._usage(prompts, samples["completion"]), extra={"label_correct": correct.copy()})

    def _usage(self, prompts: Prompts, labels: list[str]) -> dict[str, np.ndarray]:
        """A sample per label; with a token counter, the same token quantities a generator reports:
        the prompt read (its ``prompt`` column) and the label written."""
        usage = {"samples": np.ones(len(labels))}
        if self.count_tokens is not None:
            read = [str(p) for p in prompts.items.get("prompt", [""] * len(labels))]
            usage["prompt_tokens"] = np.array([self.count_tokens(p) for p in read], dtype=np.float64)
            usage["completion_tokens"] = np.array([self.count_tokens(t) for t in labels], dtype=np.float64)
            usage["tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return usage


@dataclass(frozen=True)
class ModelLabeler:
    """Any generator with a model of its own as a labeler (a bigger local model, a served one).

    The loop's model is ignored. Prefix-stable when its generator decodes each row independently of
    the others (greedy decoding); its beta is whatever it is: measure it with ``measure_beta``.
    """

    generator: Generator
    model: Any = field(repr=False)

    def max_usage_per_draw(self) -> Mapping[str, float]:
        return self.generator.max_usage_per_draw()

    def generate(self, model: Any, prompts: Prompts, *, rng: np.random.Generator) -> Candidates:
        return self.generator.generate(self.model, prompts, rng=rng)
