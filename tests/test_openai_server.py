"""The OpenAI-compatible client against a real server: llama.cpp serving SmolLM2-135M on loopback.

One server for the module (started here, stopped after). It answers a math task through the
client inside full synthloop runs; what the ledger charges equals what the server itself reports;
a server killed mid-run stops the run cleanly with nothing committed lost, and ``resume`` after a
restart finishes with the same result as a run that never stopped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llama_server import MODEL, LlamaServer, missing

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))

pytest.importorskip("openai")

from openai_mock import served_config  # noqa: E402
from synthloop.configs import parse_config  # noqa: E402
from synthloop.engines.client import Endpoint  # noqa: E402
from synthloop.engines.judge import Asker  # noqa: E402
from synthloop.engines.openai_config import Connection, OpenAISettings  # noqa: E402
from synthloop.engines.openai_generator import (  # noqa: E402
    EngineUnavailableError,
    OpenAIGenerator,
    probe_seed,
)
from synthloop.events import PartDone  # noqa: E402
from synthloop.records import IterationRecord, Prompts  # noqa: E402
from synthloop.testing import check_generator  # noqa: E402

SECRET = "sk-llama-0d9e2b7c41aa"
QUESTIONS = ["What is 2 + 3?", "What is 7 - 4?", "What is 1 + 8?"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    llama = LlamaServer(tmp_path_factory.mktemp("llama") / "server.log").start()
    yield llama
    llama.stop()


def settings(**options: Any) -> OpenAISettings:
    return OpenAISettings.model_validate({"model": MODEL, "max_tokens": 8, "temperature": 0.8, **options})


def test_the_generator_keeps_its_contract_and_reports_what_the_server_reports(server: LlamaServer) -> None:
    endpoint = Endpoint(settings(stop=["\n"], logprobs=True), Connection(server.url), api="completions")
    assert probe_seed(endpoint)  # llama.cpp reproduces a sample from its seed
    prompts = Prompts(index=np.arange(2), items={"prompt": [f"Question: {q}\nAnswer:" for q in QUESTIONS[:2]]})
    generator = OpenAIGenerator(endpoint, max_prompt_tokens=200, seed_honoured=True)
    candidates = check_generator(generator, None, prompts)  # same rng, same completions
    logprob = candidates.extra["logprob"]  # summed over the tokens (0 for an empty completion)
    assert np.isfinite(logprob).all() and (logprob <= 0).all() and (logprob < 0).any()
    for i, prompt in enumerate(prompts.items["prompt"]):
        raw = server.post("completions", {"model": MODEL, "prompt": prompt, "max_tokens": 8, "temperature": 0.8,
                                           "top_p": 1.0, "stop": ["\n"], "seed": int(candidates.extra["request_seed"][i])})
        assert raw["choices"][0]["text"] == candidates.samples["completion"][i]
        assert raw["usage"]["prompt_tokens"] == candidates.usage["prompt_tokens"][i]
        assert raw["usage"]["completion_tokens"] == candidates.usage["completion_tokens"][i]


def test_chat_answers_through_the_asker(server: LlamaServer) -> None:
    endpoint = Endpoint(settings(api="chat", max_tokens=6), Connection(server.url))
    answers = Asker(endpoint).ask(QUESTIONS[:2], rng=np.random.default_rng(0))
    assert [a.error for a in answers] == ["", ""]
    assert all(a.text and 0 < a.completion_tokens <= 6 and a.prompt_tokens > 10 for a in answers)


def config(server: LlamaServer, name: str) -> Any:
    data = served_config(server.url, name=name)
    data["generator"].update({"api_key_env": "SYNTHLOOP_LLAMA_KEY"})  # seed_honoured unset: probed
    return parse_config(data)


def committed(run_dir: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables([pq.read_table(p) for p in sorted(run_dir.glob("iter-*/candidates/part-*.parquet"))])


def summary(history: list[IterationRecord]) -> list[tuple[Any, ...]]:
    return [(r.n_selected, r.n_generated, dict(r.verdicts), r.cost["generate"], r.selected_sha256) for r in history]


@pytest.fixture(scope="module")
def reference(server: LlamaServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[IterationRecord]]:
    from synthloop.experiments import run_config

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SYNTHLOOP_LLAMA_KEY", SECRET)
        run_dir = tmp_path_factory.mktemp("ref") / "served"
        return run_dir, run_config(config(server, "served"), run_dir=run_dir)


def test_a_full_run_is_charged_exactly_what_the_server_reported(
        server: LlamaServer, reference: tuple[Path, list[IterationRecord]]) -> None:
    run_dir, history = reference
    assert len(history) == 2 and all(r.n_selected == 2 for r in history)
    table = committed(run_dir)
    assert not any(table.column("extra.request_error").to_pylist())
    assert all(table.column("extra.seed_honoured").to_pylist())
    charged = sum(r.cost["generate"] for r in history)
    assert charged == table.column("usage.tokens").to_numpy().sum()
    # ask the server again, raw, with each committed row's prompt and seed: it reports the same usage
    g = config(server, "x").generator.params()
    reported = 0
    for prompt, seed in zip(table.column("sample.prompt").to_pylist(),
                            table.column("extra.request_seed").to_pylist(), strict=True):
        raw = server.post("completions", {"model": MODEL, "prompt": prompt, "max_tokens": g["max_tokens"],
                                           "temperature": g["temperature"], "top_p": 1.0, "stop": g["stop"],
                                           "seed": seed})
        reported += raw["usage"]["prompt_tokens"] + raw["usage"]["completion_tokens"]
    assert charged == reported > 0
    for path in run_dir.rglob("*"):
        assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path


def test_killing_the_server_mid_run_loses_nothing_and_resume_finishes_the_same_run(
        server: LlamaServer, reference: tuple[Path, list[IterationRecord]], tmp_path: Path) -> None:
    from synthloop.experiments import resume_run, run_config

    run_dir = tmp_path / "served"
    kills: list[object] = []

    def kill_after_first_part(event: object) -> None:
        if isinstance(event, PartDone) and not kills:
            kills.append(event)
            server.kill()

    try:
        with pytest.raises(EngineUnavailableError, match=r"none of \d+ requests succeeded \(first: connection failed"):
            run_config(config(server, "served"), run_dir=run_dir, report=kill_after_first_part)
    finally:
        server.start()
    parts = {p: p.read_bytes() for p in run_dir.glob("iter-*/candidates/part-*.parquet")}
    assert len(kills) == 1 and len(parts) == 1
    _, history = resume_run(run_dir)
    assert all(p.read_bytes() == data for p, data in parts.items())
    assert summary(history) == summary(reference[1])
    assert math.isclose(sum(r.cost["generate"] for r in history), committed(run_dir).column("usage.tokens")
                        .to_numpy().sum())
