"""Malformed input, as a careless or hostile user gives it, through the real command line.

Every case runs the CLI as a subprocess in a sandbox of its own (a working directory holding the
user's own ``config.yaml``, a runs folder, an out folder and a folder outside them all) and must end
with exit 2 for a bad config or command line (1 for a run-directory problem), one line on stderr of
under 300 characters naming the field or the file, no traceback, an answer within 5 s, and the
sandbox exactly as it was (every file's path, kind, size and content compared).

The subprocesses run on a few threads at once; each one is still the real entry point.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from synthloop.configs import ConfigError, load_config, make_planner, parse_config
from synthloop.names import PathEscapeError, check_name, child_path
from synthloop.schedules import ExplicitSchedule
from synthloop.yamlio import MAX_BYTES, load_yaml, shown

BASE = """\
name: corpus
seed: 0
task:
  kind: gaussian
  theta0: [3.0, 3.0]
  sigma: 1.0
  kappa: 1.0
learner:
  kind: mle
selector:
  kind: reward_proportional
schedule:
  kind: exponential
  growth: 1.0
  n0: auto
  iterations: 4
budget:
  total: 600
  unit: samples
  costs: {generate: 0.0, verify: 0.0, train: 1.0}
loop:
  store_candidates: all
compare:
  seeds: 2
  schedules:
    constant: {kind: constant, n0: auto, iterations: 4}
"""

DELETE = None
USER_CONFIG = b"# the user's own config.yaml: a run must never overwrite it\nname: mine\n"
ANSWER_WITHIN = 5.0  # seconds, on a quiet machine; see answer_limit
STARTUPS_WITHIN = 5  # under load: this many bare start-ups of the CLI (as many at once), measured in the same run
WORKERS = 4  # subprocesses at once: most of each one's time is start-up, which overlaps well


def edited(changes: dict[str, str | None]) -> str:
    """BASE with ``section.key`` (or a whole top-level ``section``) set to YAML text, or deleted."""
    lines = BASE.splitlines()
    for dotted, value in changes.items():
        section, _, key = dotted.rpartition(".")
        lines = _set_key(lines, section, key, value) if section else _set_section(lines, key, value)
    return "\n".join(lines) + "\n"


def _set_section(lines: list[str], key: str, value: str | None) -> list[str]:
    start = next((i for i, line in enumerate(lines) if line.startswith(f"{key}:")), len(lines))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith(" ")), len(lines))
    return lines[:start] + ([] if value is None else [f"{key}: {value}"]) + lines[end:]


def _set_key(lines: list[str], section: str, key: str, value: str | None) -> list[str]:
    start = lines.index(f"{section}:")
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith(" ")), len(lines))
    at = next((i for i in range(start + 1, end) if lines[i].startswith(f"  {key}:")), None)
    new = [] if value is None else [f"  {key}: {value}"]
    if at is None:
        return lines[: start + 1] + new + lines[start + 1:]
    after = next((i for i in range(at + 1, end) if not lines[i].startswith("   ")), end)  # skip its children
    return lines[:at] + new + lines[after:]


# -- the corpus --------------------------------------------------------------------------------

RUN = ("run", "{cfg}", "--runs-dir", "{runs}")
PLAN = ("plan", "{cfg}")
COMPARE = ("compare", "{cfg}", "--out", "{out}")


@dataclass(frozen=True)
class Case:
    id: str
    needle: str  # what the one line must contain: the field or the file ({cfg}, {sandbox} filled in)
    content: bytes | None = None  # written to {cfg}; None: ``prepare`` makes whatever {cfg} is
    args: tuple[str, ...] = RUN
    code: int = 2
    prepare: Callable[[Path], None] | None = field(default=None, compare=False)


def config_case(id: str, changes: dict[str, str | None], needle: str, args: tuple[str, ...] = RUN) -> Case:
    return Case(id, needle, edited(changes).encode(), args)


def text_case(id: str, text: str, needle: str, args: tuple[str, ...] = RUN) -> Case:
    return Case(id, needle, text.encode(), args)


def anchor_bomb(levels: int, use: str) -> str:
    """The billion-laughs document: each level is nine aliases of the one before."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, levels + 1):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n" + use.replace("BOMB", f"*a{levels}") + "\n"


BIG = "1" + "0" * 30  # 10**30
TYPES = [
    config_case("seed-true", {"seed": "true"}, "seed: Input should be a valid integer"),
    config_case("seed-negative", {"seed": "-1"}, "seed: Input should be greater than or equal to 0"),
    config_case("seed-huge", {"seed": BIG}, "seed: Input should be less than or equal to 4294967295"),
    config_case("seed-string", {"seed": "'0'"}, "seed: Input should be a valid integer"),
    config_case("seed-float", {"seed": "1.5"}, "seed: Input should be a valid integer"),
    config_case("seed-list", {"seed": "[0]"}, "seed: Input should be a valid integer"),
    config_case("iterations-true", {"schedule.iterations": "true"}, "schedule.exponential.iterations: Input should"),
    config_case("iterations-huge", {"schedule.iterations": BIG}, "schedule.exponential.iterations: Input should be less"),
    config_case("iterations-past-bound", {"schedule.iterations": "20000"},
                "schedule.exponential.iterations: Input should be less than or equal to 10000"),
    config_case("iterations-zero", {"schedule.iterations": "0"}, "schedule.exponential.iterations"),
    config_case("iterations-float", {"schedule.iterations": "2.5"}, "schedule.exponential.iterations"),
    config_case("iterations-string", {"schedule.iterations": "four"}, "schedule.exponential.iterations"),
    config_case("max-iterations-true", {"loop.max_iterations": "true"}, "loop.max_iterations"),
    config_case("max-iterations-huge", {"loop.max_iterations": BIG}, "loop.max_iterations"),
    config_case("eval-every-true", {"eval": "{every: true}"}, "eval.every"),
    config_case("eval-every-zero", {"eval": "{every: 0}"}, "eval.every"),
    config_case("total-true", {"budget.total": "true"}, "budget.total: Input should be a valid number"),
    config_case("total-string", {"budget.total": "lots"}, "budget.total: Input should be a valid number"),
    config_case("total-quoted-number", {"budget.total": "'600'"}, "budget.total: Input should be a valid number"),
    config_case("sigma-string", {"task.sigma": "'1.0'"}, "task.sigma: Input should be a valid number"),
    config_case("theta0-bool", {"task.theta0": "[true, 1.0]"}, "task.theta0.0: Input should be a valid number"),
    config_case("theta0-string-item", {"task.theta0": "['3', 3]"}, "task.theta0.0: Input should be a valid number"),
    config_case("theta0-string", {"task.theta0": "'3, 3'"}, "task.theta0: Input should be a valid list"),
    config_case("threshold-bool", {"selector": "{kind: threshold, threshold: true}"},
                "selector.threshold.threshold: Input should be a valid number"),
    config_case("unit-number", {"budget.unit": "5"}, "budget.unit: Input should be a valid string"),
    config_case("task-kind-number", {"task.kind": "5"}, "task.kind: Input should be a valid string"),
]

NON_FINITE = [
    config_case("theta0-nan", {"task.theta0": "[.nan, 3.0]"}, "task.theta0.0: Input should be a finite number"),
    config_case("theta0-inf", {"task.theta0": "[3.0, .inf]"}, "task.theta0.1: Input should be a finite number"),
    config_case("theta0-minus-inf", {"task.theta0": "[-.inf, 3.0]"}, "task.theta0.0: Input should be a finite number"),
    config_case("theta0-1e309", {"task.theta0": "[1e309, 3.0]"}, "task.theta0.0: Input should be a finite number"),
    config_case("theta0-1.0e+309", {"task.theta0": "[3.0, 1.0e+309]"}, "task.theta0.1: Input should be a finite"),
    config_case("sigma-nan", {"task.sigma": ".nan"}, "task.sigma: Input should be a finite number"),
    config_case("kappa-inf", {"task.kappa": ".inf"}, "task.kappa: Input should be a finite number"),
    config_case("total-inf", {"budget.total": ".inf"}, "budget.total: Input should be a finite number"),
    config_case("total-nan", {"budget.total": ".nan"}, "budget.total: Input should be a finite number"),
    config_case("total-1e309", {"budget.total": "1e309"}, "budget.total: Input should be a finite number"),
    config_case("n0-inf", {"schedule.n0": ".inf"}, "schedule.exponential.n0: Input should be a finite number"),
    config_case("n0-nan", {"schedule.n0": ".nan"}, "schedule.exponential.n0: Input should be a finite number"),
    config_case("growth-inf", {"schedule.growth": ".inf"}, "schedule.exponential.growth: Input should be a finite"),
    config_case("oversample-inf", {"loop.oversample": ".inf"}, "loop.oversample: Input should be a finite number"),
    config_case("oversample-nan", {"loop.oversample": ".nan"}, "loop.oversample: Input should be a finite number"),
    config_case("price-inf", {"budget.costs": "{train: .inf}"}, "budget.costs.train: Input should be a finite number"),
    config_case("price-nan-per-quantity", {"budget.costs": "{train: {samples: .nan}}"},
                "budget.costs.train.samples: Input should be a finite number"),
    config_case("acceptance-nan", {"budget.expected_acceptance": ".nan"}, "budget.expected_acceptance"),
    config_case("threshold-nan", {"selector": "{kind: threshold, threshold: .nan}"}, "selector.threshold.threshold"),
    config_case("draws-per-selected-inf", {"loop.max_draws_per_selected": ".inf"}, "loop.max_draws_per_selected"),
]

BOUNDS = [
    config_case("dim-huge", {"task.dim": BIG, "task.theta0": "[3.0]"}, "task.dim: Input should be less than or equal"),
    config_case("dim-1e9", {"task.dim": "1e9", "task.theta0": "[3.0]"}, "task.dim: Input should be a valid integer"),
    config_case("dim-billion", {"task.dim": "1000000000", "task.theta0": "[3.0]"}, "task.dim: Input should be less"),
    config_case("dim-zero", {"task.dim": "0", "task.theta0": "[3.0]"}, "task.dim"),
    config_case("dim-mismatch", {"task.dim": "3"}, "theta0 has 2 coordinates but dim is 3"),
    config_case("theta0-empty", {"task.theta0": "[]"}, "task.theta0: List should have at least 1 item"),
    config_case("theta0-too-long", {"task.theta0": "[" + ", ".join(["1.0"] * 5000) + "]"},
                "task.theta0: List should have at most"),
    config_case("sigma-zero", {"task.sigma": "0"}, "task.sigma: Input should be greater than 0"),
    config_case("kappa-negative", {"task.kappa": "-1"}, "task.kappa: Input should be greater than 0"),
    config_case("budget-huge", {"budget.total": BIG}, "past the bound of 1e+09"),
    config_case("budget-huge-fixed-n0", {"budget.total": BIG, "schedule": "{kind: constant, n0: 10}"},
                "schedule: the plan runs past 10000 iterations"),
    config_case("budget-huge-plan", {"budget.total": BIG}, "past the bound of 1e+09", PLAN),
    config_case("budget-huge-with-trackers", {"budget.total": BIG}, "past the bound of 1e+09",
                (*RUN, "--tensorboard", "{sandbox}/cwd/tb", "--mlflow", "{sandbox}/cwd/mlruns")),
    config_case("n0-huge", {"schedule.n0": "1e30"}, "schedule.exponential.n0: Input should be less than or equal"),
    config_case("n0-negative", {"schedule.n0": "-5"}, "schedule.exponential.n0: Input should be greater than 0"),
    config_case("n0-word", {"schedule.n0": "lots"}, "schedule.exponential.n0"),
    config_case("n0-true", {"schedule.n0": "true"}, "schedule.exponential.n0: Input should be a valid number"),
    config_case("growth-zero", {"schedule.growth": "0"}, "schedule.exponential.growth: Input should be greater than 0"),
    config_case("growth-huge", {"schedule.growth": "1e6"}, "schedule.exponential.growth: Input should be less"),
    config_case("growth-overflows", {"schedule.growth": "1000", "schedule.iterations": "10000"},
                "schedule: n_t overflows"),
    config_case("alpha-huge", {"schedule": "{kind: polynomial, alpha: 1000, n0: 5}"},
                "schedule.polynomial.alpha: Input should be less than or equal to 100"),
    config_case("alpha-missing", {"schedule": "{kind: polynomial, n0: 5}"},
                "schedule.polynomial.alpha: required field is missing"),
    config_case("slope-negative", {"schedule": "{kind: linear, n0: 5, slope: -1}"}, "schedule.linear.slope"),
    config_case("gaussian-optimal-sigma-zero", {"schedule": "{kind: gaussian_optimal, n0: 5, sigma: 0}"},
                "schedule.gaussian_optimal.sigma"),
    config_case("explicit-zero", {"schedule": "{kind: explicit, values: [3, 0]}"}, "schedule.explicit.values.1"),
    config_case("explicit-float", {"schedule": "{kind: explicit, values: [1.5]}"}, "schedule.explicit.values.0"),
    config_case("explicit-bool", {"schedule": "{kind: explicit, values: [true]}"}, "schedule.explicit.values.0"),
    config_case("explicit-huge", {"schedule": "{kind: explicit, values: [" + BIG + "]}"},
                "schedule.explicit.values.0: Input should be less than or equal"),
    config_case("explicit-too-long", {"schedule": "{kind: explicit, values: [" + ", ".join(["1"] * 10001) + "]}"},
                "schedule.explicit.values: List should have at most 10000 items"),
    config_case("explicit-empty", {"schedule": "{kind: explicit, values: []}"}, "schedule.explicit.values"),
    config_case("costs-empty", {"budget.costs": "{}"}, "budget.costs: every stage is free"),
    config_case("costs-all-zero", {"budget.costs": "{generate: 0, verify: 0, train: 0}"},
                "budget.costs: every stage is free"),
    config_case("costs-seconds-only", {"budget.costs": "{train: {seconds: 1.0}}"}, "budget.costs: no priced quantity"),
    config_case("costs-unreported-quantity", {"budget.costs": "{generate: {tokens: 1.0}}"},
                "budget.costs.generate.tokens: priced, but the generate stage reports only"),
    config_case("price-negative", {"budget.costs": "{train: -1}"}, "budget.costs.train: Input should be greater"),
    config_case("price-bool", {"budget.costs": "{train: true}"}, "budget.costs.train: Input should be a valid number"),
    config_case("costs-unknown-stage", {"budget.costs": "{sampling: 1.0}"}, "unknown stage 'sampling'"),
    config_case("costs-unknown-quantity", {"budget.costs": "{train: {parsecs: 1.0}}"}, "unknown quantity 'parsecs'"),
    config_case("total-zero", {"budget.total": "0"}, "budget.total: Input should be greater than 0"),
    config_case("acceptance-zero", {"budget.expected_acceptance": "0"}, "budget.expected_acceptance"),
    config_case("acceptance-above-one", {"budget.expected_acceptance": "1.5"}, "budget.expected_acceptance"),
    config_case("acceptance-tiny", {"budget.total": "1e9", "budget.expected_acceptance": "1e-6"},
                "draws (n_t / acceptance rate), past the bound"),
    config_case("unit-long", {"budget.unit": "x" * 100}, "budget.unit: String should have at most 40 characters"),
    config_case("oversample-below-one", {"loop.oversample": "0.5"}, "loop.oversample"),
    config_case("oversample-huge", {"loop.oversample": "1e9"}, "loop.oversample: Input should be less than or equal"),
    config_case("chunk-zero", {"loop.chunk_size": "0"}, "loop.chunk_size"),
    config_case("chunk-huge", {"loop.chunk_size": BIG}, "loop.chunk_size: Input should be less than or equal"),
    config_case("draws-per-selected-one", {"loop.max_draws_per_selected": "1"}, "loop.max_draws_per_selected"),
    config_case("keep-checkpoints-zero", {"loop.keep_checkpoints": "0"}, "loop.keep_checkpoints"),
    config_case("threshold-above-one", {"selector": "{kind: threshold, threshold: 1.5}"}, "selector.threshold.threshold"),
    config_case("learner-step-with-mle", {"learner": "{kind: mle, step: 0.5}"}, "learner.step"),
    config_case("learner-step-too-big", {"learner": "{kind: gradient, step: 5}"}, "learner.step"),
    config_case("compare-seeds-zero", {"compare.seeds": "0"}, "compare.seeds", COMPARE),
    config_case("compare-seeds-huge", {"compare.seeds": BIG}, "compare.seeds: Input should be less", COMPARE),
    config_case("compare-schedules-empty", {"compare.schedules": "{}"}, "compare.schedules", COMPARE),
    config_case("compare-bad-plan", {"compare.schedules": "{ok: {kind: constant, n0: auto, iterations: 4}, "
                                                          "endless: {kind: constant, n0: 1}}",
                                     "budget.total": "100000"},
                "schedule: the plan runs past 10000 iterations", COMPARE),
]

MATH_TASK = "{kind: math, levels: [{name: add2, dataset: chain_sum}], %s}"
FAMILIES = [
    config_case("digits-image-size-huge", {"task": "{kind: digits-denoise, image_size: 100000}"},
                "task.image_size: Input should be less than or equal to 1024"),
    config_case("digits-psnr-nan", {"task": "{kind: digits-denoise, psnr_range: [.nan, 45]}"},
                "task.psnr_range.0: Input should be a finite number"),
    config_case("digits-path-control-character", {"task": '{kind: digits-denoise, source: mnist, path: "a\\x01b"}'},
                "task: a path cannot hold control characters"),
    config_case("math-train-size-huge", {"task": MATH_TASK % f"train_size: {BIG}"},
                "task.train_size: Input should be less than or equal to 10000000"),
    config_case("math-data-seed-true", {"task": MATH_TASK % "data_seed: true"}, "task.data_seed: Input should be a valid"),
    config_case("math-level-weight-inf", {"task": "{kind: math, levels: [{name: a, dataset: chain_sum, weight: .inf}]}"},
                "task.levels.0.weight: Input should be a finite number"),
]

STRUCTURE = [
    config_case("unknown-key", {"budget.totl": "5"}, "budget.totl: unknown key"),
    config_case("unknown-top-level", {"extra": "1"}, "extra: unknown key"),
    config_case("unknown-selector-key", {"selector": "{kind: top_k, k: 3}"}, "selector.top_k.k: unknown key"),
    config_case("int-key", {"1": "x"}, "1"),
    config_case("missing-budget", {"budget": DELETE}, "budget: required field is missing"),
    config_case("missing-task", {"task": DELETE}, "task: required field is missing"),
    config_case("missing-schedule", {"schedule": DELETE}, "schedule: required field is missing"),
    config_case("missing-name", {"name": DELETE}, "name: required field is missing"),
    config_case("budget-scalar", {"budget": "600"}, "budget: Input should be"),
    config_case("task-null", {"task": "null"}, "task: Input should be"),
    config_case("task-list", {"task": "[gaussian]"}, "task: Input should be"),
    config_case("schedule-string", {"schedule": "exponential"}, "schedule"),
    config_case("schedule-kind-null", {"schedule.kind": "null"}, "schedule"),
    config_case("schedule-kind-unknown", {"schedule": "{kind: cosine, n0: 10}"}, "schedule.kind: unknown kind 'cosine'"),
    config_case("task-kind-unknown", {"task": "{kind: sudoku}"}, "task.kind: unknown kind 'sudoku'"),
    config_case("task-unknown-key", {"task.unknown": "1"}, "task.unknown: unknown key"),
    config_case("learner-kind-unknown", {"learner": "{kind: adam}"}, "learner.kind"),
    config_case("selector-kind-unknown", {"selector": "{kind: best}"}, "selector.kind: unknown kind 'best'"),
    config_case("loop-mode-unknown", {"loop.mode": "fast"}, "loop.mode: allowed:"),
    config_case("store-candidates-unknown", {"loop.store_candidates": "some"}, "loop.store_candidates: allowed:"),
    config_case("auto-n0-no-iterations", {"schedule": "{kind: constant, n0: auto}"}, "needs 'iterations'"),
    config_case("gaussian-model-section", {"model": "{kind: tiny}"}, "model: the gaussian task takes no model"),
]

NAMES = [
    config_case("name-dotdot", {"name": "'..'"}, "name: '..' is not a folder name"),
    config_case("name-dot", {"name": "'.'"}, "name: '.' is not a folder name"),
    config_case("name-dotdot-default-runs-dir", {"name": "'..'"}, "name: '..' is not a folder name", ("run", "{cfg}")),
    config_case("name-dot-default-runs-dir", {"name": "'.'"}, "name: '.' is not a folder name", ("run", "{cfg}")),
    config_case("name-parent-path", {"name": "../escaped"}, "name: '../escaped' is not a folder name"),
    config_case("name-absolute", {"name": "/tmp/escaped"}, "name: '/tmp/escaped' is not a folder name"),
    config_case("name-slash", {"name": "a/b"}, "name: 'a/b' is not a folder name"),
    config_case("name-backslash", {"name": "'a\\b'"}, "is not a folder name"),
    config_case("name-empty", {"name": "''"}, "name: a name cannot be empty"),
    config_case("name-long", {"name": "x" * 300}, "name: a name has at most 100 characters, got 300"),
    config_case("name-newline", {"name": '"bad\\nname"'}, "name: 'bad\\nname' is not a folder name"),
    config_case("name-nul", {"name": '"a\\0b"'}, "is not a folder name"),
    config_case("name-dash", {"name": "-rf"}, "name: '-rf' is not a folder name"),
    config_case("name-hidden", {"name": ".hidden"}, "name: '.hidden' is not a folder name"),
    config_case("name-unicode-control", {"name": '"abc\\u202e"'}, "is not a folder name"),
    config_case("name-number", {"name": "5"}, "name: Input should be a valid string"),
    config_case("name-null", {"name": "null"}, "name: Input should be a valid string"),
    config_case("name-list", {"name": "[a]"}, "name: Input should be a valid string"),
    config_case("schedule-name-up-two", {"compare.schedules": "{'../../x': {kind: constant, n0: auto, iterations: 4}}"},
                "compare.schedules: schedule names name folders: '../../x' is not a folder name", COMPARE),
    config_case("schedule-name-absolute", {"compare.schedules": "{/abs/path: {kind: constant, n0: auto, iterations: 4}}"},
                "'/abs/path' is not a folder name", COMPARE),
    config_case("schedule-name-dotdot", {"compare.schedules": "{'..': {kind: constant, n0: auto, iterations: 4}}"},
                "'..' is not a folder name", COMPARE),
    config_case("schedule-name-dot", {"compare.schedules": "{'.': {kind: constant, n0: auto, iterations: 4}}"},
                "'.' is not a folder name", COMPARE),
    config_case("schedule-name-slash", {"compare.schedules": "{a/b: {kind: constant, n0: auto, iterations: 4}}"},
                "'a/b' is not a folder name", COMPARE),
    config_case("schedule-name-long", {"compare.schedules": "{" + "y" * 200 + ": {kind: constant, n0: 4}}"},
                "compare.schedules: schedule names name folders: a name has at most 100", COMPARE),
    config_case("schedule-name-dotdot-in-run", {"compare.schedules": "{'..': {kind: constant, n0: 4}}"},
                "'..' is not a folder name"),
]

YAML_TEXT = [
    text_case("duplicate-top-level-key", BASE + "name: again\n", "{cfg}: not valid YAML at line 27: duplicate key 'name' (first at line 1)"),
    text_case("duplicate-nested-key", BASE.replace("  total: 600\n", "  total: 600\n  total: 900\n"),
              "duplicate key 'total' (first at line 18)"),
    text_case("duplicate-flow-key", BASE.replace("{generate: 0.0,", "{train: 5.0, generate: 0.0,"),
              "duplicate key 'train'"),
    text_case("duplicate-deep-key", BASE.replace("constant: {kind: constant,", "constant: {kind: linear, kind: constant,"),
              "duplicate key 'kind'", COMPARE),
    text_case("duplicate-schedule-name", BASE + "    constant: {kind: constant, n0: 3}\n", "duplicate key 'constant'",
              COMPARE),
    text_case("anchor-bomb-as-name", anchor_bomb(9, "name: BOMB") + BASE.split("\n", 1)[1],
              "{cfg}: not valid YAML at line 6: aliases expand past 100000 values"),
    text_case("anchor-bomb-as-unknown-key", BASE + anchor_bomb(9, "bomb: BOMB"), "aliases expand past 100000 values"),
    text_case("anchor-bomb-in-theta0", anchor_bomb(7, "x: 1").replace("x: 1", "") +
              BASE.replace("theta0: [3.0, 3.0]", "theta0: *a7"), "aliases expand past 100000 values"),
    text_case("anchor-bomb-7-levels", anchor_bomb(7, "name: BOMB") + BASE.split("\n", 1)[1], "aliases expand past 100000 values"),
    text_case("anchor-small-bomb", anchor_bomb(3, "name: BOMB") + BASE.split("\n", 1)[1],
              "name: Input should be a valid string (got [["),
    text_case("recursive-alias", BASE + "loopy: &l [1, *l]\n", "an alias inside its own anchor"),
    text_case("undefined-alias", BASE.replace("total: 600", "total: *nowhere"), "found undefined alias"),
    text_case("unclosed-flow", "name: [unclosed\n", "{cfg}: not valid YAML at line"),
    text_case("tab-indent", BASE.replace("  kind: mle", "\tkind: mle"), "not valid YAML at line 9"),
    text_case("list-document", "- just\n- a list\n", "must be a mapping of sections, got list"),
    text_case("scalar-document", "just a string\n", "must be a mapping of sections, got str"),
    text_case("empty-file", "", "{cfg}: the config is empty"),
    text_case("comments-only", "# nothing here\n", "{cfg}: the config is empty"),
    text_case("two-documents", BASE + "---\nname: second\n", "but found another document"),
    text_case("python-tag", BASE.replace("name: corpus", "name: !!python/object/apply:os.system ['touch pwned']"),
              "could not determine a constructor"),
    text_case("binary-tag", BASE.replace("name: corpus", "name: !!binary aGVsbG8="), "name: Input should be a valid string"),
    text_case("set-tag", BASE.replace("theta0: [3.0, 3.0]", "theta0: !!set {3.0, 4.0}"), "task.theta0"),
    text_case("huge-integer", BASE.replace("seed: 0", "seed: " + "9" * 5000), "an integer of 5000 digits"),
    text_case("control-character", BASE.replace("name: corpus", "name: cor\x01pus"),
              "{cfg}: not valid YAML at line 1: character #x0001 is not allowed"),
    text_case("long-value", BASE.replace("name: corpus", "name: " + "v" * 200_000),
              "name: a name has at most 100 characters, got 200000"),
    text_case("long-bad-value", BASE.replace("total: 600", "total: " + "w" * 200_000),
              "budget.total: Input should be a valid number (got 'wwwww"),
    text_case("long-unknown-key", BASE + "? " + "k" * 200_000 + "\n: 1\n", "kkkkkkkk...: unknown key"),
    text_case("deep-nesting", BASE + "deep: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested more than 64 levels"),
    text_case("deep-mapping", BASE + "deep: " + "{a: " * 5_000 + "1" + "}" * 5_000 + "\n", "nested more than 64 levels"),
    Case("ten-megabyte-value", "bytes; a config is at most 1048576",
         BASE.replace("name: corpus", "name: " + "v" * 10_000_000).encode()),
]

_RNG = np.random.default_rng(11)
ENCODINGS = [
    Case("binary-random", "{cfg}: a binary file", _RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes()),
    Case("binary-png-header", "{cfg}: not UTF-8 text (byte 0x89 at line 1)",
         b"\x89PNG\r\n\x1a\n" + bytes(range(1, 200))),
    Case("gzip-config", "{cfg}: a binary file", gzip.compress(BASE.encode(), mtime=0)),
    Case("utf16-le-bom", "{cfg}: UTF-16 text", BASE.encode("utf-16")),
    Case("utf16-be-bom", "{cfg}: UTF-16 text", b"\xfe\xff" + BASE.encode("utf-16-be")),
    Case("utf16-no-bom", "{cfg}: a binary file (it holds NUL bytes)", BASE.encode("utf-16-le")),
    Case("utf32", "{cfg}: UTF-16 text", BASE.encode("utf-32")),
    Case("latin1-comment", "{cfg}: not UTF-8 text (byte 0xe9 at line 1)", ("# r\xe9sum\xe9\n" + BASE).encode("latin-1")),
    Case("latin1-value", "{cfg}: not UTF-8 text (byte 0xe9 at line 1)",
         BASE.replace("name: corpus", "name: caf\xe9").encode("latin-1")),
    Case("cp1252-quotes", "{cfg}: not UTF-8 text (byte 0x93", BASE.replace("name: corpus", "name: \u201cx\u201d").encode("cp1252")),
    Case("truncated-utf8", "{cfg}: not UTF-8 text", BASE.encode() + "\u00e9".encode()[:1]),
]


def _fifo(sandbox: Path) -> None:
    os.mkfifo(sandbox / "cwd" / "case.yaml")


def _directory(sandbox: Path) -> None:
    (sandbox / "cwd" / "case.yaml").mkdir()


def _dangling(sandbox: Path) -> None:
    (sandbox / "cwd" / "case.yaml").symlink_to(sandbox / "nowhere.yaml")


def _loop(sandbox: Path) -> None:
    (sandbox / "cwd" / "case.yaml").symlink_to(sandbox / "cwd" / "case.yaml")


def _link_to_fifo(sandbox: Path) -> None:
    os.mkfifo(sandbox / "outside" / "pipe")
    (sandbox / "cwd" / "case.yaml").symlink_to(sandbox / "outside" / "pipe")


def _devnull(sandbox: Path) -> None:
    (sandbox / "cwd" / "case.yaml").symlink_to("/dev/null")


def _valid(sandbox: Path) -> None:
    (sandbox / "cwd" / "case.yaml").write_text(BASE)


def _valid_without_compare(sandbox: Path) -> None:
    (sandbox / "cwd" / "case.yaml").write_text(edited({"compare": DELETE}))


def _run_exists(sandbox: Path) -> None:
    _valid(sandbox)
    (sandbox / "cwd" / "runs" / "corpus").mkdir()
    (sandbox / "cwd" / "runs" / "corpus" / "manifest.json").write_text("{}")


def _run_link_outside(sandbox: Path) -> None:
    _valid(sandbox)
    (sandbox / "cwd" / "runs" / "corpus").symlink_to(sandbox / "outside")


def _compare_runs_link_outside(sandbox: Path) -> None:
    _valid(sandbox)
    (sandbox / "out").mkdir()
    (sandbox / "out" / "runs").symlink_to(sandbox / "outside")


def _runs_dir_is_a_file(sandbox: Path) -> None:
    _valid(sandbox)
    (sandbox / "cwd" / "plain-file").write_text("not a folder\n")


def _run_dir_is_a_fifo(sandbox: Path) -> None:
    os.mkfifo(sandbox / "cwd" / "pipe")


def _empty_run_dir(sandbox: Path) -> None:
    (sandbox / "cwd" / "empty").mkdir()


def _bad_manifest(sandbox: Path) -> None:
    (sandbox / "cwd" / "broken").mkdir()
    (sandbox / "cwd" / "broken" / "manifest.json").write_text("{not json")


def _newline_in_path(sandbox: Path) -> None:
    (sandbox / "cwd" / "bad\nname.yaml").write_bytes(b"\x00binary")


FILES = [
    Case("fifo-run", "not a regular file (a FIFO)", None, RUN, prepare=_fifo),
    Case("fifo-plan", "{cfg}: not a regular file (a FIFO)", None, PLAN, prepare=_fifo),
    Case("fifo-compare", "not a regular file (a FIFO)", None, COMPARE, prepare=_fifo),
    Case("symlink-to-fifo", "not a regular file (a FIFO)", None, PLAN, prepare=_link_to_fifo),
    Case("directory-as-config", "not a regular file (a directory)", None, RUN, prepare=_directory),
    Case("dev-null-as-config", "not a regular file (a character device)", None, PLAN, prepare=_devnull),
    Case("missing-config", "cannot read config {cfg}: No such file or directory", None, RUN),
    Case("dangling-symlink", "cannot read config {cfg}: No such file or directory", None, PLAN, prepare=_dangling),
    Case("symlink-loop", "cannot read config {cfg}: Too many levels of symbolic links", None, PLAN, prepare=_loop),
    Case("empty-path-argument", "cannot read config .: not a regular file (a directory)", None, ("plan", "")),
    Case("path-too-long", "xxxxxxxx.yaml: File name too long", None, ("plan", "x" * 5000 + ".yaml")),
    Case("newline-in-path", "bad\\nname.yaml", None, ("run", "bad\nname.yaml"), prepare=_newline_in_path),
]

COMMANDS = [
    Case("plan-no-argument", "Missing argument 'config'", None, ("plan",)),
    Case("unknown-command", "No such command 'bogus'", None, ("bogus",)),
    Case("unknown-option", "No such option: --bogus", None, ("run", "{cfg}", "--bogus"), prepare=_valid),
    Case("extra-argument", "unexpected extra argument", None, ("plan", "{cfg}", "more"), prepare=_valid),
    Case("seeds-zero", "Invalid value for '--seeds'", None, (*COMPARE, "--seeds", "0"), prepare=_valid),
    Case("seeds-word", "Invalid value for '--seeds'", None, (*COMPARE, "--seeds", "many"), prepare=_valid),
    Case("store-unknown", "--store must be none, selected or all", None, (*COMPARE, "--store", "some"),
         prepare=_valid),
    Case("schedules-empty", "--schedules: give at least one schedule name", None, (*COMPARE, "--schedules", ","),
         prepare=_valid),
    Case("schedules-unknown", "--schedules: unknown schedule 'cosine'", None, (*COMPARE, "--schedules", "cosine"),
         prepare=_valid),
    Case("schedules-up-two", "--schedules: unknown schedule '../../x'", None, (*COMPARE, "--schedules", "../../x"),
         prepare=_valid),
    Case("schedules-absolute", "--schedules: unknown schedule '/abs/path'", None,
         (*COMPARE, "--schedules", "/abs/path"), prepare=_valid),
    Case("compare-without-section", "compare: the config has no 'compare' section", None, COMPARE,
         prepare=_valid_without_compare),
    Case("iteration-word", "Invalid value for '--iteration'", None, ("export", "runs", "--iteration", "last")),
    Case("huge-argument", "unexpected extra argument", None, ("plan", "{cfg}", "z" * 100_000), prepare=_valid),
    Case("run-exists", "already holds a run", None, RUN, code=1, prepare=_run_exists),
    Case("run-dir-links-outside", "outside {sandbox}/cwd/runs", None, RUN, code=1, prepare=_run_link_outside),
    Case("compare-runs-link-outside", "outside {sandbox}/out", None, COMPARE, code=1,
         prepare=_compare_runs_link_outside),
    Case("runs-dir-is-a-file", "Not a directory", None, ("run", "{cfg}", "--runs-dir", "plain-file"), code=1,
         prepare=_runs_dir_is_a_file),
    Case("runs-dir-dev-null", "Not a directory", None, ("run", "{cfg}", "--runs-dir", "/dev/null"), code=1,
         prepare=_valid),
    Case("resume-missing", "missing", None, ("resume", "nowhere"), code=1),
    Case("resume-file", "is not a synthloop run directory", None, ("resume", "config.yaml"), code=1),
    Case("resume-fifo", "pipe", None, ("resume", "pipe"), code=1, prepare=_run_dir_is_a_fifo),
    Case("resume-bad-manifest", "broken/manifest.json", None, ("resume", "broken"), code=1, prepare=_bad_manifest),
    Case("check-missing", "nowhere/manifest.json is missing", None, ("check", "nowhere"), code=1),
    Case("inspect-bad-manifest", "broken/manifest.json", None, ("inspect", "broken"), code=1, prepare=_bad_manifest),
    Case("repair-missing", "nowhere/manifest.json is missing", None, ("repair", "nowhere"), code=1),
    Case("export-missing", "nowhere/manifest.json is missing", None, ("export", "nowhere"), code=1),
    Case("report-empty-dir", "empty/manifest.json is missing", None, ("report", "empty"), code=1,
         prepare=_empty_run_dir),
]

CONFIG_CASES = TYPES + NON_FINITE + BOUNDS + FAMILIES + STRUCTURE + NAMES + YAML_TEXT + ENCODINGS
COMMAND_CASES = FILES + COMMANDS
CASES = CONFIG_CASES + COMMAND_CASES

# Variants of a rule another case already takes through the real CLI: these run in process only
# (test_config_case_in_process), which keeps the subprocess corpus well under a minute on two cores.
IN_PROCESS_ONLY = {
    "seed-negative", "seed-float", "seed-list", "iterations-zero", "iterations-float", "iterations-string",
    "max-iterations-huge", "eval-every-zero", "total-quoted-number", "sigma-string", "theta0-string",
    "unit-number", "theta0-minus-inf", "theta0-1.0e+309", "kappa-inf", "n0-nan", "oversample-nan",
    "acceptance-nan", "threshold-nan", "draws-per-selected-inf", "dim-zero", "sigma-zero", "kappa-negative",
    "n0-negative", "n0-word", "n0-true", "growth-zero", "alpha-missing", "slope-negative",
    "gaussian-optimal-sigma-zero", "explicit-zero", "explicit-float", "explicit-bool", "explicit-empty",
    "price-bool", "costs-unknown-stage", "costs-unknown-quantity", "total-zero", "acceptance-zero",
    "acceptance-above-one", "unit-long", "oversample-below-one", "chunk-zero", "draws-per-selected-one",
    "keep-checkpoints-zero", "threshold-above-one", "learner-step-with-mle", "compare-seeds-zero",
    "compare-schedules-empty", "unknown-selector-key", "missing-task", "missing-schedule", "missing-name",
    "task-list", "schedule-string", "schedule-kind-null", "task-unknown-key", "learner-kind-unknown",
    "selector-kind-unknown", "store-candidates-unknown", "name-backslash", "name-dash", "name-unicode-control",
    "name-null", "name-list", "schedule-name-long", "duplicate-schedule-name", "anchor-bomb-as-unknown-key",
    "anchor-bomb-7-levels", "anchor-small-bomb", "undefined-alias", "tab-indent", "scalar-document",
    "comments-only", "binary-tag", "set-tag", "long-bad-value", "deep-mapping", "binary-png-header",
    "utf16-be-bom", "utf32", "cp1252-quotes", "truncated-utf8", "dangling-symlink", "symlink-loop",
    "empty-path-argument", "digits-path-control-character", "math-data-seed-true", "math-level-weight-inf",
}
CLI_CASES = [case for case in CASES if case.id not in IN_PROCESS_ONLY]


def test_the_corpus_is_big_enough_and_its_ids_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(set(ids)) == len(ids) and set(ids) >= IN_PROCESS_ONLY
    through_the_cli = {case.id for case in CLI_CASES}
    assert len([c for c in CONFIG_CASES if c.id in through_the_cli]) > 100
    assert len([c for c in COMMAND_CASES if c.id in through_the_cli]) > 30


# -- running a case ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    code: int | None  # None: no answer within the time limit
    stdout: str
    stderr: str
    seconds: float
    changes: list[str]  # what differs in the sandbox afterwards
    sandbox: Path
    limit: float  # the answer limit this case ran under (answer_limit)


def snapshot(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every path under ``root`` (links not followed): its kind, size and content digest."""
    seen: dict[str, tuple[str, int, str]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            info = path.lstat()
            if path.is_symlink():
                seen[str(path.relative_to(root))] = ("link", 0, os.readlink(path))
            elif path.is_file():
                seen[str(path.relative_to(root))] = ("file", info.st_size, hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                seen[str(path.relative_to(root))] = ("dir" if path.is_dir() else "other", 0, "")
    return seen


def make_sandbox(root: Path, case: Case) -> Path:
    sandbox = root / case.id
    for folder in ("cwd/runs", "outside"):
        (sandbox / folder).mkdir(parents=True)
    (sandbox / "cwd" / "config.yaml").write_bytes(USER_CONFIG)
    (sandbox / "cwd" / "runs" / "keep.txt").write_text("the user's runs folder\n")
    (sandbox / "outside" / "config.yaml").write_bytes(USER_CONFIG)
    if case.content is not None:
        (sandbox / "cwd" / "case.yaml").write_bytes(case.content)
    if case.prepare is not None:
        case.prepare(sandbox)
    return sandbox


def fill(text: str, sandbox: Path) -> str:
    return (text.replace("{cfg}", str(sandbox / "cwd" / "case.yaml")).replace("{runs}", str(sandbox / "cwd" / "runs"))
            .replace("{out}", str(sandbox / "out")).replace("{sandbox}", str(sandbox)))


def answer_limit(startup_seconds: float) -> float:
    """How long a case may take to answer: ``ANSWER_WITHIN``, or on a loaded machine (where a bare
    ``synthloop --help`` itself takes seconds) ``STARTUPS_WITHIN`` start-ups. A hang stays a hang
    either way; what the limit no longer measures is how busy the machine is.

    >>> answer_limit(0.4), answer_limit(2.0)
    (5.0, 10.0)
    """
    return max(ANSWER_WITHIN, STARTUPS_WITHIN * startup_seconds)


def run_case(root: Path, case: Case, *, pycache: Path, limit: float = ANSWER_WITHIN) -> Outcome:
    sandbox = make_sandbox(root, case)
    before = snapshot(sandbox)
    # Byte-code cached outside the checkout and the sandboxes, so each start-up compiles nothing.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg",
           "PYTHONPYCACHEPREFIX": str(pycache), "PYTHONDONTWRITEBYTECODE": ""}
    start = time.perf_counter()
    try:
        result = subprocess.run([sys.executable, "-m", "synthloop.cli", *(fill(a, sandbox) for a in case.args)],
                                capture_output=True, text=True, errors="replace", cwd=sandbox / "cwd",
                                timeout=limit, env=env, check=False, stdin=subprocess.DEVNULL)
        code, stdout, stderr = result.returncode, result.stdout, result.stderr
    except subprocess.TimeoutExpired as expired:
        code, stdout, stderr = None, _text(expired.stdout), _text(expired.stderr)
    seconds = time.perf_counter() - start
    after = snapshot(sandbox)
    changes = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    return Outcome(code, stdout, stderr, seconds, changes, sandbox, limit)


def _startup_seconds(env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "synthloop.cli", "--help"], capture_output=True, check=True, env=env)
    return time.perf_counter() - start


def _text(output: bytes | str | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Run the selected cases, a few at a time (each is a real subprocess of the CLI)."""
    wanted = {item.callspec.params["case"].id for item in request.session.items
              if getattr(item, "originalname", "") == "test_malformed_input" and hasattr(item, "callspec")}
    root, pycache = tmp_path_factory.mktemp("malformed"), tmp_path_factory.mktemp("pycache")
    chosen = [case for case in CLI_CASES if case.id in wanted]
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(pycache), "PYTHONDONTWRITEBYTECODE": ""}
    warm = subprocess.run([sys.executable, "-m", "synthloop.cli", "--help"], capture_output=True, check=False, env=env)
    assert warm.returncode == 0, warm.stderr  # byte-code written once, before the timed cases
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        # bare start-ups, as many at once as the cases will run: the machine's pace, measured now
        limit = answer_limit(max(pool.map(lambda _: _startup_seconds(env), range(WORKERS))))
        outcomes = pool.map(lambda c: run_case(root, c, pycache=pycache, limit=limit), chosen)
        return dict(zip([c.id for c in chosen], outcomes, strict=True))


@pytest.mark.parametrize("case", CLI_CASES, ids=[case.id for case in CLI_CASES])
def test_malformed_input(case: Case, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[case.id]
    assert outcome.code is not None, f"no answer within {outcome.limit:.1f} s: {outcome.stderr[-300:]}"
    assert outcome.seconds < outcome.limit
    assert "Traceback" not in outcome.stderr, outcome.stderr[-2000:]
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1, outcome.stderr[:2000]
    line = lines[0]
    assert len(line) < 300, line
    assert outcome.code == case.code, line
    assert fill(case.needle, outcome.sandbox) in line
    assert outcome.stdout.strip() == "", outcome.stdout[:2000]
    assert outcome.changes == [], f"the command changed {outcome.changes}"
    if case.code == 2 and case.args[0] in ("run", "plan", "compare") and case.content is not None:
        assert line.startswith("synthloop: config error: "), line


# -- the same rules, in process ----------------------------------------------------------------

IN_PROCESS = [case for case in CONFIG_CASES + FILES if case.args[1:2] == ("{cfg}",)]


@pytest.mark.parametrize("case", IN_PROCESS, ids=[case.id for case in IN_PROCESS])
def test_config_case_in_process(case: Case, tmp_path: Path) -> None:
    """Every config case, through load_config and the planners (what `plan` and `compare` check)."""
    sandbox = make_sandbox(tmp_path, case)
    start = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        config = load_config(sandbox / "cwd" / "case.yaml")
        make_planner(config)
        if case.args[0] == "compare":
            assert config.compare is not None
            for schedule in config.compare.schedules.values():
                make_planner(config, schedule)
    message = str(caught.value)
    assert time.perf_counter() - start < ANSWER_WITHIN
    lines = message.split("\n")  # one line per problem; every case but these has exactly one
    assert len(lines) == SEVERAL_PROBLEMS.get(case.id, 1), message
    assert all(len(line) <= 250 for line in lines)
    assert fill(case.needle, sandbox) in f"synthloop: config error: {lines[0]}"


# The cases with more than one problem: validation lists them all, one line each.
SEVERAL_PROBLEMS = {"anchor-small-bomb": 5}  # name is a list, and a0..a3 are unknown keys



def test_the_base_config_is_valid_so_each_case_fails_for_its_own_reason() -> None:
    config = parse_config(load_yaml(BASE, source="base"))
    assert not isinstance(config.schedule, ExplicitSchedule)
    assert (config.name, config.budget.total, config.schedule.iterations) == ("corpus", 600.0, 4)
    assert config.compare is not None and list(config.compare.schedules) == ["constant"]


def test_an_anchor_bomb_is_refused_in_well_under_a_second() -> None:
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="aliases expand past 100000 values"):
        load_yaml(anchor_bomb(12, "name: BOMB"), source="bomb.yaml")
    assert time.perf_counter() - start < 0.5


def test_yaml_12_floats_dates_as_strings_and_merge_keys_with_overrides() -> None:
    data = load_yaml("a: 1e9\nb: 2.5E-3\nc: 1.0e+3\nd: 2024-01-01\nbase: &b {x: 1, y: 2}\n"
                     "merged: {<<: *b, x: 5}\ne: 1_000\n", source="t")
    assert data == {"a": 1e9, "b": 2.5e-3, "c": 1000.0, "d": "2024-01-01", "base": {"x": 1, "y": 2},
                    "merged": {"x": 5, "y": 2}, "e": 1000}
    assert isinstance(data["a"], float)


def test_a_utf8_byte_order_mark_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + BASE.encode())
    assert load_config(path).name == "corpus"


def test_a_config_at_the_size_bound_is_read_and_one_byte_more_is_not(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    padding = MAX_BYTES - len(BASE.encode()) - 3
    path.write_bytes(BASE.encode() + b"# " + b"p" * padding + b"\n")
    assert path.stat().st_size == MAX_BYTES and load_config(path).name == "corpus"
    path.write_bytes(path.read_bytes() + b"\n")
    with pytest.raises(ConfigError, match=f"{MAX_BYTES + 1} bytes; a config is at most {MAX_BYTES}"):
        load_config(path)


def test_every_message_is_one_bounded_line() -> None:
    error = ConfigError("x" * 10_000 + "\nsecond line")
    assert len(str(error)) == 250 and "\n" not in str(error)
    assert len(shown(["y" * 10**6] * 10**4)) <= 80
    assert shown(10**5000).startswith("<an integer of about")


@pytest.mark.parametrize("name", ["run", "exponential-0.5", "A_1", "9lives", "x" * 100])
def test_folder_names_that_pass(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", [".", "..", "", "a/b", "/abs", "../x", "a\\b", "-x", ".x", "a\x00b", "tab\there",
                                  "x" * 101, "caf\u00e9", "a b"])
def test_folder_names_that_do_not(name: str) -> None:
    with pytest.raises(ValueError):
        check_name(name)


def test_child_path_stays_inside_its_parent(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    assert child_path(tmp_path / "runs", "ok") == tmp_path / "runs" / "ok"
    for bad in ("..", ".", "../x", str(tmp_path)):
        with pytest.raises(ConfigError, match="is not a folder name"):
            child_path(tmp_path / "runs", bad)
    (tmp_path / "runs" / "link").symlink_to(tmp_path)
    with pytest.raises(PathEscapeError, match="outside"):
        child_path(tmp_path / "runs", "link")
    (tmp_path / "runs" / "inside").symlink_to(tmp_path / "runs" / "ok")
    assert child_path(tmp_path / "runs", "inside") == tmp_path / "runs" / "inside"


def test_a_runs_own_config_is_read_as_strictly_and_blamed_on_the_run(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from synthloop.experiments import config_from_run_text, resume_run
    from synthloop.store import RunDirectoryError, RunStore

    assert config_from_run_text(BASE + "provenance: {python: '3.11'}\n").name == "corpus"
    with pytest.raises(ConfigError, match=r"runs/x/config\.yaml: not valid YAML at line 27: duplicate key 'name'"):
        config_from_run_text(BASE + "name: twice\n", source="runs/x/config.yaml")
    monkeypatch.setattr(RunStore, "config_text", lambda self: edited({"seed": "true"}))
    with pytest.raises(RunDirectoryError, match=r"/config.yaml: seed: Input should be a valid integer"):
        resume_run(tmp_path / "run")
