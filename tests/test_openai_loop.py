"""Full synthloop runs whose generator is a (scripted, faulty) OpenAI-compatible server.

Each committed reply is charged exactly once, as the server reported it, however many retries it
took; a request that fails for good is an ERROR verdict with its reason; a server that goes down
stops the run cleanly with nothing committed lost, and ``resume`` finishes it once the server is
back, with the same result as a run that never stopped; the API key never reaches the run directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("openai")
pytest.importorskip("math_verify")
pytest.importorskip("transformers")

import pyarrow.parquet as pq

from openai_mock import MockServer, served_config, usage_of
from synthloop.configs import parse_config
from synthloop.engines.openai_generator import EngineUnavailableError
from synthloop.events import PartDone
from synthloop.experiments import resume_run, run_config
from synthloop.records import IterationRecord, Verdict

SECRET = "sk-test-7f3a9c1e55d04b2b"


@pytest.fixture(scope="module")
def mock() -> Iterator[MockServer]:
    server = MockServer().start()
    yield server
    server.stop()


def config(mock: MockServer, **generator: Any) -> Any:
    data = served_config(mock.url)
    data["generator"].update({"seed_honoured": True, "api_key_env": "SYNTHLOOP_TEST_KEY", **generator})
    return parse_config(data)


def candidates_of(run_dir: Path) -> Any:
    import pyarrow as pa

    return pa.concat_tables([pq.read_table(p) for p in sorted(run_dir.glob("iter-*/candidates/part-*.parquet"))])


def summary(history: list[IterationRecord]) -> list[tuple[Any, ...]]:
    return [(r.n_selected, r.n_generated, dict(r.verdicts), r.cost["generate"], r.selected_sha256) for r in history]


@pytest.fixture(scope="module")
def reference(mock: MockServer, tmp_path_factory: pytest.TempPathFactory) -> list[IterationRecord]:
    """The run with a server that never fails."""
    return run_config(config(mock), run_dir=tmp_path_factory.mktemp("ref") / "served")


def test_retried_faults_are_charged_once_a_lost_request_is_an_error(
        mock: MockServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTHLOOP_TEST_KEY", SECRET)
    mock.requests.clear()
    mock.auth.clear()
    # one request at a time, so that the script's faults are retried in order: the drops exhaust
    # one request's three attempts, the others succeed on a retry
    mock.then(["429", "ok", "malformed", "503", "ok", "drop", "drop", "drop"])
    run_dir = tmp_path / "served"
    history = run_config(config(mock, concurrency=1), run_dir=run_dir)
    table = candidates_of(run_dir)
    errors = table.column("extra.request_error").to_pylist()
    assert sum(bool(e) for e in errors) == 1
    failed = [i for i, e in enumerate(errors) if e]
    assert table.column("verdict").to_pylist()[failed[0]] == Verdict.ERROR
    assert table.column("detail").to_pylist()[failed[0]].startswith("request failed: connection failed")
    assert sum(r.verdicts["error"] for r in history) == 1
    # charged: the server's usage for each committed reply, once; nothing for the lost one
    prompts = table.column("sample.prompt").to_pylist()
    expected = sum(usage_of(p)["prompt_tokens"] + 3 for p, e in zip(prompts, errors, strict=True) if not e)
    assert sum(r.cost["generate"] for r in history) == expected == table.column("usage.tokens").to_numpy().sum()
    assert len(mock.requests) > len(prompts)  # the retries did happen
    # the key was sent, and was never written into the run directory
    assert set(mock.auth) == {f"Bearer {SECRET}"}
    for path in run_dir.rglob("*"):
        assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path


def test_a_server_going_down_stops_cleanly_and_resume_equals_an_unbroken_run(
        mock: MockServer, reference: list[IterationRecord], tmp_path: Path) -> None:
    run_dir = tmp_path / "served"
    parts_done: list[object] = []

    def go_down(event: object) -> None:
        if isinstance(event, PartDone):
            parts_done.append(event)
            mock.default = "drop"

    try:
        with pytest.raises(EngineUnavailableError, match=r"none of \d+ requests succeeded"):
            run_config(config(mock), run_dir=run_dir, report=go_down)
    finally:
        mock.default = "ok"
    committed = {p: p.read_bytes() for p in run_dir.glob("iter-*/candidates/part-*.parquet")}
    assert len(parts_done) == 1 and len(committed) == 1
    _, history = resume_run(run_dir)
    assert all(p.read_bytes() == data for p, data in committed.items())
    assert summary(history) == summary(reference)
    assert np.isclose(sum(r.cost["generate"] for r in history), candidates_of(run_dir).column("usage.tokens")
                      .to_numpy().sum())
