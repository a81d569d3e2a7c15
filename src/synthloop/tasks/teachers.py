"""Teachers for active synthetic data generation: generators that write new training examples
conditioned on seed examples, and judges that rate a student's answers.

- :class:`SeedTask` is a math task whose prompts carry their seed example (question, worked
  solution) and its *kind*: the gsm_symbolic template id, or the term and digit counts of an
  arithmetic problem.
- :class:`ProgrammaticTeacher` is the **programmatic teacher**: not a language model. For a seed it
  runs reasoning-gym's generator of the seed's kind with fresh values (mode ``new_question``: the
  same gsm_symbolic template, or the same number of terms and digits) and writes the problem with
  its worked solution; in mode ``new_answer`` it writes the seed's own worked solution. It stands in
  for a strong teacher where no offline model is stronger than the student (a CPU here). Its usage
  is counted in text tokens (:func:`text_tokens`): input = the teacher prompt an LLM teacher would
  read for that seed, output = the question and solution it writes, so teacher-token budgets apply.
- :class:`LLMTeacher` wraps any :class:`~synthloop.protocols.Generator` with a fixed teacher model:
  a local Hugging Face model (``models.hf.HFGenerator`` with its own model) or a model behind an
  OpenAI-compatible endpoint (``engines.openai_generator.OpenAIGenerator``, which ignores the model
  it gets). It reads the teacher's output back as ``Question: ... Answer: ... #### <answer>``, and
  keeps the generator's extra columns (a failed request's ``request_error``).
- :class:`TeacherVerifier` checks a teacher's example: in ``new_answer`` mode the final answer
  against the seed's gold; in ``new_question`` mode (no gold exists) that the solution ends in a
  readable final answer equal to the answer the teacher stated.
- :class:`ProgrammaticJudge` and :class:`LLMJudge` rate a student's answer (the judge selectors).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from random import Random
from typing import Any

import numpy as np
import numpy.typing as npt

from synthloop.protocols import Generator, Verifier
from synthloop.records import Candidates, Prompts, Scores, Verdict
from synthloop.tasks.math import (
    MARKER,
    Level,
    MathTask,
    MathVerifier,
    final_answer,
    question_prompt,
    worked_solution,
)

_TOKEN = re.compile(r"\w+|[^\w\s]")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
GSM_SUFFIX = " Give the result as your final answer. Do not include units."
MODES = ("new_question", "new_answer")

TEACHER_PROMPT = {
    "new_question": ("You write training problems for a student. Here is an example problem and its "
                     "worked solution.\n\nQuestion: {question}\nAnswer: {solution}\n\nWrite one new problem "
                     "of the same kind with different values, then its worked solution, in the same format "
                     "(Question: ... Answer: ... #### <final answer>).\n"),
    "new_answer": ("Solve the problem step by step and end with #### <final answer>.\n\n"
                   "Question: {question}\nAnswer:"),
}
JUDGE_PROMPT = ("Rate the student's answer from 0 (wrong) to 10 (fully right and well reasoned).\n\n"
                "Question: {question}\nReference solution: {solution}\nStudent answer: {answer}\n\nRating:")


def text_tokens(text: str) -> int:
    """Tokens of a text as the programmatic teacher counts them: words, numbers and punctuation marks.

    >>> text_tokens("Tom has 12 apples, and eats 3.")  # Tom has 12 apples , and eats 3 .
    9
    """
    return len(_TOKEN.findall(text))


def teacher_prompt(question: str, solution: str, mode: str) -> str:
    return TEACHER_PROMPT[mode].format(question=question, solution=solution)


# -- the seed pool --------------------------------------------------------------------------------


def seed_kinds(level: Level, *, size: int, seed: int) -> list[str]:
    """The kind of each of the ``size`` problems ``load_problems(level, size=size, seed=seed)`` gives,
    as JSON: ``{"dataset": "gsm_symbolic", "template": 11}`` or ``{"dataset": "chain_sum", "params":
    {...the level's options with min/max terms and digits set to the problem's own...}}``."""
    import reasoning_gym

    dataset = reasoning_gym.create_dataset(level.dataset, size=size, seed=seed, **dict(level.params))
    kinds = []
    for i, entry in enumerate(dataset):
        meta = entry.get("metadata", {})
        if level.dataset == "gsm_symbolic":
            template = meta.get("template", getattr(dataset, "task_indices", [None] * size)[i])
            kinds.append(json.dumps({"dataset": level.dataset, "template": int(template)}))
            continue
        params = dict(level.params)
        for name, key in (("terms", "num_terms"), ("digits", "num_digits")):
            if key in meta:
                params[f"min_{name}"] = params[f"max_{name}"] = int(meta[key])
        kinds.append(json.dumps({"dataset": level.dataset, "params": params}, sort_keys=True))
    return kinds


class SeedTask:
    """A :class:`~synthloop.tasks.math.MathTask` whose training pool is the seed pool.

    Its prompts add ``question``, ``solution`` and ``seed_kind`` columns, which teachers and scorers
    read; ``verifier`` is the teacher's check; evaluation is the math task's (held-out accuracy).
    """

    def __init__(self, task: MathTask, *, mode: str, verifier: Verifier | None = None,
                 extra_metrics: Callable[[Any, Prompts], Mapping[str, float]] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.task = task
        self.mode = mode
        self._verifier: Verifier = verifier or TeacherVerifier(mode=mode)
        self.extra_metrics = extra_metrics  # more held-out metrics of the model (gold-solution loss)
        kinds: list[str] = []
        for k, level in enumerate(task.levels):
            seeds = np.random.SeedSequence(task.data_seed, spawn_key=(k,)).generate_state(3)
            kinds += seed_kinds(level, size=task.train_size, seed=int(seeds[0]))  # as build_pools draws them
        self.kinds_ = kinds

    @property
    def name(self) -> str:
        return "active-" + self.task.name

    @property
    def verifier(self) -> Verifier:
        return self._verifier

    @property
    def primary_metric(self) -> str:
        return self.task.primary_metric

    @property
    def higher_is_better(self) -> bool:
        return self.task.higher_is_better

    @property
    def pool_size(self) -> int:
        return self.task.pool_size

    def prompts_at(self, indices: npt.NDArray[np.int64]) -> Prompts:
        base = self.task.prompts_at(indices)
        pool = self.task.pools_.train
        items = dict(base.items)
        items["question"] = [pool[int(i)].question for i in indices]
        items["solution"] = [pool[int(i)].solution for i in indices]
        items["seed_kind"] = [self.kinds_[int(i)] for i in indices]
        return Prompts(index=base.index, items=items)

    def sample_prompts(self, n: int, *, rng: np.random.Generator) -> Prompts:
        return self.prompts_at(rng.choice(self.pool_size, size=n).astype(np.int64))

    def evaluate(self, model: Any, *, rng: np.random.Generator) -> dict[str, float]:
        metrics = self.task.evaluate(model, rng=rng)
        if self.extra_metrics is not None:
            held_out = self.task.held_out_prompts()
            problems = self.task.pools_.held_out
            held_out = Prompts(held_out.index, {**held_out.items, "solution": [p.solution for p in problems]})
            metrics.update(self.extra_metrics(model, held_out))
        return metrics


# -- the programmatic teacher ---------------------------------------------------------------------


def fresh_problem(kind: Mapping[str, Any], seed: int) -> tuple[str, str, str]:
    """(question, worked solution, answer) of a new problem of ``kind``, its values drawn from ``seed``."""
    import reasoning_gym

    if kind["dataset"] == "gsm_symbolic":
        generators = reasoning_gym.create_dataset("gsm_symbolic", size=1, seed=0).generators
        entry = generators[int(kind["template"])](Random(seed), 1.0)
        entry["question"] += GSM_SUFFIX  # as reasoning-gym's dataset words every question
    else:
        entry = reasoning_gym.create_dataset(kind["dataset"], size=1, seed=seed, **kind["params"])[0]
    return str(entry["question"]), worked_solution(entry), str(entry["answer"]).strip()


@dataclass(frozen=True)
class ProgrammaticTeacher:
    """The programmatic teacher (module docstring): new examples of the seed's kind, with solutions.

    ``max_completion_tokens`` bounds what one example may write; a fresh problem longer than that is
    redrawn (at most ``redraws`` times), and a seed whose kind never fits gets an empty example (the
    verifier's ERROR) instead of a broken bound. ``style`` is the math task's prompt style.
    """

    mode: str = "new_question"
    max_prompt_tokens: int = 512
    max_completion_tokens: int = 512
    style: str = "few_shot"
    redraws: int = 16

    def max_usage_per_draw(self) -> dict[str, float]:
        prompt, completion = float(self.max_prompt_tokens), float(self.max_completion_tokens)
        return {"samples": 1.0, "tokens": prompt + completion, "prompt_tokens": prompt,
                "completion_tokens": completion}

    def generate(self, model: Any, prompts: Prompts, *, rng: np.random.Generator) -> Candidates:
        """``model`` (the student) is ignored: a teacher writes the same examples for any student."""
        rows = [self._example(prompts, i, int(s))
                for i, s in enumerate(rng.integers(0, 2**31 - 1, size=len(prompts)))]
        return teacher_candidates(prompts, rows, style=self.style, teacher="programmatic")

    def _example(self, prompts: Prompts, i: int, seed: int) -> tuple[str, str, str, int, int]:
        seed_question, seed_solution = prompts.items["question"][i], prompts.items["solution"][i]
        read = min(text_tokens(teacher_prompt(seed_question, seed_solution, self.mode)), self.max_prompt_tokens)
        if self.mode == "new_answer":
            return seed_question, seed_solution, prompts.items["answer"][i], read, text_tokens(seed_solution)
        kind = json.loads(prompts.items["seed_kind"][i])
        draws = np.random.default_rng(seed).integers(0, 2**31 - 1, size=self.redraws)
        for draw in draws:
            question, solution, answer = fresh_problem(kind, int(draw))
            written = text_tokens(question) + text_tokens(solution)
            if written <= self.max_completion_tokens:
                return question, solution, answer, read, written
        return "", "", "", read, 0


def teacher_candidates(prompts: Prompts, rows: Sequence[tuple[str, str, str, int, int]], *, style: str,
                       teacher: str, samples_drawn: npt.NDArray[np.float64] | None = None,
                       extra: Mapping[str, Any] | None = None) -> Candidates:
    """Candidates from (question, solution, answer, prompt tokens, completion tokens) rows: the
    learner trains on ``question_prompt`` -> ``completion`` as on the task's own problems.
    ``samples_drawn`` is the generator's own ``samples`` usage (0 for a request that failed; default
    1 a row); ``extra`` its extra columns, kept row for row."""
    questions = [r[0] for r in rows]
    chat = style == "chat"
    read = np.array([r[3] for r in rows], dtype=np.float64)
    written = np.array([r[4] for r in rows], dtype=np.float64)
    samples = {
        "prompt": list(prompts.items["prompt"]),
        "question_prompt": [q if chat else question_prompt(q) for q in questions],
        "completion": [r[1] if chat or not r[1] else " " + r[1] for r in rows],
        "question": questions, "answer": [r[2] for r in rows], "teacher": [teacher] * len(rows),
    }
    drawn = np.ones(len(rows)) if samples_drawn is None else np.asarray(samples_drawn, dtype=np.float64)
    usage = {"samples": drawn, "prompt_tokens": read, "completion_tokens": written, "tokens": read + written}
    return Candidates(samples=samples, prompt_index=prompts.index, usage=usage, extra=dict(extra or {}))


# -- a language-model teacher (local or behind an endpoint) ---------------------------------------


_QA = re.compile(r"Question:\s*(?P<q>.+?)\s*Answer:\s*(?P<a>.+)", re.S)


def parse_example(text: str) -> tuple[str, str, str] | None:
    """(question, solution, answer) from ``Question: ... Answer: ... #### x``; None if it is not one.

    >>> parse_example("Question: 2 + 3 = ?\\nAnswer: 2 + 3 = 5. #### 5")
    ('2 + 3 = ?', '2 + 3 = 5. #### 5', '5')
    """
    match = _QA.search(text)
    if match is None or MARKER not in match["a"]:
        return None
    solution = match["a"].strip().split("\nQuestion:")[0].strip()
    answer = final_answer(solution, require_marker=True)
    return (match["q"].strip(), solution, answer) if answer else None


@dataclass(frozen=True)
class LLMTeacher:
    """A language model as teacher: ``generator`` samples from ``teacher_model`` (never the student).

    A model behind an OpenAI-compatible endpoint is the same: ``generator`` is an
    ``OpenAIGenerator`` (which sends each row's ``prompt`` to the server and reports the server's
    ``usage``), ``teacher_model=None``. An output that is not a readable example becomes an empty
    one (the verifier's ERROR), its tokens still counted; a failed request is an empty example too,
    with the generator's ``request_error`` kept (``RequestErrors`` makes it an ERROR with the reason).
    """

    generator: Generator
    teacher_model: Any = None
    mode: str = "new_question"
    style: str = "few_shot"

    def max_usage_per_draw(self) -> Mapping[str, float]:
        return self.generator.max_usage_per_draw()

    def generate(self, model: Any, prompts: Prompts, *, rng: np.random.Generator) -> Candidates:
        texts = [teacher_prompt(q, s, self.mode) for q, s in
                 zip(prompts.items["question"], prompts.items["solution"], strict=True)]
        out = self.generator.generate(self.teacher_model, Prompts(prompts.index, {"prompt": texts}), rng=rng)
        rows = []
        for i, text in enumerate(out.samples["completion"]):
            if self.mode == "new_answer":
                answer = final_answer(text, require_marker=True) or ""
                parsed = (prompts.items["question"][i], text.strip() if answer else "", answer)
            else:
                parsed = parse_example(f"Question: {text}" if "Question:" not in text else text) or ("", "", "")
            rows.append((*parsed, int(out.usage["prompt_tokens"][i]), int(out.usage["completion_tokens"][i])))
        return teacher_candidates(prompts, rows, style=self.style, teacher="llm",
                                  samples_drawn=out.usage.get("samples"),
                                  extra={**out.extra, "teacher_prompt": texts})  # what the teacher read


# -- checking a teacher's examples ----------------------------------------------------------------


@dataclass(frozen=True)
class TeacherVerifier:
    """PASS when the example's final answer is right: against the seed's gold (``new_answer``) or
    the teacher's stated answer (``new_question``); an empty or unreadable example is an ERROR."""

    mode: str = "new_question"
    checker: MathVerifier = field(default_factory=lambda: MathVerifier(require_marker=True))

    def verify(self, candidates: Candidates, prompts: Prompts) -> Scores:
        own = self.mode == "new_question" and "answer" in candidates.samples
        golds = candidates.samples["answer"] if own else prompts.items["answer"]
        results = [self.checker.check(str(g), str(c)) if str(g).strip() else
                   (Verdict.ERROR, "the teacher wrote no readable example")
                   for g, c in zip(golds, candidates.samples["completion"], strict=True)]
        verdict = np.array([v for v, _ in results], dtype=np.int8)
        reward = np.where(verdict == Verdict.PASS, 1.0, np.where(verdict == Verdict.FAIL, 0.0, np.nan))
        return Scores(reward=reward, verdict=verdict, usage={"samples": np.ones(len(results))},
                      detail=[d for _, d in results])


# -- judges of a student's answer -----------------------------------------------------------------


@dataclass(frozen=True)
class ProgrammaticJudge:
    """A programmatic judge (not a language model): rating = half for the right final answer, half
    for the share of the reference solution's intermediate numbers the answer contains (partial
    credit for the right steps). It reads the judge prompt and writes ``"<r>/10"``: its tokens are
    counted as a judge model's would be, so judges pay for what they read."""

    checker: MathVerifier = field(default_factory=MathVerifier)
    max_prompt_tokens: int = 1024

    def usage_per_rating(self) -> Mapping[str, float]:
        out = 3.0
        return {"tokens": self.max_prompt_tokens + out, "prompt_tokens": float(self.max_prompt_tokens),
                "completion_tokens": out}

    def rate(self, prompts: Prompts, answers: list[str], *,
             rng: np.random.Generator) -> tuple[npt.NDArray[np.float64], Mapping[str, float]]:
        ratings, read = [], 0.0
        for question, solution, gold, answer in zip(prompts.items["question"], prompts.items["solution"],
                                                     prompts.items["answer"], answers, strict=True):
            right = self.checker.check(str(gold), answer)[0] == Verdict.PASS
            steps = set(_NUMBER.findall(solution.split(MARKER)[0]))
            found = steps & set(_NUMBER.findall(answer))
            ratings.append(round(10 * (0.5 * right + 0.5 * (len(found) / len(steps) if steps else right))) / 10)
            text = JUDGE_PROMPT.format(question=question, solution=solution, answer=answer)
            read += min(text_tokens(text), self.max_prompt_tokens)
        written = 3.0 * len(answers)
        return np.array(ratings, dtype=np.float64), {"tokens": read + written, "prompt_tokens": read,
                                                     "completion_tokens": written}


_RATING = re.compile(r"(\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class LLMJudge:
    """The teacher as judge: ``generator`` samples a rating 0..10 from ``judge_model``; a reply with
    no number in range is NaN (unrated)."""

    generator: Generator
    judge_model: Any = None

    def usage_per_rating(self) -> Mapping[str, float]:
        usage = self.generator.max_usage_per_draw()
        return {q: usage[q] for q in ("tokens", "prompt_tokens", "completion_tokens") if q in usage}

    def rate(self, prompts: Prompts, answers: list[str], *,
             rng: np.random.Generator) -> tuple[npt.NDArray[np.float64], Mapping[str, float]]:
        texts = [JUDGE_PROMPT.format(question=q, solution=s, answer=a) for q, s, a in
                 zip(prompts.items["question"], prompts.items["solution"], answers, strict=True)]
        out = self.generator.generate(self.judge_model, Prompts(prompts.index, {"prompt": texts}), rng=rng)
        ratings = []
        for text in out.samples["completion"]:
            match = _RATING.search(text)
            value = float(match[1]) if match else math.nan
            ratings.append(value / 10 if 0 <= value <= 10 else math.nan)
        usage = {q: float(np.sum(out.usage[q])) for q in self.usage_per_rating() if q in out.usage}
        return np.array(ratings, dtype=np.float64), usage
