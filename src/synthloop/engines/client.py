"""Requests to an OpenAI-compatible server: bounded concurrency, retries with backoff, strict replies.

Every request ends in an :class:`Outcome`, never an exception: a reply, or the reason it failed.

What is retried (at most ``max_retries`` times, waiting ``backoff * 2**k`` seconds, at most
``max_backoff``, or the server's ``Retry-After`` where it sends one): connection errors and dropped
connections, timeouts (``timeout`` seconds per attempt), HTTP 408, 409, 429 and 5xx, and replies
that are not the JSON the API promises (malformed or truncated bodies, missing ``usage``). Other
HTTP errors (400 a prompt the server refuses, 401 a wrong key, 404 a wrong model name) are not
retried: asking again would give the same answer.

Usage is read from each reply's ``usage`` (``prompt_tokens``, ``completion_tokens``); a failed
attempt is not charged (the server may still have worked on it: on a hosted API a timed-out
request can be billed, which the ledger cannot see).

The ``openai`` package is imported only when a client is first needed. Its own retries are turned
off (``max_retries=0``) so that the policy above is the only one, and it is tested.
"""

from __future__ import annotations

import functools
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from synthloop.engines.openai_config import Connection, OpenAISettings

RETRIED_STATUS = frozenset({408, 409, 429})  # and every 5xx


@dataclass(frozen=True)
class Request:
    """One call: a prompt (a user turn for chat), how many choices, and its seed (None: no seed)."""

    prompt: str
    n: int = 1
    seed: int | None = None


@dataclass(frozen=True)
class Reply:
    """What a server answered: one text per choice, and the usage it reported for the whole call."""

    texts: list[str]
    finish_reasons: list[str]
    logprobs: list[float]  # summed over each choice's tokens; NaN where not asked or not given
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Outcome:
    """A reply, or why there is none (``error`` is empty exactly when ``reply`` is set)."""

    reply: Reply | None
    error: str = ""
    attempts: int = 1
    transient: bool = False  # the last failure was one that is retried (the server may be down)


class MalformedReplyError(ValueError):
    """The body is not a completion the API describes (bad JSON, missing fields, impossible usage)."""


@dataclass(frozen=True)
class Failure:
    reason: str
    retry: bool
    wait: float | None = None  # the server's Retry-After, seconds


def classify(error: Exception) -> Failure:
    """Whether a failed attempt is worth retrying, and its reason in one line."""
    import openai

    if isinstance(error, MalformedReplyError):
        return Failure(f"malformed reply: {error}", retry=True)
    if isinstance(error, openai.APITimeoutError):
        return Failure("timed out", retry=True)
    if isinstance(error, openai.APIConnectionError):
        cause = error.__cause__ or error
        return Failure(f"connection failed: {type(cause).__name__}: {cause}"[:300], retry=True)
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        retry = status in RETRIED_STATUS or status >= 500
        return Failure(f"HTTP {status}: {_brief(error.message)}", retry=retry,
                       wait=_retry_after(error.response.headers.get("retry-after")))
    return Failure(f"{type(error).__name__}: {_brief(str(error))}", retry=False)


def _brief(text: str) -> str:
    return " ".join(text.split())[:300]


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else math.nan
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def parse_reply(text: str, *, chat: bool, n: int, max_tokens: int) -> Reply:
    """A reply from a response body, checked: every choice present, usage present and possible."""
    try:
        body = json.loads(text)
        choices = sorted(body["choices"], key=lambda c: int(c.get("index", 0)))
        usage = body["usage"]
        prompt_tokens, completion_tokens = int(usage["prompt_tokens"]), int(usage["completion_tokens"])
        texts = [str(c["message"]["content"] or "") if chat else str(c["text"]) for c in choices]
        reasons = [str(c.get("finish_reason") or "") for c in choices]
        logprobs = [_summed_logprob(c.get("logprobs"), chat=chat) for c in choices]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise MalformedReplyError(f"{type(error).__name__}: {_brief(str(error))}") from None
    if not 0 < len(texts) <= n:
        raise MalformedReplyError(f"{len(texts)} choices for a request of n={n}")
    if prompt_tokens < 0 or not 0 <= completion_tokens <= len(texts) * max_tokens:
        raise MalformedReplyError(f"impossible usage {usage} for {len(texts)} choices of at most "
                                  f"{max_tokens} tokens")
    return Reply(texts, reasons, logprobs, prompt_tokens, completion_tokens)


def _summed_logprob(logprobs: Any, *, chat: bool) -> float:
    if not logprobs:
        return math.nan
    values = [t["logprob"] for t in logprobs["content"]] if chat else logprobs["token_logprobs"]
    return float(sum(v for v in values if v is not None))


@dataclass(frozen=True)
class Endpoint:
    """Sends requests to one server with the settings' sampling options and retry policy.

    Each batch of requests gets one ``openai`` client (one connection pool, shared by the worker
    threads), closed when the batch is done: nothing stays open between parts, and an endpoint is
    a plain picklable value (to ship a generator to worker processes).
    """

    settings: OpenAISettings
    connection: Connection
    api: str | None = None  # "completions" or "chat"; None: ``settings.api``, else completions
    sleep: Callable[[float], None] = time.sleep

    @property
    def chat(self) -> bool:
        return (self.api or self.settings.api or "completions") == "chat"

    def _open(self) -> Any:
        import openai

        return openai.OpenAI(base_url=self.connection.base_url, api_key=self.connection.api_key,
                             max_retries=0, timeout=self.settings.timeout)

    def run_all(self, requests: Sequence[Request]) -> list[Outcome]:
        """Every request's outcome, in order; at most ``concurrency`` in flight at once."""
        with self._open() as client:
            if len(requests) <= 1 or self.settings.concurrency == 1:
                return [self._run(client, r) for r in requests]
            with ThreadPoolExecutor(max_workers=min(self.settings.concurrency, len(requests))) as pool:
                return list(pool.map(functools.partial(self._run, client), requests))

    def run(self, request: Request) -> Outcome:
        """One request with its retries: the reply, or the reason of the last failed attempt."""
        with self._open() as client:
            return self._run(client, request)

    def _run(self, client: Any, request: Request) -> Outcome:
        jitter = random.Random(request.seed)  # spreads retries of many requests; no global state
        attempt = 0
        while True:
            attempt += 1
            try:
                return Outcome(self._send(client, request), attempts=attempt)
            except Exception as error:  # every failure becomes an outcome; see classify
                failure = classify(error)
            if not failure.retry or attempt > self.settings.max_retries:
                return Outcome(None, error=failure.reason, attempts=attempt, transient=failure.retry)
            self.sleep(self._wait(attempt, failure, jitter))

    def _wait(self, attempt: int, failure: Failure, jitter: random.Random) -> float:
        s = self.settings
        if failure.wait is not None:
            return min(failure.wait, s.max_backoff)
        return min(s.backoff * 2 ** (attempt - 1), s.max_backoff) * (0.5 + 0.5 * jitter.random())

    def _send(self, client: Any, request: Request) -> Reply:
        s, chat = self.settings, self.chat
        options: dict[str, Any] = {"model": s.model, "max_tokens": s.max_tokens, "temperature": s.temperature,
                                   "top_p": s.top_p, "n": request.n}
        if s.stop:
            options["stop"] = list(s.stop)
        if request.seed is not None:
            options["seed"] = request.seed
        if chat:
            messages = [{"role": "system", "content": s.system}] if s.system else []
            messages.append({"role": "user", "content": request.prompt})
            if s.logprobs:
                options["logprobs"] = True
            raw = client.chat.completions.with_raw_response.create(messages=messages, **options)
        else:
            if s.logprobs:
                options["logprobs"] = 1
            raw = client.completions.with_raw_response.create(prompt=request.prompt, **options)
        return parse_reply(raw.http_response.text, chat=chat, n=request.n, max_tokens=s.max_tokens)
