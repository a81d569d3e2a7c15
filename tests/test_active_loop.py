"""The active family end to end on tiny models: teachers and scorers conform and measure what they
claim; the training set grows by what each iteration kept and survives a fault and resume exactly;
a budget in teacher tokens holds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from crashsafe_support import FAST, ROOT, failing_at, snapshot, stores
from synthloop.configs import RunConfig, load_config, parse_config
from synthloop.experiments import build_components, resume_run, run_config
from synthloop.models.hf import HFGenerator
from synthloop.models.scoring import SentenceEmbedder, StudentScorer
from synthloop.records import Candidates, Prompts, Verdict
from synthloop.store import RunStore
from synthloop.tasks.math import Level, MathTask, MathVerifier
from synthloop.tasks.teachers import (
    LLMTeacher,
    ProgrammaticJudge,
    ProgrammaticTeacher,
    SeedTask,
    TeacherVerifier,
    fresh_problem,
    teacher_prompt,
    text_tokens,
)
from synthloop.testing import check_generator, check_prompt_policy, check_verifier

TINY = ROOT / "tests" / "data" / "active-tiny.yaml"
CHAIN = Level("sum3", "chain_sum", {"min_terms": 3, "max_terms": 3, "min_digits": 1, "max_digits": 2})


def seed_task(level: Level = CHAIN, mode: str = "new_question") -> SeedTask:
    return SeedTask(MathTask([level], evaluator=HFGenerator(), train_size=12, eval_size=2, shots=0), mode=mode)


# -- teachers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["new_question", "new_answer"])
def test_the_programmatic_teacher_conforms_and_its_examples_pass(mode: str) -> None:
    task = seed_task(mode=mode)
    prompts = task.prompts_at(np.arange(8))
    teacher = ProgrammaticTeacher(mode=mode, max_prompt_tokens=400, max_completion_tokens=200)
    candidates = check_generator(teacher, None, prompts)
    scores = check_verifier(task.verifier, candidates, prompts)
    assert (scores.verdict == Verdict.PASS).all()
    if mode == "new_answer":
        assert candidates.samples["question"] == prompts.items["question"]
    else:
        assert not set(candidates.samples["question"]) & set(prompts.items["question"])


def test_a_new_arithmetic_problem_has_the_seeds_terms_and_digits() -> None:
    task = seed_task()
    prompts = task.prompts_at(np.arange(12))
    out = ProgrammaticTeacher(max_prompt_tokens=400).generate(None, prompts, rng=np.random.default_rng(1))
    for kind, question in zip(prompts.items["seed_kind"], out.samples["question"], strict=True):
        params = json.loads(kind)["params"]
        terms = re.findall(r"\d+", question.split(":")[-1])
        assert len(terms) == params["min_terms"] == 3
        assert max(len(t) for t in terms) <= params["max_digits"] == params["min_digits"]


def test_a_new_gsm_problem_comes_from_the_seeds_template_with_fresh_values() -> None:
    task = seed_task(Level("gsm", "gsm_symbolic"))
    prompts = task.prompts_at(np.arange(6))
    out = ProgrammaticTeacher(max_prompt_tokens=2000, max_completion_tokens=2000).generate(
        None, prompts, rng=np.random.default_rng(2))
    import reasoning_gym

    generators = reasoning_gym.create_dataset("gsm_symbolic", size=1, seed=0).generators
    for kind, question, seed_question in zip(prompts.items["seed_kind"], out.samples["question"],
                                             prompts.items["question"], strict=True):
        template = json.loads(kind)["template"]
        assert question != seed_question
        # the template's own variable-free wording: the longest run of words both questions share
        skeleton = max(re.split(r"[\d$%]+", question), key=len).strip()
        rewritten = [fresh_problem({"dataset": "gsm_symbolic", "template": template}, s)[0] for s in range(20)]
        assert sum(skeleton[-25:] in q for q in rewritten) >= 1, (skeleton, template)
        assert len(generators) >= 90


def test_the_teacher_reports_the_text_tokens_it_reads_and_writes() -> None:
    task = seed_task()
    prompts = task.prompts_at(np.arange(4))
    out = ProgrammaticTeacher(max_prompt_tokens=400).generate(None, prompts, rng=np.random.default_rng(0))
    read = [text_tokens(teacher_prompt(q, s, "new_question"))
            for q, s in zip(prompts.items["question"], prompts.items["solution"], strict=True)]
    written = [text_tokens(q) + text_tokens(c) for q, c in
               zip(out.samples["question"], out.samples["completion"], strict=True)]
    assert out.usage["prompt_tokens"].tolist() == read
    assert out.usage["completion_tokens"].tolist() == written
    assert (out.usage["tokens"] == out.usage["prompt_tokens"] + out.usage["completion_tokens"]).all()


class CannedGenerator:
    """A stand-in for a language model (local or behind an endpoint): fixed replies, fixed usage."""

    def __init__(self, replies: list[str]) -> None:
        self.replies = replies

    def max_usage_per_draw(self) -> dict[str, float]:
        return {"samples": 1.0, "tokens": 300.0, "prompt_tokens": 200.0, "completion_tokens": 100.0}

    def generate(self, model: object, prompts: Prompts, *, rng: np.random.Generator) -> Candidates:
        n = len(prompts)
        replies = [self.replies[i % len(self.replies)] for i in range(n)]
        return Candidates(samples={"prompt": list(prompts.items["prompt"]), "completion": replies},
                          prompt_index=prompts.index,
                          usage={"samples": np.ones(n), "prompt_tokens": np.full(n, 50.0),
                                 "completion_tokens": np.full(n, 20.0), "tokens": np.full(n, 70.0)})


def test_an_llm_teacher_reads_its_examples_back_and_a_broken_one_is_an_error() -> None:
    task = seed_task()
    prompts = task.prompts_at(np.arange(4))
    teacher = LLMTeacher(CannedGenerator([" 2 + 3 + 4 =\nAnswer: 2 + 3 = 5. 5 + 4 = 9. #### 9", "no idea"]))
    out = check_generator(teacher, None, prompts)
    assert out.samples["question"][0] == "2 + 3 + 4 =" and out.samples["answer"][0] == "9"
    verdicts = TeacherVerifier().verify(out, prompts).verdict.tolist()
    assert verdicts == [Verdict.PASS, Verdict.ERROR, Verdict.PASS, Verdict.ERROR]
    assert out.usage["tokens"].sum() == 4 * 70  # the endpoint's own token counts, broken rows too


def test_the_programmatic_judge_gives_partial_credit_for_the_right_steps() -> None:
    prompts = Prompts(np.arange(3), {"question": ["q"] * 3, "answer": ["14"] * 3,
                                     "solution": ["12 + 5 = 17. 17 - 3 = 14. #### 14"] * 3})
    ratings, usage = ProgrammaticJudge().rate(
        prompts, ["12 + 5 = 17. 17 - 3 = 14. #### 14", "12 + 5 = 17. 17 - 3 = 13. #### 13", "#### 2"],
        rng=np.random.default_rng(0))
    assert ratings.tolist() == [1.0, 0.4, 0.0]
    assert usage["tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


# -- scorers on a tiny student ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> tuple[RunConfig, object]:
    config = load_config(TINY)
    return config, build_components(config)


def test_the_loss_on_the_gold_answer_is_the_learners_loss(tiny: tuple[RunConfig, object]) -> None:
    _, parts = tiny
    task, learner = parts.task, parts.learner  # type: ignore[attr-defined]
    prompts = task.prompts_at(np.arange(3))
    scorer = StudentScorer("loss_gold", HFGenerator(max_new_tokens=4))
    values = scorer.score(learner.model, prompts, rng=np.random.default_rng(0)).values
    assert values is not None
    for i in range(3):
        row = Candidates(samples={"question_prompt": [prompts.items["question_prompt"][i]],
                                  "completion": [" " + prompts.items["solution"][i]]},
                         prompt_index=prompts.index[i:i + 1], usage={})
        assert values[i] == pytest.approx(learner.loss(row), rel=1e-5)


def test_the_gradient_embedding_is_the_output_layers_loss_gradient(tiny: tuple[RunConfig, object]) -> None:
    _, parts = tiny
    model, task = parts.learner.model, parts.task  # type: ignore[attr-defined]
    scorer = StudentScorer("gradient", HFGenerator(max_new_tokens=4))
    prompts = task.prompts_at(np.arange(2))
    embedding = scorer.score(model, prompts, rng=np.random.default_rng(0)).embeddings
    assert embedding is not None
    answers = scorer.sampler.generate(model, prompts, rng=np.random.default_rng(0)).samples["completion"]
    for i, (ids, start) in enumerate(scorer._rows(model, prompts, list(answers))):
        _, hidden, _ = scorer._forward(model, ids, start)
        weight = model.network.get_output_embeddings().weight.detach().clone().requires_grad_(True)
        logits = hidden @ weight.T
        torch.nn.functional.cross_entropy(logits, logits.argmax(-1)).backward()
        assert np.allclose(embedding[i], weight.grad.numpy().reshape(-1), atol=1e-6)


def test_minilm_embeds_similar_questions_closer() -> None:
    texts = ["Tom has 3 apples and buys 4 more. How many apples?", "Ann has 5 apples and buys 2 more. How many?",
             "The train leaves Paris at noon at 80 km per hour."]
    vectors = SentenceEmbedder().score(None, Prompts(np.arange(3), {"question": texts}),
                                       rng=np.random.default_rng(0)).embeddings
    assert vectors is not None
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2


@pytest.mark.parametrize("selector", ["loss_own", "loss_gold", "reward", "judge", "judge_hard", "balanced",
                                      "diversity", "badge", "random"])
def test_every_selector_of_the_family_conforms_with_its_real_scorer(selector: str) -> None:
    data = yaml.safe_load(TINY.read_text())
    data["task"]["seeds"] = {"selector": selector, "candidates": 1.5}
    parts = build_components(parse_config(data))
    check_prompt_policy(parts.prompt_policy, parts.task, parts.learner.model)


def test_the_reward_scorer_marks_failed_seeds_hard(tiny: tuple[RunConfig, object]) -> None:
    _, parts = tiny
    prompts = parts.task.prompts_at(np.arange(6))  # type: ignore[attr-defined]
    scorer = StudentScorer("reward", HFGenerator(max_new_tokens=6), verifier=MathVerifier())
    scored = scorer.score(parts.learner.model, prompts, rng=np.random.default_rng(0))  # type: ignore[attr-defined]
    answers = HFGenerator(max_new_tokens=6).generate(parts.learner.model, prompts,  # type: ignore[attr-defined]
                                                     rng=np.random.default_rng(0))
    passed = MathVerifier().verify(answers, prompts).verdict == Verdict.PASS
    assert scored.values is not None
    assert scored.values.tolist() == np.where(passed, 0.0, 1.0).tolist()


# -- the loop -----------------------------------------------------------------------------------


def _pool_rows(run_dir: Path) -> int:
    store = RunStore(run_dir)
    folders = store.checkpoint_folders(store.manifest().iterations[-1].iteration)
    return pq.read_metadata(folders["training_set"] / "pool.parquet").num_rows


def test_the_training_set_grows_by_each_iterations_teacher_examples(tmp_path: Path) -> None:
    history = run_config(load_config(TINY), run_dir=tmp_path / "run", open_store=FAST)
    assert [r.n_selected for r in history] == [4, 4, 4]
    assert [r.n_trained for r in history] == [4, 8, 12] and [r.n_carried for r in history] == [0, 4, 8]
    assert _pool_rows(tmp_path / "run") == 12
    assert all(r.cost["label"] == 4 for r in history) and all(r.seconds["score"] > 0 for r in history)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run_config(load_config(TINY), run_dir=run_dir, open_store=FAST)
    return snapshot(run_dir)


@pytest.mark.parametrize("faults_at", [["generate:3"], ["train:2", "checkpoint:2", "write:5"]])
def test_a_run_stopped_anywhere_resumes_to_the_same_training_set(
        faults_at: list[str], reference: dict[str, object], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    for fault in faults_at:
        with pytest.raises(OSError, match="injected"):
            if (run_dir / "manifest.json").exists():
                resume_run(run_dir, open_store=stores(failing_at(fault)))
            else:
                run_config(load_config(TINY), run_dir=run_dir, overwrite=True, open_store=stores(failing_at(fault)))
    resume_run(run_dir, open_store=FAST)
    assert snapshot(run_dir) == reference  # ledger, selected rows, every checkpoint byte (the pool too)


def test_a_budget_in_teacher_tokens_holds(tmp_path: Path) -> None:
    data = yaml.safe_load(TINY.read_text())
    data["generator"] = {"kind": "programmatic", "max_completion_tokens": 60}
    data["budget"] = {"total": 600.0, "unit": "tokens", "costs": {"label": {"tokens": 1.0}},
                      "expected_acceptance": 1.0}
    data["schedule"] = {"kind": "constant", "n0": 3}
    history = run_config(parse_config(data), run_dir=tmp_path / "run", open_store=FAST)
    rows = RunStore(tmp_path / "run").committed_ledger_rows()
    teacher = sum(r.quantities.get("tokens", 0.0) for r in rows if r.stage == "label")
    assert 300 < teacher <= 600 and history[-1].cumulative_cost <= 600
    assert history[-1].cut  # the budget, not the schedule, ended the run
