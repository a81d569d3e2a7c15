"""Ask a served model to answer or to rate: the building block of labelers and judges.

:class:`Asker` sends one request per question (concurrently, with the endpoint's retries) and
returns an :class:`Answer` per question: the text, the usage the server reported, and an error
reason where the request finally failed. :class:`RatingVerifier` is a judge as a
:class:`~synthloop.protocols.Verifier`: it asks for a score on a numeric scale, reads the first
number in the reply, and turns it into a reward in [0, 1]; a failed request or a reply with no
score on the scale is an ERROR verdict with the reason, never a 0. Its token usage is reported as
the verification usage (``Scores.usage``), which the loop charges to the verify stage.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from synthloop.engines.client import Endpoint, Request
from synthloop.engines.openai_generator import MAX_SEED
from synthloop.records import Candidates, Prompts, Scores, Verdict

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass(frozen=True)
class Answer:
    """A model's answer to one question; ``error`` is empty exactly when it was answered."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    error: str = ""
    attempts: int = 1

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Asker:
    """Asks ``endpoint`` each question once (seeded from ``rng``: same rng, same requests)."""

    endpoint: Endpoint

    def ask(self, questions: Sequence[str], *, rng: np.random.Generator) -> list[Answer]:
        seeds = [int(s) for s in rng.integers(0, MAX_SEED, size=len(questions))]
        outcomes = self.endpoint.run_all([Request(q, 1, s) for q, s in zip(questions, seeds, strict=True)])
        answers = []
        for outcome in outcomes:
            reply = outcome.reply
            if reply is None:
                answers.append(Answer("", 0, 0, error=outcome.error, attempts=outcome.attempts))
            else:
                answers.append(Answer(reply.texts[0], reply.prompt_tokens, reply.completion_tokens,
                                      attempts=outcome.attempts))
        return answers


def read_score(text: str, *, low: float, high: float) -> float | None:
    """The first number of ``text`` if it lies on the scale [low, high], else None.

    >>> read_score("Score: 7/10", low=1, high=10), read_score("no idea", low=1, high=10)
    (7.0, None)
    """
    match = _NUMBER.search(text)
    if match is None:
        return None
    value = float(match.group())
    return value if low <= value <= high else None


@dataclass(frozen=True)
class RatingVerifier:
    """A judge: rates each candidate on [low, high]; reward = (score - low) / (high - low).

    ``template`` is formatted with ``prompt`` (``prompts.items[prompt_key]``) and ``completion``.
    PASS where the reward is at least ``pass_at``. Usage per candidate: ``samples`` 1 and the
    judge's ``prompt_tokens``, ``completion_tokens`` and ``tokens`` (0 where the request failed).
    The judge's seeds come from a fixed ``seed``: verification takes no rng in the protocol.
    """

    asker: Asker
    template: str = ("Rate how correct and helpful the answer is, from {low:g} to {high:g}. Reply with the "
                     "number only.\n\nQuestion: {prompt}\n\nAnswer: {completion}")
    low: float = 1.0
    high: float = 10.0
    pass_at: float = 0.5
    prompt_key: str = "prompt"
    seed: int = 0

    def verify(self, candidates: Candidates, prompts: Prompts) -> Scores:
        questions = [self.template.format(prompt=p, completion=c, low=self.low, high=self.high)
                     for p, c in zip(prompts.items[self.prompt_key], candidates.samples["completion"], strict=True)]
        answers = self.asker.ask(questions, rng=np.random.default_rng(self.seed))
        reward, detail = np.full(len(answers), np.nan), []
        for i, answer in enumerate(answers):
            score = None if answer.error else read_score(answer.text, low=self.low, high=self.high)
            if score is not None:
                reward[i] = (score - self.low) / (self.high - self.low)
                detail.append(f"rated {score:g}")
            else:
                detail.append(f"request failed: {answer.error}" if answer.error
                              else f"no score on [{self.low:g}, {self.high:g}] in {answer.text[:60]!r}")
        verdict = np.where(np.isnan(reward), Verdict.ERROR,
                           np.where(reward >= self.pass_at, Verdict.PASS, Verdict.FAIL)).astype(np.int8)
        prompt = np.array([a.prompt_tokens for a in answers], dtype=np.float64)
        completion = np.array([a.completion_tokens for a in answers], dtype=np.float64)
        usage = {"samples": np.ones(len(answers)), "prompt_tokens": prompt, "completion_tokens": completion,
                 "tokens": prompt + completion}
        return Scores(reward=reward, verdict=verdict, usage=usage, detail=detail)

