"""Your own data (``task.kind: data``): JSONL, Parquet and ``datasets`` folders, the verifiers (a
user's callable that raises gives ERROR verdicts, counted), and one-line errors for bad files."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from synthloop.configs import ConfigError, parse_config  # noqa: E402
from synthloop.records import Candidates, Prompts, Verdict  # noqa: E402
from synthloop.tasks.data import (  # noqa: E402
    CallableVerifier,
    DataError,
    ExactMatch,
    NormalizedMatch,
    load_examples,
    split_examples,
)
from synthloop.testing import check_task, check_verifier  # noqa: E402
from torch_threads import one_thread  # noqa: E402, F401  (autouse: one torch thread for this module)

ROOT = Path(__file__).resolve().parents[1]

FLAKY = '''
def check(completion, reference):
    """Raises for every reference divisible by three; else the first word must equal it."""
    if int(reference) % 3 == 0:
        raise RuntimeError("refusing multiples of three\\nsecond line never shown")
    words = completion.split()
    return bool(words) and words[0] == reference
'''


def rows(n: int = 120) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        a, b = (int(x) for x in rng.integers(0, 10, 2))
        out.append({"uid": f"r{k}", "question": f"What is {a} + {b}?", "answer": a + b})
    return out


def write_jsonl(path: Path, data: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    return path


def config(tmp: Path, data: Path, **task: object) -> dict[str, object]:
    """A tiny GPT-2 briefly pretrained on the training rows, a user verifier, two iterations."""
    return {
        "name": "data-test", "seed": 0,
        "task": {"kind": "data", "path": str(data), "prompt_field": "question", "answer_field": "answer",
                 "id_field": "uid", "held_out": 30, "verifier": "flaky:check",
                 "verifier_path": str(tmp / "plugins"), **task},
        "model": {"kind": "scratch", "n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 48,
                  "vocab_size": 96, "pretrain_steps": 40, "pretrain_batch_size": 32, "pretrain_lr": 1e-2},
        "generator": {"kind": "hf", "max_new_tokens": 4, "temperature": 1.0, "batch_size": 64,
                      "eval_batch_size": 64, "bf16": False},
        "learner": {"kind": "sft", "lr": 1e-3, "batch_size": 16, "bf16": False},
        "selector": {"kind": "passed"},
        "schedule": {"kind": "constant", "n0": 8},
        "budget": {"total": 5000, "unit": "tokens", "costs": {"generate": {"tokens": 1.0}, "train": {"tokens": 1.0}}},
        "loop": {"max_iterations": 2, "store_candidates": "all"},
    }




@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "flaky.py").write_text(FLAKY)
    return folder


def test_jsonl_task_runs_end_to_end_and_a_raising_verifier_gives_counted_errors(
        tmp_path: Path, plugins: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq

    from synthloop.experiments import run_config

    monkeypatch.setenv("SYNTHLOOP_CACHE", str(tmp_path / "cache"))
    data = rows()
    cfg = parse_config(config(tmp_path, write_jsonl(tmp_path / "rows.jsonl", data)))
    history = run_config(cfg, run_dir=tmp_path / "run")
    answer_of = {r["uid"]: r["answer"] for r in data}
    candidates = pq.read_table(tmp_path / "run" / "iter-0000" / "candidates").to_pylist()
    assert len(history) >= 1 and len(candidates) == history[0].n_generated > 0
    errors = [c for c in candidates if c["verdict"] == Verdict.ERROR]
    # exactly the prompts whose reference is a multiple of three are errors, with the one-line reason
    assert {c["sample.id"] for c in errors} == {c["sample.id"] for c in candidates
                                                if answer_of[c["sample.id"]] % 3 == 0}
    assert errors and all(math.isnan(c["reward"]) for c in errors)
    assert errors[0]["detail"] == "flaky:check raised RuntimeError: refusing multiples of three"
    assert history[0].verdicts["error"] == len(errors)
    assert history[0].verdicts["pass"] + history[0].verdicts["fail"] + len(errors) == len(candidates)
    # the held-out rows are scored by the same verifier: about a third of them are errors
    assert 0.1 < history[0].eval["error_rate"] < 0.6
    assert history[-1].cumulative_cost <= 5000


def test_hf_datasets_folder_and_parquet_read_the_same_rows_as_jsonl(tmp_path: Path, plugins: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset, DatasetDict

    from synthloop.experiments import build_components

    data = rows(60)
    jsonl = write_jsonl(tmp_path / "rows.jsonl", data)
    pq.write_table(pa.Table.from_pylist(data), tmp_path / "rows.parquet")
    Dataset.from_list(data).save_to_disk(str(tmp_path / "folder"))
    DatasetDict({"train": Dataset.from_list(data), "test": Dataset.from_list(data[:5])}).save_to_disk(
        str(tmp_path / "dict"))
    fields = {"prompt_field": "question", "answer_field": "answer", "id_field": "uid"}
    expected = load_examples(jsonl, **fields)
    assert expected[3].answer == str(data[3]["answer"]) and expected[3].id == "r3"
    assert load_examples(tmp_path / "rows.parquet", **fields) == expected
    assert load_examples(tmp_path / "folder", **fields) == expected
    assert load_examples(tmp_path / "dict", split="test", **fields) == expected[:5]
    # a datasets folder through the config edge to a working task
    monkeypatch.setenv("SYNTHLOOP_CACHE", str(tmp_path / "cache"))
    cfg = parse_config(config(tmp_path, tmp_path / "folder", held_out=0.25, verifier="normalized",
                              verifier_path=None) | {"model": {"kind": "tiny", "n_layer": 1, "n_embd": 16,
                                                                 "n_head": 2, "n_positions": 48, "vocab_size": 96}})
    task = build_components(cfg).task
    check_task(task)
    assert (task.pool_size, len(task.held_out)) == (45, 15)  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"^task\.path: .*hf_split: one of train, test"):
        parse_config(config(tmp_path, tmp_path / "dict"))


def test_the_split_is_seeded_disjoint_and_sized_by_count_or_fraction(tmp_path: Path) -> None:
    examples = load_examples(write_jsonl(tmp_path / "r.jsonl", rows(50)), prompt_field="question",
                             answer_field="answer")
    train, held = split_examples(examples, held_out=10, seed=3)
    again, held_again = split_examples(examples, held_out=10, seed=3)
    other, _ = split_examples(examples, held_out=10, seed=4)
    assert (train, held) == (again, held_again) and train != other
    assert len(held) == 10 and not {e.id for e in train} & {e.id for e in held}
    assert len(split_examples(examples, held_out=0.3, seed=0, train_size=20)[0]) == 20
    with pytest.raises(DataError, match="held_out"):
        split_examples(examples, held_out=50, seed=0)


def _scored(verifier: Any, completions: list[str], answers: list[str]) -> Any:
    prompts = Prompts(index=np.arange(len(answers)), items={"answer": answers})
    candidates = Candidates(samples={"completion": completions}, prompt_index=np.arange(len(answers)),
                            usage={"samples": np.ones(len(answers))})
    return check_verifier(verifier, candidates, prompts)


def test_built_in_matches_and_every_way_a_user_callable_can_go_wrong() -> None:
    exact = _scored(ExactMatch(), [" 12 ", "12.0", "Paris"], ["12", "12", "paris"])
    assert list(exact.verdict) == [Verdict.PASS, Verdict.FAIL, Verdict.FAIL]
    normalized = _scored(NormalizedMatch(), [" 12 ", "12.0", "Paris.", "1,000", "13"], ["12", "12", "paris", "1000", "12"])
    assert list(normalized.verdict) == [Verdict.PASS] * 4 + [Verdict.FAIL]

    def user(completion: str, reference: str) -> Any:
        return {"ok": True, "no": np.bool_(False), "half": 0.5, "low": 0.2, "big": 2.0, "nan": math.nan,
                "text": "yes"}[completion]

    verifier = CallableVerifier(user, name="mine:user", pass_threshold=0.5, timeout_seconds=0.3)
    outputs = ["ok", "no", "half", "low", "big", "nan", "text"]
    scores = _scored(verifier, outputs, ["x"] * len(outputs))
    assert list(scores.verdict) == [Verdict.PASS, Verdict.FAIL, Verdict.PASS, Verdict.FAIL] + [Verdict.ERROR] * 3
    assert list(scores.reward[:4]) == [1.0, 0.0, 0.5, 0.2] and np.isnan(scores.reward[4:]).all()
    assert "returned 2.0, expected a bool or a number in [0, 1]" in scores.detail[4]


def test_a_user_callable_that_raises_or_hangs_is_an_error_not_a_crash() -> None:
    def user(completion: str, reference: str) -> bool:
        if completion == "slow":
            time.sleep(2)
        return 1 / 0 > 0

    scores = _scored(CallableVerifier(user, name="m:f", timeout_seconds=0.2), ["boom", "slow"], ["1", "1"])
    assert list(scores.verdict) == [Verdict.ERROR, Verdict.ERROR]
    assert scores.detail[0] == "m:f raised ZeroDivisionError: division by zero"
    assert "took more than 0.2 s" in scores.detail[1]


@pytest.mark.parametrize(("change", "error"), [
    ({"path": "missing.jsonl"}, r"^task\.path: .*missing\.jsonl: no such file"),
    ({"prompt_field": "prompt"}, r"^task\.prompt_field: .* has no field 'prompt'; its fields are uid, question, answer$"),
    ({"id_field": "key"}, r"^task\.id_field: .*no field 'key'"),
    ({"verifier": "flaky:nothing"}, r"^task\.verifier: module 'flaky' has no 'nothing'$"),
    ({"verifier": "absent:check"}, r"^task\.verifier: no file .*absent\.py"),
    ({"verifier": "close enough"}, r"^task\.verifier: .*neither one of exact, normalized, math-verify nor module:function"),
    ({"template": "no slot"}, r"^task\.template: .*must contain \{prompt\}"),
    ({"held_out": 2.5}, r"^task\.held_out: .*a count must be whole"),
    ({"path": "rows.csv"}, r"^task\.path: .*cannot tell the format"),
])
def test_bad_files_fields_and_verifiers_are_one_line_config_errors(tmp_path: Path, plugins: Path,
                                                                    change: dict[str, str], error: str) -> None:
    write_jsonl(tmp_path / "rows.jsonl", rows(20))
    (tmp_path / "rows.csv").write_text("a,b\n")
    task_change = {k: (str(tmp_path / v) if k == "path" else v) for k, v in change.items()}
    with pytest.raises(ConfigError, match=error) as caught:
        parse_config(config(tmp_path, tmp_path / "rows.jsonl", **task_change))
    assert "\n" not in str(caught.value)


def test_bad_rows_name_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": 1}\n{not json\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not a JSON object"):
        load_examples(bad, prompt_field="question", answer_field="answer")
    bad.write_text('{"question": "q", "answer": 1}\n{"question": 5, "answer": 1}\n')
    with pytest.raises(DataError, match=r"row 1: field 'question' must be non-empty text"):
        load_examples(bad, prompt_field="question", answer_field="answer")


def test_the_example_config_plans_with_its_plugin_verifier(monkeypatch: pytest.MonkeyPatch) -> None:
    from synthloop.configs import family_for, load_config
    from synthloop.families.data import make_verifier

    monkeypatch.chdir(ROOT)  # the example's paths are relative to the repository root, where a user runs it
    cfg = load_config(ROOT / "examples" / "data-jsonl.yaml")
    verifier = make_verifier(family_for(cfg).validate(cfg).task)
    scores = _scored(verifier, [" 7", "8", "none"], ["7", "7", "7"])
    assert list(scores.verdict) == [Verdict.PASS, Verdict.FAIL, Verdict.ERROR]
