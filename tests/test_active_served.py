"""The active family with a teacher behind an OpenAI-compatible server (``generator.kind: endpoint``).

Against llama.cpp serving SmolLM2-135M on loopback (started here): the teacher writes the examples
of a short active run, the ``label`` stage is charged exactly the usage the server itself reports
for each committed request, an example the teacher did not write readably is an ERROR row (its
tokens still charged), and the API key never reaches the run directory. Against the scripted
server: a request that fails for good is an ERROR row with its reason, charged nothing, and the run
goes on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

pytest.importorskip("openai")
pytest.importorskip("transformers")

import pyarrow as pa
import pyarrow.parquet as pq

from crashsafe_support import FAST, ROOT
from llama_server import MODEL, LlamaServer, missing
from openai_mock import MockServer, usage_of
from synthloop.configs import ConfigError, RunConfig, load_config, parse_config
from synthloop.experiments import build_components, run_config
from synthloop.records import Verdict
from synthloop.store import RunStore
from synthloop.tasks.teachers import parse_example

TINY = ROOT / "tests" / "data" / "active-tiny.yaml"
SECRET = "sk-teacher-3c5f0a9e7d21"
KEY_ENV = "SYNTHLOOP_TEACHER_KEY"
MAX_TOKENS = 24


def served_data(url: str, *, examples: int = 4, **generator: Any) -> dict[str, Any]:
    """The tiny active run (a random 1-layer student choosing seeds by its loss) with a served
    teacher: two iterations of ``examples / 2`` teacher examples, parts of 2."""
    data = yaml.safe_load(TINY.read_text())
    data["generator"] = {"kind": "endpoint", "model": MODEL, "base_url": url, "max_tokens": MAX_TOKENS,
                         "temperature": 0.7, "concurrency": 2, "max_retries": 2, "backoff": 0.05,
                         "api_key_env": KEY_ENV, "seed_honoured": True, **generator}
    data["schedule"] = {"kind": "constant", "n0": examples // 2}
    data["budget"] = {"total": float(examples), "unit": "samples", "costs": {"label": {"samples": 1.0}},
                      "expected_acceptance": 1.0}
    data["loop"] = {"chunk_size": 2, "max_iterations": 2}
    return data


def served(url: str, **generator: Any) -> RunConfig:
    return parse_config(served_data(url, **generator))


def committed(run_dir: Path) -> dict[str, list[Any]]:
    tables = [pq.read_table(p) for p in sorted(run_dir.glob("iter-*/candidates/part-*.parquet"))]
    return pa.concat_tables(tables).to_pydict()


def label_charged(run_dir: Path) -> dict[str, float]:
    rows = [r for r in RunStore(run_dir).committed_ledger_rows() if r.stage == "label"]
    return {q: sum(r.quantities.get(q, 0.0) for r in rows) for q in ("samples", "tokens", "prompt_tokens",
                                                                     "completion_tokens")}


def assert_no_secret(run_dir: Path) -> None:
    for path in run_dir.rglob("*"):
        assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path


def test_an_endpoint_teacher_without_an_address_is_a_one_line_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SYNTHLOOP_OPENAI_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    data = served_data("http://127.0.0.1:9/v1")
    del data["generator"]["base_url"]
    with pytest.raises(ConfigError, match=r"^generator.base_url: not set, and neither is \$SYNTHLOOP_OPENAI_BASE_URL"):
        build_components(parse_config(data))


def test_the_served_example_config_plans_with_the_endpoint_teacher() -> None:
    config = load_config(ROOT / "examples" / "active-served.yaml")
    assert config.generator is not None and config.generator.kind == "endpoint"
    from synthloop.configs import family_for

    family = family_for(config)
    usage = family.usage_per_draw(family.validate(config))
    assert usage["label:samples"] == 1 and usage["label:tokens"] > 0


# -- the scripted server: a request lost for good ---------------------------------------------------


def example_reply(prompt: str) -> str:
    return "Question: What is 2 + 3 + 4?\nAnswer: 2 + 3 = 5. 5 + 4 = 9. #### 9"


@pytest.fixture(scope="module")
def mock() -> Iterator[MockServer]:
    server = MockServer(reply=example_reply).start()
    yield server
    server.stop()


def test_a_lost_teacher_request_is_an_error_row_charged_nothing(
        mock: MockServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    mock.requests.clear()
    mock.auth.clear()
    mock.then(["ok", "drop", "drop", "drop"])  # the second request fails its three attempts
    run_dir = tmp_path / "run"
    history = run_config(served(mock.url, concurrency=1), run_dir=run_dir, open_store=FAST)
    rows = committed(run_dir)
    errors = rows["extra.request_error"]
    lost = [i for i, e in enumerate(errors) if e]
    assert len(lost) == 1 and rows["verdict"][lost[0]] == Verdict.ERROR
    assert rows["detail"][lost[0]].startswith("request failed: connection failed")
    assert rows["usage.tokens"][lost[0]] == 0 and rows["usage.samples"][lost[0]] == 0
    kept = [i for i in range(len(errors)) if not errors[i]]
    assert all(rows["verdict"][i] == Verdict.PASS for i in kept)  # the scripted teacher writes right sums
    # the budget (4 samples) paid for the 4 examples written, not for the lost draw
    assert sum(r.n_generated for r in history) == len(errors) == 5 and len(kept) == 4
    expected = sum(sum(usage_of(rows["extra.teacher_prompt"][i]).values()) for i in kept)
    assert label_charged(run_dir)["tokens"] == expected == sum(rows["usage.tokens"])
    assert label_charged(run_dir)["samples"] == 4
    assert set(mock.auth) == {f"Bearer {SECRET}"}  # the key was sent, and never written
    assert_no_secret(run_dir)


# -- llama.cpp serving SmolLM2 --------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    if missing() is not None:
        pytest.skip(str(missing()))
    server = LlamaServer(tmp_path_factory.mktemp("llama") / "server.log").start()
    yield server
    server.stop()


def test_a_served_teacher_is_charged_exactly_what_the_server_reported(
        llama: LlamaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    run_dir = tmp_path / "run"
    history = run_config(served(llama.url), run_dir=run_dir, open_store=FAST)
    rows = committed(run_dir)
    n = len(rows["verdict"])
    assert n >= 4 and not any(rows["extra.request_error"]) and all(rows["sample.teacher"][i] == "llm" for i in range(n))
    reported = {"prompt_tokens": 0, "completion_tokens": 0}
    for i in range(n):  # the same request again, raw: the server says what it cost and what it wrote
        raw = llama.post("chat/completions", {
            "model": MODEL, "messages": [{"role": "user", "content": rows["extra.teacher_prompt"][i]}],
            "max_tokens": MAX_TOKENS, "temperature": 0.7, "top_p": 1.0, "n": 1,
            "seed": rows["extra.request_seed"][i]})
        for quantity in reported:
            reported[quantity] += raw["usage"][quantity]
        text = raw["choices"][0]["message"]["content"]
        example = parse_example(text if "Question:" in text else f"Question: {text}")
        assert rows["sample.question"][i] == (example[0] if example else "")
        if example is None:  # not a readable example: an ERROR, its tokens still charged
            assert rows["verdict"][i] == Verdict.ERROR and rows["usage.tokens"][i] > 0
        else:
            assert rows["verdict"][i] in (Verdict.PASS, Verdict.FAIL)
    charged = label_charged(run_dir)
    assert charged["prompt_tokens"] == reported["prompt_tokens"] > 0
    assert charged["completion_tokens"] == reported["completion_tokens"] > 0
    assert charged["tokens"] == sum(reported.values()) == float(np.sum(rows["usage.tokens"]))
    assert charged["samples"] == n == sum(r.n_generated for r in history)
    assert_no_secret(run_dir)


def test_the_judge_selectors_ask_the_served_teacher_for_ratings(mock: MockServer,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from synthloop.testing import check_prompt_policy

    monkeypatch.setenv(KEY_ENV, SECRET)
    data = served_data(mock.url)
    data["task"]["seeds"] = {"selector": "judge", "candidates": 1.5}
    parts = build_components(parse_config(data))
    mock.requests.clear()
    check_prompt_policy(parts.prompt_policy, parts.task, parts.learner.model)
    judged = [r["messages"][-1]["content"] for r in mock.requests]
    assert judged and all(r["max_tokens"] == 4 and r["temperature"] == 0 for r in mock.requests)
    assert all(text.startswith("Rate the student's answer") for text in judged)
