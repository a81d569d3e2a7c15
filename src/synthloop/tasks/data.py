"""The user's own prompts and reference answers: from a JSONL file, a Parquet file or a local
Hugging Face ``datasets`` folder (``Dataset.save_to_disk``), with a verifier of their choice.

What a practitioner coming from TRL, verl or NeMo-Skills has is a file of prompts with reference
answers and a way to check an answer; this module turns that into a :class:`~synthloop.protocols.Task`:

- :func:`load_examples` reads the rows (field names configurable; one-line errors that name the file,
  the line or the missing field and the fields there are);
- :func:`split_examples` fixes a seeded train / held-out split, so every run and schedule is
  evaluated on the same held-out rows;
- verifiers: :class:`ExactMatch`, :class:`NormalizedMatch` (whitespace, case and number forms),
  math-verify (:class:`synthloop.tasks.math.MathVerifier`), or the user's own callable
  ``(completion, reference) -> bool | float`` (:class:`CallableVerifier`), named ``module:function``
  and found with :mod:`importlib` (:func:`resolve_callable`). A callable that raises, hangs or
  returns something that is not a reward gives an ERROR verdict with the reason, never a crash.

Nothing here imports torch; ``datasets`` is imported only to read a ``datasets`` folder.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from synthloop.protocols import Generator, Verifier
from synthloop.records import Candidates, Prompts, Scores, Verdict
from synthloop.tasks.math import run_with_timeout

FORMATS = ("jsonl", "parquet", "hf")


class DataError(ValueError):
    """A data file, field or verifier the task cannot use; the message is one line."""


@dataclass(frozen=True)
class Example:
    """One row of the user's data: a prompt and its reference answer, with a stable id."""

    id: str
    prompt: str
    answer: str


# -- reading ------------------------------------------------------------------------------------


def data_format(path: Path, declared: str = "auto") -> str:
    """``jsonl``, ``parquet`` or ``hf`` (a ``datasets`` folder), from ``declared`` or the path."""
    if declared != "auto":
        return declared
    if path.is_dir():
        return "hf"
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise DataError(f"{path}: cannot tell the format from the name; use a .jsonl or .parquet file, a "
                    f"datasets folder (save_to_disk), or set format: jsonl | parquet | hf")


def fields_of(path: Path, *, fmt: str = "auto", split: str | None = None) -> list[str]:
    """The field names a data source offers, read cheaply (first JSONL row, Parquet schema,
    a ``datasets`` folder's ``dataset_info.json``): what validation checks a config against."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    kind = data_format(path, fmt)
    if kind == "jsonl":
        rows = _jsonl_rows(path, limit=1)
        if not rows:
            raise DataError(f"{path}: the file holds no rows")
        return list(rows[0])
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except (OSError, ValueError) as error:
            raise DataError(f"{path}: not a readable Parquet file ({_first_line(error)})") from None
    info = _hf_folder(path, split) / "dataset_info.json"
    try:
        return list(json.loads(info.read_text())["features"])
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{path}: not a datasets folder written by save_to_disk (no readable "
                        f"{info.name} with features)") from None


def _hf_folder(path: Path, split: str | None) -> Path:
    """The folder of one split: ``path`` for a Dataset, ``path/<split>`` for a DatasetDict."""
    splits_file = path / "dataset_dict.json"
    if not splits_file.is_file():
        if split is not None:
            raise DataError(f"{path}: a single Dataset folder has no splits (remove hf_split: {split})")
        return path
    try:
        splits = list(json.loads(splits_file.read_text())["splits"])
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{splits_file}: unreadable") from None
    if split is None:
        raise DataError(f"{path}: a DatasetDict folder; choose one with hf_split: one of {', '.join(splits)}")
    if split not in splits:
        raise DataError(f"{path}: no split {split!r}; the splits are {', '.join(splits)}")
    return path / split


def _jsonl_rows(path: Path, *, limit: int | None = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as error:
                    raise DataError(f"{path}:{number}: not a JSON object ({_first_line(error)})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
                if limit is not None and len(rows) >= limit:
                    break
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read ({_first_line(error)})") from None
    return rows


def read_rows(path: Path, *, fmt: str = "auto", split: str | None = None) -> list[dict[str, Any]]:
    """Every row of the source as a dict (field name -> value)."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    kind = data_format(path, fmt)
    if kind == "jsonl":
        return _jsonl_rows(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return list(pq.read_table(path).to_pylist())
        except (OSError, ValueError) as error:
            raise DataError(f"{path}: not a readable Parquet file ({_first_line(error)})") from None
    from datasets import load_from_disk

    folder = _hf_folder(path, split)
    try:
        dataset = load_from_disk(str(folder))
    except (OSError, ValueError, FileNotFoundError) as error:
        raise DataError(f"{folder}: datasets cannot load it ({_first_line(error)})") from None
    return list(dataset.to_list())


def load_examples(path: Path, *, prompt_field: str, answer_field: str, id_field: str | None = None,
                  fmt: str = "auto", split: str | None = None) -> list[Example]:
    """The rows as examples. Prompts must be text; answers may be text or numbers (read as text).
    Without ``id_field`` a row's id is its position in the file."""
    rows = read_rows(path, fmt=fmt, split=split)
    if not rows:
        raise DataError(f"{path}: the source holds no rows")
    for name in (prompt_field, answer_field, id_field):
        if name is not None and name not in rows[0]:
            raise DataError(f"{path}: no field {name!r}; the fields are {', '.join(map(str, rows[0]))}")
    examples = [_example(path, k, row, prompt_field, answer_field, id_field) for k, row in enumerate(rows)]
    ids = [e.id for e in examples]
    if id_field is not None and len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{path}: field {id_field!r} repeats the id {duplicate!r}; ids must be unique")
    return examples


def _example(path: Path, k: int, row: dict[str, Any], prompt_field: str, answer_field: str,
             id_field: str | None) -> Example:
    prompt, answer = row.get(prompt_field), row.get(answer_field)
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{path}: row {k}: field {prompt_field!r} must be non-empty text, got {prompt!r:.60}")
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        raise DataError(f"{path}: row {k}: field {answer_field!r} must be text or a number, got {answer!r:.60}")
    return Example(id=str(row[id_field]) if id_field else str(k), prompt=prompt, answer=str(answer).strip())


def split_examples(examples: Sequence[Example], *, held_out: float, seed: int,
                   train_size: int | None = None) -> tuple[list[Example], list[Example]]:
    """A seeded split: ``held_out`` rows (a count, or a fraction when below 1) for evaluation, the
    rest (at most ``train_size``) for training. The same file and seed always give the same split.

    >>> rows = [Example(str(i), f"q{i}", str(i)) for i in range(10)]
    >>> train, held = split_examples(rows, held_out=0.3, seed=0)
    >>> len(train), len(held), sorted(e.id for e in train + held) == sorted(e.id for e in rows)
    (7, 3, True)
    """
    n = len(examples)
    n_held = round(held_out * n) if held_out < 1 else int(held_out)
    if not 1 <= n_held < n:
        raise DataError(f"held_out: {held_out} leaves {n - n_held} of {n} rows for training and {n_held} "
                        f"held out; both need at least one")
    order = np.random.default_rng(seed).permutation(n)
    held = [examples[i] for i in sorted(order[:n_held])]
    train = [examples[i] for i in sorted(order[n_held:])]
    return (train if train_size is None else train[:train_size]), held


# -- verifiers ------------------------------------------------------------------------------------


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _scores(results: Sequence[tuple[float, Verdict, str]]) -> Scores:
    return Scores(reward=np.array([r for r, _, _ in results], dtype=np.float64),
                  verdict=np.array([v for _, v, _ in results], dtype=np.int8),
                  usage={"samples": np.ones(len(results))}, detail=[d for _, _, d in results])


_NUMBER = re.compile(r"^[+-]?(\d[\d,]*\.?\d*|\.\d+)(e[+-]?\d+)?$")


def normalize(text: str) -> str:
    """Case folded, whitespace collapsed, trailing full stop dropped, numbers in one form
    (``1,000`` -> ``1000``, ``+3.50`` -> ``3.5``).

    >>> normalize("  The  Answer is 12. "), normalize("1,000.0"), normalize("+3.50"), normalize("-0")
    ('the answer is 12', '1000', '3.5', '0')
    """
    words = " ".join(text.split()).casefold().rstrip(".").strip()
    return " ".join(_number_form(w) for w in words.split(" "))


def _number_form(word: str) -> str:
    if not _NUMBER.match(word):
        return word
    try:
        value = float(word.replace(",", ""))
    except ValueError:
        return word
    if not math.isfinite(value):
        return word
    return str(int(value)) if value == int(value) else repr(value)


@dataclass(frozen=True)
class ExactMatch:
    """PASS when the completion, stripped of surrounding whitespace, equals the reference."""

    def verify(self, candidates: Candidates, prompts: Prompts) -> Scores:
        pairs = zip(candidates.samples["completion"], prompts.items["answer"], strict=True)
        return _scores([_match(str(c).strip() == str(a).strip(), str(c)) for c, a in pairs])


@dataclass(frozen=True)
class NormalizedMatch:
    """PASS when the completion and the reference are equal after :func:`normalize`."""

    def verify(self, candidates: Candidates, prompts: Prompts) -> Scores:
        pairs = zip(candidates.samples["completion"], prompts.items["answer"], strict=True)
        return _scores([_match(normalize(str(c)) == normalize(str(a)), str(c)) for c, a in pairs])


def _match(same: bool, completion: str) -> tuple[float, Verdict, str]:
    return (1.0, Verdict.PASS, "match") if same else (0.0, Verdict.FAIL, f"answered {completion.strip()[:40]!r}")


UserCheck = Callable[[str, str], Any]


@dataclass(frozen=True)
class CallableVerifier:
    """The user's own check ``function(completion, reference) -> bool | float``.

    ``True`` / ``False`` are rewards 1 / 0; a number must lie in [0, 1] and passes from
    ``pass_threshold`` up. An exception, a call that takes more than ``timeout_seconds`` (off the
    main thread, like math-verify's checks) or any other return value is an ERROR verdict (NaN
    reward) whose detail is the one-line reason.
    """

    function: UserCheck
    name: str = "user verifier"
    pass_threshold: float = 0.5
    timeout_seconds: float = 5.0

    def verify(self, candidates: Candidates, prompts: Prompts) -> Scores:
        pairs = zip(candidates.samples["completion"], prompts.items["answer"], strict=True)
        return _scores([self.check(str(c), str(a)) for c, a in pairs])

    def check(self, completion: str, reference: str) -> tuple[float, Verdict, str]:
        try:
            value = run_with_timeout(lambda: self.function(completion, reference), self.timeout_seconds)
        except Exception as error:  # the user's code failing is an ERROR verdict, never a crash
            return math.nan, Verdict.ERROR, f"{self.name} raised {type(error).__name__}: {_first_line(error)}"[:200]
        if isinstance(value, bool | np.bool_):
            return _match(bool(value), completion)
        if isinstance(value, int | float | np.integer | np.floating) and 0.0 <= float(value) <= 1.0:
            reward = float(value)
            verdict = Verdict.PASS if reward >= self.pass_threshold else Verdict.FAIL
            return reward, verdict, f"reward {reward:.3g}"
        return math.nan, Verdict.ERROR, f"{self.name} returned {value!r:.40}, expected a bool or a number in [0, 1]"


def resolve_callable(spec: str, *, search: Path | None = None) -> UserCheck:
    """The function named ``module:function`` (``module`` importable, or a ``.py`` file in ``search``)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise DataError(f"verifier: {spec!r} is not module:function (or exact, normalized, math-verify)")
    try:
        module = _import(module_name, search)
    except DataError:
        raise
    except Exception as error:  # the user's module failing to import is their error, reported in one line
        raise DataError(f"verifier: cannot import {module_name!r}: {type(error).__name__}: "
                        f"{_first_line(error)}") from None
    function = module
    for part in attribute.split("."):
        function = getattr(function, part, None)
        if function is None:
            raise DataError(f"verifier: module {module_name!r} has no {attribute!r}")
    if not callable(function):
        raise DataError(f"verifier: {spec!r} is not callable")
    return function


def _import(module_name: str, search: Path | None) -> Any:
    if search is None:
        return importlib.import_module(module_name)
    file = search / (module_name.replace(".", "/") + ".py")
    if not file.is_file():
        raise DataError(f"verifier: no file {file} (verifier_path is {search})")
    key = f"synthloop_user_verifier.{module_name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[key] = module
    return module


# -- the task -------------------------------------------------------------------------------------


def prompts_of(examples: Sequence[Example], index: Sequence[int], *, template: str) -> Prompts:
    """Prompt columns: ``prompt`` (the templated text, sampled from and trained on), ``question_prompt``
    (the same: what the SFT learner trains on), ``answer`` (reference) and ``id``."""
    chosen = [examples[i] for i in index]
    text = [template.replace("{prompt}", e.prompt) for e in chosen]
    return Prompts(index=np.asarray(index, dtype=np.int64),
                   items={"prompt": text, "question_prompt": text, "answer": [e.answer for e in chosen],
                          "id": [e.id for e in chosen]})


class DataTask:
    """Training prompts drawn uniformly from the training rows; held-out accuracy with ``evaluator``
    (a greedy generator) and the task's verifier. A :class:`~synthloop.protocols.PromptPool`."""

    def __init__(self, train: Sequence[Example], held_out: Sequence[Example], *, evaluator: Generator,
                 verifier: Verifier, template: str = "{prompt}", label: str = "data") -> None:
        if not train or not held_out:
            raise ValueError("a data task needs at least one training and one held-out example")
        self.train = list(train)
        self.held_out = list(held_out)
        self.evaluator = evaluator
        self.template = template
        self.label = label
        self._verifier = verifier

    @property
    def name(self) -> str:
        return f"data-{self.label}"

    @property
    def verifier(self) -> Verifier:
        return self._verifier

    @property
    def primary_metric(self) -> str:
        return "accuracy"

    @property
    def higher_is_better(self) -> bool:
        return True

    def sample_prompts(self, n: int, *, rng: np.random.Generator) -> Prompts:
        return self.prompts_at(rng.integers(0, len(self.train), size=n))

    @property
    def pool_size(self) -> int:
        return len(self.train)

    def prompts_at(self, indices: npt.NDArray[np.int64]) -> Prompts:
        return prompts_of(self.train, [int(i) for i in indices], template=self.template)

    def held_out_prompts(self) -> Prompts:
        return prompts_of(self.held_out, range(len(self.held_out)), template=self.template)

    def evaluate(self, model: Any, *, rng: np.random.Generator) -> dict[str, float]:
        prompts = self.held_out_prompts()
        candidates = self.evaluator.generate(model, prompts, rng=rng)
        scores = self._verifier.verify(candidates, prompts)
        rewards = np.nan_to_num(scores.reward, nan=0.0)
        return {"accuracy": float(np.mean(scores.verdict == Verdict.PASS)),
                "error_rate": float(np.mean(scores.verdict == Verdict.ERROR)),
                "mean_reward": float(rewards.mean())}
