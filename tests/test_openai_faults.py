"""The OpenAI-compatible client against a scripted mock server: every fault has its documented outcome.

429 bursts, 5xx, timeouts, dropped connections and malformed replies are retried with exponential
backoff (or the server's Retry-After), then succeed or end as an ERROR verdict with the reason;
a 400 is not retried; only successful replies are charged, once each, however many retries.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("openai")

from openai_mock import COMPLETION_TOKENS, MockServer, answer_of, usage_of
from synthloop.engines.client import Endpoint, Request
from synthloop.engines.judge import Asker, RatingVerifier
from synthloop.engines.openai_config import Connection, OpenAISettings, resolve_connection
from synthloop.engines.openai_generator import (
    EngineUnavailableError,
    OpenAIGenerator,
    RequestErrors,
)
from synthloop.records import Prompts, Verdict
from synthloop.tasks.math import MathVerifier
from synthloop.testing import check_generator, check_verifier


@pytest.fixture(scope="module")
def mock() -> Iterator[MockServer]:
    server = MockServer(delay=0.6).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def fresh(mock: MockServer) -> None:
    mock.script.clear()
    mock.requests.clear()
    mock.actions.clear()
    mock.default = "ok"


def endpoint(mock: MockServer, waits: list[float] | None = None, **options: object) -> Endpoint:
    settings = OpenAISettings.model_validate({"model": "mock", "timeout": 0.3, "max_retries": 3, **options})
    return Endpoint(settings, Connection(mock.url), sleep=(waits if waits is not None else []).append)


def test_a_429_burst_is_retried_with_doubling_backoff_then_succeeds(mock: MockServer) -> None:
    waits: list[float] = []
    mock.then(["429", "429", "503"])
    outcome = endpoint(mock, waits, backoff=0.5).run(Request("Question: 2 + 3\nAnswer:", seed=1))
    assert outcome.reply is not None and outcome.attempts == 4
    assert outcome.reply.texts == [" #### 5"]
    assert [0.25 <= w <= 0.5 for w in waits[:1]] == [True]  # backoff * (0.5 .. 1)
    assert 0.5 <= waits[1] <= 1.0 and 1.0 <= waits[2] <= 2.0


def test_retry_after_is_honoured_up_to_max_backoff(mock: MockServer) -> None:
    waits: list[float] = []
    mock.then(["429:2", "429:99"])
    assert endpoint(mock, waits, max_backoff=5.0).run(Request("x")).reply is not None
    assert waits == [2.0, 5.0]


def test_a_burst_longer_than_the_retries_is_an_error_with_its_reason(mock: MockServer) -> None:
    mock.then(["429"] * 10)
    outcome = endpoint(mock, max_retries=2).run(Request("x"))
    assert outcome.reply is None and outcome.attempts == 3 and outcome.transient
    assert outcome.error.startswith("HTTP 429")
    assert len(mock.requests) == 3


@pytest.mark.parametrize(("fault", "reason"), [("slow", "timed out"), ("drop", "connection failed"),
                                               ("malformed", "malformed reply: JSONDecodeError"),
                                               ("no_usage", "malformed reply: KeyError: 'usage'")])
def test_each_fault_is_retried_once_then_succeeds_or_persists_as_an_error(
        mock: MockServer, fault: str, reason: str) -> None:
    mock.then([fault])
    once = endpoint(mock).run(Request("Question: 1 + 1\nAnswer:"))
    assert once.reply is not None and once.attempts == 2 and once.reply.texts == [" #### 2"]
    mock.then([fault] * 4)
    always = endpoint(mock).run(Request("y"))
    assert always.reply is None and always.attempts == 4 and always.error.startswith(reason)


def test_a_refused_request_is_not_retried(mock: MockServer) -> None:
    mock.then(["400"])
    outcome = endpoint(mock).run(Request("x"))
    assert outcome.reply is None and outcome.attempts == 1 and not outcome.transient
    assert outcome.error == "HTTP 400: Error code: 400 - mock 400"


def prompts(questions: list[str]) -> Prompts:
    texts = [f"Question: {q}\nAnswer:" for q in questions]
    answers = [str(sum(int(x) for x in q.split("+"))) for q in questions]
    return Prompts(index=np.arange(len(texts)), items={"prompt": texts, "answer": answers})


def test_failed_requests_are_error_verdicts_and_only_successes_are_charged(mock: MockServer) -> None:
    batch = prompts(["1 + 2", "3 + 4", "5 + 1", "2 + 2"])
    # one request at a time so the script's faults fall on known rows: row 1 fails for good
    mock.then(["429", "ok", "drop", "drop", "drop", "drop", "malformed", "ok", "ok"])
    generator = OpenAIGenerator(endpoint(mock, concurrency=1), max_prompt_tokens=200)
    candidates = generator.generate(None, batch, rng=np.random.default_rng(0))
    errors = list(candidates.extra["request_error"])
    assert [bool(e) for e in errors] == [False, True, False, False]
    assert errors[1].startswith("connection failed")
    assert list(candidates.extra["attempts"]) == [2, 4, 2, 1]
    scores = check_verifier(RequestErrors(MathVerifier()), candidates, batch)
    assert list(scores.verdict) == [Verdict.PASS, Verdict.ERROR, Verdict.PASS, Verdict.PASS]
    assert scores.detail is not None and scores.detail[1] == f"request failed: {errors[1]}"
    assert list(scores.usage["samples"]) == [1, 0, 1, 1]
    # 9 requests reached the server, 3 replies were used: each charged once, as the server reported it
    ok = [0, 2, 3]
    expected = [usage_of(batch.items["prompt"][i])["prompt_tokens"] for i in ok]
    assert len(mock.requests) == 9
    assert candidates.usage["prompt_tokens"][ok].tolist() == expected
    assert candidates.usage["prompt_tokens"][1] == 0 and candidates.usage["completion_tokens"][1] == 0
    assert candidates.usage["tokens"].sum() == sum(expected) + 3 * COMPLETION_TOKENS
    assert candidates.usage["samples"].tolist() == [1, 0, 1, 1]


def test_a_part_with_no_successful_request_stops_the_run(mock: MockServer) -> None:
    mock.default = "503"
    generator = OpenAIGenerator(endpoint(mock, max_retries=1), max_prompt_tokens=200)
    with pytest.raises(EngineUnavailableError, match=r"none of 2 requests succeeded \(first: HTTP 503"):
        generator.generate(None, prompts(["1 + 2", "3 + 4"]), rng=np.random.default_rng(0))


def test_identical_prompts_share_a_request_with_n_choices(mock: MockServer) -> None:
    batch = prompts(["1 + 2", "3 + 4", "1 + 2", "1 + 2"])
    generator = OpenAIGenerator(endpoint(mock, n=2), max_prompt_tokens=200)
    candidates = check_generator(generator, None, batch)  # also: the same rng gives the same output
    assert sorted(r["n"] for r in mock.requests[:3]) == [1, 1, 2]
    prompt_tokens = usage_of(batch.items["prompt"][0])["prompt_tokens"]
    # rows 0 and 2 shared one request: its prompt tokens are split in whole tokens, summing exactly
    assert candidates.usage["prompt_tokens"][[0, 2]].sum() == prompt_tokens
    assert candidates.usage["completion_tokens"].tolist() == [COMPLETION_TOKENS] * 4
    assert len(set(candidates.extra["request_seed"].tolist())) == 3


def test_a_prompt_past_the_bound_is_an_error_without_a_request(mock: MockServer) -> None:
    generator = OpenAIGenerator(endpoint(mock, template_tokens=0), max_prompt_tokens=30)
    candidates = generator.generate(None, prompts(["1 + 2", "1234567 + 7654321"]), rng=np.random.default_rng(0))
    assert [bool(e) for e in candidates.extra["request_error"]] == [False, True]
    assert "max_prompt_tokens=30" in candidates.extra["request_error"][1]
    assert len(mock.requests) == 1


def test_the_judge_rates_and_a_reply_without_a_score_is_an_error(mock: MockServer) -> None:
    replies = iter(["8", "I cannot say", "42"])
    mock.reply = lambda prompt: next(replies)
    try:
        judge = RatingVerifier(Asker(endpoint(mock, api="chat", concurrency=1)))
        batch = prompts(["1 + 2", "3 + 4", "5 + 1"])
        from synthloop.records import Candidates

        candidates = Candidates(samples={"completion": ["3", "8", "6"]}, prompt_index=batch.index,
                                usage={"samples": np.ones(3)})
        scores = check_verifier(judge, candidates, batch)
    finally:
        mock.reply = answer_of
    assert scores.verdict.tolist() == [Verdict.PASS, Verdict.ERROR, Verdict.ERROR]
    assert scores.reward[0] == pytest.approx(7 / 9)
    assert scores.detail is not None and "no score" in scores.detail[1]
    assert "messages" in mock.requests[0] and scores.usage["tokens"].sum() > 0


def test_the_base_url_comes_from_the_config_or_the_environment() -> None:
    settings = OpenAISettings(model="m")
    with pytest.raises(ValueError, match="base_url: not set"):
        resolve_connection(settings, {})
    env = {"SYNTHLOOP_OPENAI_BASE_URL": "http://a:1/v1", "OPENAI_BASE_URL": "http://b:1/v1", "OPENAI_API_KEY": "s3"}
    connection = resolve_connection(settings, env)
    assert connection.base_url == "http://a:1/v1" and connection.api_key == "s3"
    assert "s3" not in repr(connection)
    assert resolve_connection(OpenAISettings(model="m", base_url="http://c:1/v1"), env).base_url == "http://c:1/v1"


def test_the_config_edge_validates_an_openai_generator_and_never_holds_a_key() -> None:
    from openai_mock import served_config
    from synthloop.configs import ConfigError, parse_config, to_yaml
    from synthloop.families.math import FAMILY, OpenAIGeneratorConfig

    config = parse_config(served_config("http://127.0.0.1:9/v1"))
    settings = FAMILY.validate(config)
    assert isinstance(settings.generator, OpenAIGeneratorConfig) and settings.generator.max_tokens == 12
    assert FAMILY.usage_per_draw(settings)["completion_tokens"] == 12 / 4
    assert "base_url: http://127.0.0.1:9/v1" in to_yaml(config)
    bad = served_config("http://127.0.0.1:9/v1")
    bad["generator"] = {**bad["generator"], "api_key": "sk-123"}
    with pytest.raises(ConfigError, match=r"^generator\.api_key: unknown key"):
        parse_config(bad)
    bad["generator"] = {"kind": "vllm", "model": "m"}
    with pytest.raises(ConfigError, match=r"^generator\.kind: unknown kind 'vllm'; allowed: 'hf', 'openai'"):
        parse_config(bad)
    star = served_config("http://127.0.0.1:9/v1")
    star["task"] = {**star["task"], "rationalize": True}
    with pytest.raises(ConfigError, match=r"^task\.rationalize: not supported"):
        parse_config(star)


def test_a_generator_pickles_for_worker_processes(mock: MockServer) -> None:
    import pickle

    generator = OpenAIGenerator(endpoint(mock), max_prompt_tokens=200)
    generator.generate(None, prompts(["1 + 2"]), rng=np.random.default_rng(0))  # its client now exists
    copy = pickle.loads(pickle.dumps(generator))
    again = copy.generate(None, prompts(["1 + 2"]), rng=np.random.default_rng(0))
    assert again.samples["completion"] == [" #### 3"]
