"""Math word problems with checkable final answers (Spend Wisely section 5.2, STaR).

Problems come from reasoning-gym's procedural generators (no download): ``gsm_symbolic`` (GSM8K
templates with GSM8K-style chains of thought) and graded arithmetic (``chain_sum``,
``basic_arithmetic``) whose difficulty levels play the role of GSM-Symbolic / p1 / p2.

Prompts are few-shot chains of thought::

    Question: <question>
    Answer: <worked solution> #### <final answer>

The verifier reads the final answer (after the last ``####``; with ``require_marker=False`` the last
number of the output when there is no marker) and compares it with the gold answer using
math-verify. Anything it cannot decide (no final answer, an unparseable gold or model answer, a
checker timeout or crash) is an ERROR verdict with a NaN reward, never a 0.

Escaping Collapse's loop needs three more things, all optional: a filter other than the gold check
(``filter``: the loop verifies with it; evaluation always uses gold), outside labels (``labels``: a
``signals.source.LabeledPrompts`` over this task, which makes the task the ``mix`` training set's
labeled source) and sampled pass@k on held-out and training prompts (``eval_sampler`` and
``eval_samples``: n samples a prompt, pass@k estimated the unbiased way, Chen et al. 2021).

Nothing here imports torch: the model is only handed to a :class:`~synthloop.protocols.Generator`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt

from synthloop.diagnostics.stage import View
from synthloop.passk import pass_at_k
from synthloop.protocols import Generator, Verifier
from synthloop.records import Candidates, Prompts, Scores, Verdict

if TYPE_CHECKING:
    from synthloop.signals.source import Allocation, LabeledPrompts

T = TypeVar("T")
MARKER = "####"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass(frozen=True)
class Level:
    """One difficulty level: a reasoning-gym dataset with its generator parameters."""

    name: str
    dataset: str
    params: Mapping[str, Any] = field(default_factory=dict)
    weight: float = 1.0  # share of training prompts drawn from this level


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str
    solution: str  # a worked chain of thought ending in "#### <answer>"
    level: str


def load_problems(level: Level, *, size: int, seed: int) -> list[Problem]:
    """``size`` problems of ``level`` from reasoning-gym, reproducible for ``seed``."""
    import reasoning_gym

    try:
        dataset = reasoning_gym.create_dataset(level.dataset, size=size, seed=seed, **dict(level.params))
    except (TypeError, ValueError, KeyError, AssertionError) as error:
        raise ValueError(f"level {level.name!r}: reasoning-gym cannot build {level.dataset!r} "
                         f"with {dict(level.params)}: {error}") from None
    return [Problem(question=e["question"], answer=str(e["answer"]).strip(),
                    solution=worked_solution(e), level=level.name) for e in dataset]


def worked_solution(entry: Mapping[str, Any]) -> str:
    """A chain of thought for a reasoning-gym entry, ending in ``#### <answer>``."""
    answer = str(entry["answer"]).strip()
    meta = entry.get("metadata", {})
    if "answer_cot" in meta:  # gsm_symbolic ships GSM8K-style solutions
        cot = str(meta["answer_cot"]).strip()
        return cot if MARKER in cot else f"{cot}\n{MARKER} {answer}"
    expression = str(meta.get("expression", "")).strip()
    steps = _left_to_right_steps(expression, answer) if expression else None
    if steps is None:
        steps = f"{expression} = {answer}." if expression else ""
    return f"{steps} {MARKER} {answer}".strip()


def _left_to_right_steps(expression: str, answer: str) -> str | None:
    """'12 + 5 - 3' -> '12 + 5 = 17. 17 - 3 = 14.'; None for anything but a +/- chain."""
    tokens = expression.split()
    if len(tokens) < 3 or len(tokens) % 2 == 0 or any(op not in "+-" for op in tokens[1::2]):
        return None
    try:
        total = int(tokens[0])
        steps = []
        for op, term in zip(tokens[1::2], tokens[2::2], strict=True):
            value = total + int(term) if op == "+" else total - int(term)
            steps.append(f"{total} {op} {term} = {value}.")
            total = value
    except ValueError:
        return None
    return " ".join(steps) if str(total) == answer else None


def question_prompt(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def few_shot_prompt(question: str, shots: Sequence[Problem]) -> str:
    examples = "".join(f"{question_prompt(s.question)} {s.solution}\n\n" for s in shots)
    return examples + question_prompt(question)


def hint_prompt(question: str, answer: str, shots: Sequence[Problem]) -> str:
    """STaR's rationalization prompt: the question with its answer as a hint."""
    return few_shot_prompt(f"{question} (Hint: the answer is {answer}.)", shots)


# -- verification ---------------------------------------------------------------------------------


class CheckTimeoutError(RuntimeError):
    pass


def run_with_timeout(fn: Callable[[], T], seconds: float) -> T:
    """``fn()`` with a time limit that works on any thread.

    math-verify's own timeout uses ``signal.alarm``, which only works on the main thread; elsewhere
    (a server, a thread pool) the check runs in a daemon thread we stop waiting for.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except Exception as error:  # reported to the caller below
            box["error"] = error

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise CheckTimeoutError(f"answer check took more than {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def final_answer(completion: str, *, require_marker: bool) -> str | None:
    """The text after the last ``####`` (first line), else the last number unless a marker is required."""
    if MARKER in completion:
        tail = completion.rsplit(MARKER, 1)[1].strip()
        return tail.splitlines()[0].strip() if tail else None
    if require_marker:
        return None
    numbers = _NUMBER.findall(completion)
    return numbers[-1].replace(",", "") if numbers else None


def answer_key(completion: str, *, require_marker: bool = False) -> str | None:
    """The final answer in a form equal answers share ('1,200.0' and '1200' both '1200'), for voting.

    >>> answer_key("so 1,200.0 #### 1,200.0"), answer_key("x = 7"), answer_key("none")
    ('1200', '7', None)
    """
    answer = final_answer(completion, require_marker=require_marker)
    if answer is None:
        return None
    text = answer.replace(",", "").rstrip(".").strip()
    try:
        value = float(text)
    except ValueError:
        return text or None
    return f"{value:.10g}" if np.isfinite(value) else text


@dataclass(frozen=True)
class MathVerifier:
    """Final-answer check with math-verify: reward 1 (PASS), 0 (FAIL) or NaN (ERROR, with a detail).

    The gold answer is ``prompts.items["answer"]``; the model output ``candidates.samples["completion"]``.
    """

    timeout_seconds: float = 5.0
    require_marker: bool = False

    def verify(self, candidates: Candidates, prompts: Prompts) -> Scores:
        golds = prompts.items["answer"]
        outputs = candidates.samples["completion"]
        results = [self.check(str(g), str(o)) for g, o in zip(golds, outputs, strict=True)]
        verdict = np.array([v for v, _ in results], dtype=np.int8)
        reward = np.where(verdict == Verdict.PASS, 1.0, np.where(verdict == Verdict.FAIL, 0.0, np.nan))
        return Scores(reward=reward, verdict=verdict, usage={"samples": np.ones(len(results))},
                      detail=[d for _, d in results])

    def check(self, gold: str, output: str) -> tuple[Verdict, str]:
        answer = final_answer(output, require_marker=self.require_marker)
        if answer is None:
            return Verdict.ERROR, "no final answer in the output"
        try:
            gold_parsed = self._parse(gold)
            if not gold_parsed:
                return Verdict.ERROR, f"gold answer {gold!r} cannot be parsed"
            answer_parsed = self._parse(answer)
            if not answer_parsed:
                return Verdict.ERROR, f"model answer {answer[:40]!r} cannot be parsed"
            same = self._call(lambda: self._verify(gold_parsed, answer_parsed))
        except Exception as error:  # a checker crash or timeout is an ERROR verdict, never a 0
            return Verdict.ERROR, f"answer check failed: {type(error).__name__}: {error}"[:200]
        return (Verdict.PASS, "correct") if same else (Verdict.FAIL, f"answered {answer[:40]!r}")

    def _on_main_thread(self) -> bool:
        return threading.current_thread() is threading.main_thread()

    def _call(self, fn: Callable[[], T]) -> T:
        return fn() if self._on_main_thread() else run_with_timeout(fn, self.timeout_seconds)

    def _parse(self, text: str) -> list[Any]:
        from math_verify import parse

        limit = int(max(1, round(self.timeout_seconds))) if self._on_main_thread() else None
        return self._call(lambda: list(parse(text, parsing_timeout=limit, raise_on_error=True)))

    def _verify(self, gold: list[Any], answer: list[Any]) -> bool:
        from math_verify import verify

        limit = int(max(1, round(self.timeout_seconds))) if self._on_main_thread() else None
        return bool(verify(gold, answer, timeout_seconds=limit, raise_on_error=True))


# -- the task -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pools:
    train: list[Problem]
    held_out: list[Problem]
    shots: list[Problem]


def build_pools(levels: Sequence[Level], *, train_size: int, eval_size: int, n_shots: int,
                data_seed: int) -> Pools:
    """Train, held-out and few-shot problems per level, from disjoint seeds of ``data_seed``."""
    train, held_out, shots = [], [], []
    for k, level in enumerate(levels):
        seeds = np.random.SeedSequence(data_seed, spawn_key=(k,)).generate_state(3)
        train += load_problems(level, size=train_size, seed=int(seeds[0]))
        held_out += load_problems(level, size=eval_size, seed=int(seeds[1]))
        if n_shots:
            shots += load_problems(level, size=n_shots, seed=int(seeds[2]))
    # the shots mix all levels; a fixed interleaving keeps the prompt the same for every question
    mixed = [shots[i * n_shots + j] for j in range(n_shots) for i in range(len(levels))][:n_shots]
    return Pools(train=train, held_out=held_out, shots=mixed)


def prompts_for(problems: Sequence[Problem], index: Sequence[int], shots: Sequence[Problem], *,
                style: str = "few_shot") -> Prompts:
    """Prompt columns: ``prompt`` (to sample from), ``question_prompt`` (to train on), ``hint_prompt``
    (rationalization), ``answer`` (gold), ``level``. In the ``chat`` style every prompt is the bare
    question, which the generator and learner wrap in the model's chat template."""
    chosen = [problems[i] for i in index]
    if style == "chat":
        prompt = [p.question for p in chosen]
        plain = prompt
        hint = [f"{p.question} (Hint: the answer is {p.answer}.)" for p in chosen]
    else:
        prompt = [few_shot_prompt(p.question, shots) for p in chosen]
        plain = [question_prompt(p.question) for p in chosen]
        hint = [hint_prompt(p.question, p.answer, shots) for p in chosen]
    return Prompts(
        index=np.asarray(index, dtype=np.int64),
        items={
            "prompt": prompt,
            "question_prompt": plain,
            "hint_prompt": hint,
            "answer": [p.answer for p in chosen],
            "solution": [p.solution for p in chosen],  # gold worked solution (a controlled labeler's source)
            "level": [p.level for p in chosen],
        },
    )


class MathTask:
    """Training prompts drawn from a fixed pool; held-out accuracy per level with ``evaluator``.

    ``evaluator`` is a greedy generator (temperature 0); evaluation sets are fixed by ``data_seed``
    so iterations and schedules are compared on the same problems. ``style`` is ``few_shot``
    (plain-text chain-of-thought prompts) or ``chat`` (bare questions for an instruction-tuned
    model's chat template; ``shots`` is then unused).
    """

    def __init__(self, levels: Sequence[Level], *, evaluator: Generator, train_size: int = 1000,
                 eval_size: int = 100, shots: int = 3, data_seed: int = 0,
                 verifier: Verifier | None = None, style: str = "few_shot") -> None:
        if not levels:
            raise ValueError("a math task needs at least one level")
        if style not in ("few_shot", "chat"):
            raise ValueError(f"style must be 'few_shot' or 'chat', got {style!r}")
        self.style = style
        self.levels = tuple(levels)
        self.evaluator: Generator = evaluator
        self.train_size = train_size
        self.eval_size = eval_size
        self.shots = shots
        self.data_seed = data_seed
        self._verifier: Verifier = verifier or MathVerifier()
        self.pools_ = build_pools(self.levels, train_size=train_size, eval_size=eval_size,
                                  n_shots=shots, data_seed=data_seed)
        weights = np.repeat([lv.weight for lv in self.levels], train_size).astype(np.float64)
        self._train_p = weights / weights.sum()
        self.filter: Verifier | None = None  # what the loop verifies with, if not the gold check
        self.labels: LabeledPrompts | None = None  # outside labels for the mix training set
        self.eval_sampler: Generator | None = None  # sampled pass@k (temperature > 0)
        self.eval_samples = 0  # samples per evaluated prompt; 0: greedy accuracy only
        self.eval_train_size = 0  # training prompts evaluated with pass@k as well (a fixed subset)
        self.pass_k: tuple[int, ...] = (1, 8)

    @property
    def name(self) -> str:
        return "math-" + "-".join(lv.name for lv in self.levels)

    @property
    def verifier(self) -> Verifier:
        return self.filter if self.filter is not None else self._verifier

    @property
    def gold(self) -> Verifier:
        return self._verifier

    def sample(self, n: int, *, rng: np.random.Generator) -> tuple[Candidates, Prompts]:
        """n outside labels (the ``mix`` training set's ``LabeledSource``), if labels are set."""
        if self.labels is None:
            raise ValueError(f"task {self.name!r} has no labeler: set task.labeler to use a mix")
        return self.labels.sample(n, rng=rng)

    def usage_per_label(self) -> Mapping[str, float]:
        """What one outside label reports (its labeler's quantities), for ``label`` prices."""
        return {"samples": 1.0} if self.labels is None else self.labels.usage_per_label()

    def use_allocation(self, allocation: Allocation) -> None:
        if self.labels is not None:
            self.labels.use_allocation(allocation)

    @property
    def primary_metric(self) -> str:
        return "accuracy"

    @property
    def higher_is_better(self) -> bool:
        return True

    def sample_prompts(self, n: int, *, rng: np.random.Generator) -> Prompts:
        index = rng.choice(len(self.pools_.train), size=n, p=self._train_p)
        return prompts_for(self.pools_.train, index.tolist(), self.pools_.shots, style=self.style)

    @property
    def pool_size(self) -> int:
        """The training problems, which weighted prompt policies draw from by index."""
        return len(self.pools_.train)

    def prompts_at(self, indices: npt.NDArray[np.int64]) -> Prompts:
        return prompts_for(self.pools_.train, [int(i) for i in indices], self.pools_.shots, style=self.style)

    def held_out_prompts(self) -> Prompts:
        return prompts_for(self.pools_.held_out, range(len(self.pools_.held_out)), self.pools_.shots,
                           style=self.style)

    def diagnostic_view(self, candidates: Candidates, prompts: Prompts) -> View:
        """Completions as texts, their final answers, and MiniLM embeddings (the diagnose stage)."""
        from synthloop.diagnostics.text_embedding import SPACE, embed

        texts = [str(t) for t in candidates.samples["completion"]]
        answers = [final_answer(t, require_marker=False) or "" for t in texts]
        return View(embed(texts), texts=texts, answers=answers, space=SPACE)

    def diagnostic_reference(self, n: int, *, rng: np.random.Generator) -> tuple[View, View]:
        """Anchor: worked solutions of the training pool (what labelled data would give); reference:
        the held-out problems' worked solutions."""
        from synthloop.diagnostics.text_embedding import SPACE, embed

        def view(problems: Sequence[Problem]) -> View:
            chosen = [problems[i] for i in rng.choice(len(problems), min(n, len(problems)), replace=False)]
            return View(embed([p.solution for p in chosen]), texts=[p.solution for p in chosen], space=SPACE)

        return view(self.pools_.train), view(self.pools_.held_out)

    def evaluate(self, model: Any, *, rng: np.random.Generator) -> dict[str, float]:
        prompts = self.held_out_prompts()
        candidates = self.evaluator.generate(model, prompts, rng=rng)
        scores = self._verifier.verify(candidates, prompts)
        passed = scores.verdict == Verdict.PASS
        levels = np.asarray(prompts.items["level"])
        metrics = {"accuracy": float(passed.mean()),
                   "error_rate": float(np.mean(scores.verdict == Verdict.ERROR)),
                   "completion_tokens": float(candidates.usage["completion_tokens"].mean())
                   if "completion_tokens" in candidates.usage else 0.0}
        for level in self.levels:
            metrics[f"accuracy/{level.name}"] = float(passed[levels == level.name].mean())
        if self.eval_sampler is not None and self.eval_samples > 0:
            metrics.update(self._pass_at(model, prompts, "", rng))
            if self.eval_train_size > 0:
                metrics.update(self._pass_at(model, self.train_eval_prompts(), "train/", rng))
        return metrics

    def train_eval_prompts(self) -> Prompts:
        """A fixed subset of the training pool (chosen by ``data_seed``) evaluated like held-out."""
        order = np.random.default_rng(np.random.SeedSequence(self.data_seed, spawn_key=(7,))).permutation(
            self.pool_size)
        return self.prompts_at(np.sort(order[: min(self.eval_train_size, self.pool_size)]))

    def _pass_at(self, model: Any, prompts: Prompts, prefix: str, rng: np.random.Generator) -> dict[str, float]:
        """Mean unbiased pass@k over ``prompts`` from ``eval_samples`` samples each, checked by gold."""
        assert self.eval_sampler is not None
        n = self.eval_samples
        repeated = prompts.take(np.repeat(np.arange(len(prompts)), n))
        candidates = self.eval_sampler.generate(model, repeated, rng=rng)
        passed = self._verifier.verify(candidates, repeated).verdict == Verdict.PASS
        correct = passed.reshape(len(prompts), n).sum(axis=1)
        return {f"{prefix}pass@{k}": float(np.mean([pass_at_k(n, int(c), k) for c in correct]))
                for k in self.pass_k if k <= n}


@dataclass(frozen=True)
class Rationalizing:
    """STaR's rationalization: prompts the model fails are retried with the answer as a hint.

    A retried row keeps its original prompt (without the hint) as the training prompt, as in STaR;
    its usage is the sum of both attempts; ``samples["rationalized"]`` marks it. The check of every
    first attempt is verification done here: it is reported as ``verify:samples``, which the loop
    charges to the ``verify`` stage.
    """

    generator: Generator
    verifier: Verifier
    hint_key: str = "hint_prompt"
    prompt_key: str = "prompt"

    def max_usage_per_draw(self) -> dict[str, float]:
        return {**{k: 2 * v for k, v in self.generator.max_usage_per_draw().items()}, "verify:samples": 1.0}

    def generate(self, model: Any, prompts: Prompts, *, rng: np.random.Generator) -> Candidates:
        first_rng, retry_rng = rng.spawn(2)
        first = self.generator.generate(model, prompts, rng=first_rng)
        scores = self.verifier.verify(first, prompts)
        failed = np.flatnonzero(scores.verdict != Verdict.PASS)
        completions = list(first.samples["completion"])
        usage = {k: v.copy() for k, v in first.usage.items()}
        rationalized = [False] * len(prompts)
        if len(failed):
            retry = prompts.take(failed)
            hinted = Prompts(index=retry.index, items={**retry.items, self.prompt_key: retry.items[self.hint_key]})
            second = self.generator.generate(model, hinted, rng=retry_rng)
            for j, i in enumerate(failed):
                completions[i] = second.samples["completion"][j]
                rationalized[i] = True
            for k in usage:
                usage[k][failed] += second.usage[k]
        samples = {**first.samples, "completion": completions, "rationalized": rationalized}
        usage["verify:samples"] = np.ones(len(prompts))
        return Candidates(samples=samples, prompt_index=first.prompt_index, usage=usage)
