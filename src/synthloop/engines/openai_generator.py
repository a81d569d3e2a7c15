"""A Generator that samples from an OpenAI-compatible server (vLLM, SGLang, llama.cpp, a hosted API).

The server's model is a fixed teacher: :meth:`OpenAIGenerator.generate` ignores the model the loop
hands it. Each prompt row is one draw; up to ``n`` identical prompts of a part share one request
asking for that many choices.

**Failures.** A request that still fails after its retries (see :mod:`synthloop.engines.client`)
gives candidates with an empty completion, zero usage and the reason in the extra column
``request_error``; :class:`RequestErrors` turns them into ERROR verdicts carrying that reason, so
they are counted and committed like any other verdict. A part in which *no* request succeeded
stops the run with :class:`EngineUnavailableError` before anything of that part is committed (a
server that is down would otherwise fill iterations with errors and end the run): the run is
resumable, and ``synthloop resume`` redoes that part once the server is back.

**Usage.** Per row: ``samples`` (1 for a row with a completion), ``prompt_tokens`` and
``completion_tokens`` as the server reported them (a request with ``n`` choices has its tokens
split over its rows in whole tokens, so the sums are exact), ``tokens`` their sum. The bound per
draw is ``max_prompt_tokens`` (the longest prompt's UTF-8 bytes plus the chat template's tokens,
computed where the generator is wired) plus ``max_tokens``; a prompt whose bound exceeds it is an
ERROR without a request.

**Determinism** is declared, not assumed: each request carries a seed drawn from the loop's rng, and
``seed_honoured`` (declared in the config or probed by :func:`probe_seed`) is recorded in every
candidate's extra columns. Where a server ignores seeds, exact resume still holds, because
committed parts are read back rather than generated again; only an uncommitted part differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from synthloop.engines.client import Endpoint, Outcome, Request
from synthloop.protocols import Verifier
from synthloop.records import Candidates, Prompts, Scores, Verdict

ERROR_COLUMN = "request_error"
MAX_SEED = 2**31 - 1  # what every server accepts as a seed


class EngineUnavailableError(ConnectionError):
    """No request of a part succeeded: the server is down or refuses everything. The run stops
    with nothing of that part committed; resume it once the server answers."""


def prompt_token_bound(text: str, *, template_tokens: int) -> int:
    """Tokens a prompt can take at most: one per UTF-8 byte (byte-level BPE and SentencePiece with
    byte fallback never make a token of less than a byte), plus the chat template and BOS tokens.

    >>> prompt_token_bound("2 + 3 = ?", template_tokens=64)
    73
    """
    return len(text.encode("utf-8")) + template_tokens


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` whole tokens over ``parts`` rows, the first rows taking the remainder.

    >>> split_evenly(10, 3)
    [4, 3, 3]
    """
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def group_rows(texts: Sequence[str], n: int) -> list[list[int]]:
    """Rows grouped by identical text, at most ``n`` a group, in order of first appearance.

    >>> group_rows(["a", "b", "a", "a"], 2)
    [[0, 2], [1], [3]]
    """
    groups: list[list[int]] = []
    open_group: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        group = open_group.get(text)
        if group is None or len(group) >= n:
            group = open_group[text] = []
            groups.append(group)
        group.append(i)
    return groups


@dataclass
class _Rows:
    """The columns of one part's candidates, filled request by request."""

    completion: list[str]
    error: list[str]
    finish_reason: list[str]
    attempts: np.ndarray
    seed: np.ndarray
    logprob: np.ndarray
    prompt_tokens: np.ndarray
    completion_tokens: np.ndarray

    @classmethod
    def empty(cls, n: int) -> _Rows:
        return cls([""] * n, [""] * n, [""] * n, np.zeros(n, np.int64), np.full(n, -1, np.int64),
                   np.full(n, np.nan), np.zeros(n), np.zeros(n))

    def fill(self, rows: list[int], outcome: Outcome, seed: int) -> None:
        self.attempts[rows] = outcome.attempts
        self.seed[rows] = seed
        reply = outcome.reply
        if reply is None:
            for i in rows:
                self.error[i] = outcome.error
            return
        got = rows[:len(reply.texts)]
        prompt, completion = split_evenly(reply.prompt_tokens, len(got)), split_evenly(reply.completion_tokens, len(got))
        for j, i in enumerate(got):
            self.completion[i], self.finish_reason[i] = reply.texts[j], reply.finish_reasons[j]
            self.logprob[i], self.prompt_tokens[i], self.completion_tokens[i] = reply.logprobs[j], prompt[j], completion[j]
        for i in rows[len(got):]:
            self.error[i] = (f"the server returned {len(got)} of {len(rows)} choices "
                             "(it may ignore n; set generator.n: 1)")


@dataclass(frozen=True)
class OpenAIGenerator:
    """Samples completions (or chat replies) of ``prompts.items[prompt_key]`` from ``endpoint``."""

    endpoint: Endpoint
    max_prompt_tokens: int
    seed_honoured: bool = False
    prompt_key: str = "prompt"
    carry: tuple[str, ...] = ("question_prompt",)  # prompt columns copied into the samples, if present

    def max_usage_per_draw(self) -> dict[str, float]:
        completion = float(self.endpoint.settings.max_tokens)
        return {"samples": 1.0, "tokens": self.max_prompt_tokens + completion,
                "prompt_tokens": float(self.max_prompt_tokens), "completion_tokens": completion}

    def generate(self, model: Any, prompts: Prompts, *, rng: np.random.Generator) -> Candidates:
        texts = [str(t) for t in prompts.items[self.prompt_key]]
        groups = group_rows(texts, self.endpoint.settings.n)
        seeds = [int(s) for s in rng.integers(0, MAX_SEED, size=len(groups))]
        rows = _Rows.empty(len(texts))
        sendable = [k for k, g in enumerate(groups) if self._fits(texts[g[0]])]
        outcomes = self.endpoint.run_all([Request(texts[groups[k][0]], len(groups[k]), seeds[k]) for k in sendable])
        too_long = Outcome(None, error=f"prompt may exceed max_prompt_tokens={self.max_prompt_tokens}; not sent")
        for k in sorted(set(range(len(groups))) - set(sendable)):
            rows.fill(groups[k], too_long, seeds[k])
        for k, outcome in zip(sendable, outcomes, strict=True):
            rows.fill(groups[k], outcome, seeds[k])
        if outcomes and all(o.reply is None for o in outcomes):
            raise EngineUnavailableError(
                f"{self.endpoint.connection.base_url}: none of {len(outcomes)} requests succeeded "
                f"(first: {outcomes[0].error}); nothing of this part was committed: `synthloop resume` "
                "the run once the server answers")
        return self._candidates(texts, prompts, rows)

    def _fits(self, text: str) -> bool:
        bound = prompt_token_bound(text, template_tokens=self.endpoint.settings.template_tokens)
        return bound <= self.max_prompt_tokens

    def _candidates(self, texts: list[str], prompts: Prompts, rows: _Rows) -> Candidates:
        ok = np.array([not e for e in rows.error], dtype=np.float64)
        usage = {"samples": ok, "prompt_tokens": rows.prompt_tokens, "completion_tokens": rows.completion_tokens,
                 "tokens": rows.prompt_tokens + rows.completion_tokens}
        samples: dict[str, Any] = {"prompt": texts, "completion": rows.completion}
        samples.update({k: list(prompts.items[k]) for k in self.carry if k in prompts.items})
        extra: dict[str, Any] = {ERROR_COLUMN: rows.error, "finish_reason": rows.finish_reason,
                                 "attempts": rows.attempts, "request_seed": rows.seed,
                                 "seed_honoured": np.full(len(texts), self.seed_honoured)}
        if self.endpoint.settings.logprobs:
            extra["logprob"] = rows.logprob
        return Candidates(samples=samples, prompt_index=prompts.index, usage=usage, extra=extra)


def probe_seed(endpoint: Endpoint, *, prompt: str = "Write one short sentence about the sea.") -> bool:
    """Whether the server reproduces a sample from its seed: the same request twice, sampled at
    temperature 1 (two short requests, not charged to any run's ledger). A failed probe is False."""
    probe = Endpoint(endpoint.settings.model_copy(update={"temperature": 1.0, "top_p": 1.0, "max_tokens": 16,
                                                          "n": 1, "logprobs": False}),
                     endpoint.connection, api=endpoint.api, sleep=endpoint.sleep)
    first, second = (probe.run(Request(prompt, 1, 12345)) for _ in range(2))
    return first.reply is not None and second.reply is not None and first.reply.texts == second.reply.texts


@dataclass(frozen=True)
class RequestErrors:
    """ERROR verdicts, with the reason, for candidates whose request failed; ``verifier`` scores the rest.

    A failed request is never a reward of 0: its reward is NaN and its detail says why. Verification
    usage is the wrapped verifier's for the rows it scored (one sample each if it reports none), and
    nothing for the failed rows.
    """

    verifier: Verifier
    column: str = ERROR_COLUMN

    def verify(self, candidates: Candidates, prompts: Prompts) -> Scores:
        errors = candidates.extra.get(self.column)
        failed = np.array([bool(e) for e in errors], dtype=bool) if errors is not None else None
        if failed is None or not failed.any():
            return self.verifier.verify(candidates, prompts)
        n = len(candidates)
        reward, verdict = np.full(n, np.nan), np.full(n, Verdict.ERROR, dtype=np.int8)
        detail = [f"request failed: {e}" if e else "" for e in errors]  # type: ignore[union-attr]
        usage: dict[str, np.ndarray] = {"samples": (~failed).astype(np.float64)}
        ok = np.flatnonzero(~failed)
        if len(ok):
            scored = self.verifier.verify(candidates.take(ok), prompts.take(ok))
            reward[ok], verdict[ok] = scored.reward, scored.verdict
            for i, j in enumerate(ok):
                detail[j] = scored.detail[i] if scored.detail is not None else ""
            for name, per_row in scored.usage.items():
                usage[name] = np.zeros(n)
                usage[name][ok] = per_row
        return Scores(reward=reward, verdict=verdict, usage=usage, detail=detail)
