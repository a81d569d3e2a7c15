"""Hugging Face plug-ins and the math task on tiny models built here (no network, seconds each)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("reasoning_gym")
pytest.importorskip("math_verify")

from synthloop.configs import ConfigError, parse_config  # noqa: E402
from synthloop.models.hf import HFGenerator, HFModel, KVCache, LoraSettings, SFTLearner  # noqa: E402
from synthloop.models.scratch import TinyGPT2Config, tiny_gpt2, train_tokenizer  # noqa: E402
from synthloop.records import Candidates, Prompts, Verdict  # noqa: E402
from synthloop.tasks.math import (  # noqa: E402
    Level,
    MathTask,
    MathVerifier,
    Rationalizing,
    final_answer,
    load_problems,
    question_prompt,
    run_with_timeout,
    worked_solution,
)
from synthloop.testing import (  # noqa: E402
    check_evaluation,
    check_generator,
    check_learner,
    check_task,
    check_verifier,
)
from torch_threads import one_thread  # noqa: E402, F401  (autouse: one torch thread for this module)

EASY = Level("add1", "chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1})
HARDER = Level("add3", "chain_sum", {"min_terms": 3, "max_terms": 3, "min_digits": 1, "max_digits": 1})
STOP = ("\nQuestion:",)




@pytest.fixture(scope="module")
def tokenizer() -> object:
    texts = [f"{question_prompt(p.question)} {p.solution}" for p in load_problems(EASY, size=300, seed=5)]
    return train_tokenizer(texts, vocab_size=200)


def tiny(tokenizer: object, seed: int = 0) -> HFModel:
    return tiny_gpt2(tokenizer, TinyGPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=192, seed=seed))


def greedy(max_new_tokens: int = 24) -> HFGenerator:
    return HFGenerator(max_new_tokens=max_new_tokens, temperature=0.0, stop_strings=STOP, batch_size=16)


def small_task(**kw: object) -> MathTask:
    options = {"train_size": 64, "eval_size": 12, "shots": 1, "data_seed": 3, **kw}
    return MathTask([EASY, HARDER], evaluator=greedy(), **options)  # type: ignore[arg-type]


def answered(task: MathTask, n: int = 6) -> tuple[Candidates, Prompts]:
    """Prompts with their gold worked solutions as completions (all correct)."""
    prompts = task.sample_prompts(n, rng=np.random.default_rng(0))
    problems = [task.pools_.train[i] for i in prompts.index]
    completions = [" " + p.solution for p in problems]
    samples = {"prompt": list(prompts.items["prompt"]), "completion": completions,
               "question_prompt": list(prompts.items["question_prompt"])}
    usage = {"samples": np.ones(n), "tokens": np.full(n, 10.0)}
    return Candidates(samples=samples, prompt_index=prompts.index, usage=usage), prompts


# -- task and verifier --------------------------------------------------------------------------


def test_worked_solutions_end_in_the_gold_answer() -> None:
    for level in (EASY, HARDER, Level("ba", "basic_arithmetic", {"min_terms": 2, "max_terms": 3})):
        for p in load_problems(level, size=20, seed=1):
            assert final_answer(p.solution, require_marker=True) == p.answer
    gsm = load_problems(Level("gsm", "gsm_symbolic"), size=2, seed=0)
    assert all(p.solution.rstrip().endswith(f"#### {p.answer}") for p in gsm)
    assert worked_solution({"answer": "14", "metadata": {"expression": "12 + 5 - 3"}}) == (
        "12 + 5 = 17. 17 - 3 = 14. #### 14")


def test_task_conformance_and_fixed_held_out_set() -> None:
    task = small_task()
    check_task(task)
    again = small_task()
    assert again.held_out_prompts().items["prompt"] == task.held_out_prompts().items["prompt"]
    assert set(task.sample_prompts(200, rng=np.random.default_rng(0)).items["level"]) == {"add1", "add3"}


def test_verifier_verdicts_pass_fail_and_error() -> None:
    verifier = MathVerifier(timeout_seconds=2)
    outputs = ["4 + 3 = 7. #### 7", "#### 8", "I do not know", "#### 7.0", "so it is 7", "#### \\frac{"]
    golds = ["7", "7", "7", "7", "7", "7"]
    candidates = Candidates(samples={"completion": outputs}, prompt_index=np.arange(6),
                            usage={"samples": np.ones(6)})
    prompts = Prompts(index=np.arange(6), items={"answer": golds})
    scores = check_verifier(verifier, candidates, prompts)
    assert scores.verdict.tolist() == [Verdict.PASS, Verdict.FAIL, Verdict.ERROR, Verdict.PASS,
                                       Verdict.PASS, Verdict.ERROR]
    assert scores.reward[:2].tolist() == [1.0, 0.0] and np.isnan(scores.reward[2])
    assert scores.detail is not None and "no final answer" in scores.detail[2]
    strict = MathVerifier(require_marker=True).verify(candidates, prompts)
    assert strict.verdict[4] == Verdict.ERROR  # a bare number is not a final answer in strict mode
    bad_gold = verifier.verify(candidates.take(np.array([0])),
                               Prompts(index=np.array([0]), items={"answer": ["%%%"]}))
    assert bad_gold.verdict[0] == Verdict.ERROR and "gold" in bad_gold.detail[0]  # type: ignore[index]


def test_verifier_works_off_the_main_thread() -> None:
    # math-verify's own timeout uses signal.alarm, which raises off the main thread.
    verifier = MathVerifier(timeout_seconds=2)
    out: dict[str, object] = {}
    candidates = Candidates(samples={"completion": ["#### 12", "#### 13"]}, prompt_index=np.arange(2),
                            usage={"samples": np.ones(2)})
    prompts = Prompts(index=np.arange(2), items={"answer": ["12", "12"]})
    worker = threading.Thread(target=lambda: out.update(s=verifier.verify(candidates, prompts)))
    worker.start()
    worker.join()
    assert out["s"].verdict.tolist() == [Verdict.PASS, Verdict.FAIL]  # type: ignore[attr-defined]


def test_a_check_that_hangs_is_an_error_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(Exception, match="more than"):
        run_with_timeout(lambda: time.sleep(5), 0.2)
    verifier = MathVerifier(timeout_seconds=0.2)
    monkeypatch.setattr(MathVerifier, "_on_main_thread", lambda self: False)
    import math_verify

    monkeypatch.setattr(math_verify, "verify", lambda *a, **k: time.sleep(3))
    verdict, detail = verifier.check("7", "#### 7")
    assert verdict == Verdict.ERROR and "more than" in detail


# -- generator --------------------------------------------------------------------------------


def test_generator_conformance_usage_and_bound(tokenizer: object) -> None:
    model = tiny(tokenizer)
    task = small_task()
    prompts = task.sample_prompts(5, rng=np.random.default_rng(1))
    sampler = HFGenerator(max_new_tokens=12, temperature=1.0, top_p=0.9, stop_strings=STOP, batch_size=2)
    candidates = check_generator(sampler, model, prompts)
    usage = candidates.usage
    assert np.all(usage["tokens"] == usage["prompt_tokens"] + usage["completion_tokens"])
    assert np.all((usage["completion_tokens"] >= 1) & (usage["completion_tokens"] <= 12))
    assert candidates.samples["question_prompt"] == prompts.items["question_prompt"]
    other = sampler.generate(model, prompts, rng=np.random.default_rng(2))
    assert other.samples["completion"] != candidates.samples["completion"]


def test_left_padding_gives_the_same_greedy_answer_alone_or_in_a_batch(tokenizer: object) -> None:
    model = tiny(tokenizer, seed=1)
    texts = ["Question: 1 + 2 =\nAnswer:", "Question: State the final answer: 9 - 4 + 1 - 2 =\nAnswer:"]
    prompts = Prompts(index=np.arange(2), items={"prompt": texts})
    together = greedy(10).generate(model, prompts, rng=np.random.default_rng(0)).samples["completion"]
    alone = [greedy(10).generate(model, prompts.take(np.array([i])), rng=np.random.default_rng(0))
             .samples["completion"][0] for i in range(2)]
    assert together == alone


def test_cached_decoding_equals_recomputing_the_whole_sequence(tokenizer: object) -> None:
    """The KV cache is fed under the name the installed transformers reads: a cache passed under a
    name the model ignored would leave each step seeing one token only."""
    model = tiny(tokenizer, seed=3)
    network = model.network.eval()
    ids = torch.tensor([model.tokenizer("Question: 1 + 2 =\nAnswer:")["input_ids"]])
    cache, step_ids, sequence = KVCache(), ids, ids
    with torch.no_grad():
        for _ in range(6):
            logits = cache.forward(network, input_ids=step_ids)
            full = network(input_ids=sequence, use_cache=False).logits[:, -1, :]
            torch.testing.assert_close(logits, full, rtol=1e-4, atol=1e-5)
            step_ids = logits.argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, step_ids], dim=1)


def test_stop_strings_cut_the_completion(tokenizer: object) -> None:
    model = tiny(tokenizer, seed=2)
    prompts = Prompts(index=np.arange(1), items={"prompt": ["Question: 1 + 2 =\nAnswer:"]})
    free = HFGenerator(max_new_tokens=20, temperature=0.0).generate(model, prompts, rng=np.random.default_rng(0))
    text = free.samples["completion"][0]
    assert len(text) > 3
    stop = text[2:4]
    cut = HFGenerator(max_new_tokens=20, temperature=0.0, stop_strings=(stop,), check_every=1).generate(
        model, prompts, rng=np.random.default_rng(0))
    assert cut.samples["completion"][0] == text[: text.find(stop)]
    assert cut.usage["completion_tokens"][0] < free.usage["completion_tokens"][0]


# -- learner ----------------------------------------------------------------------------------


# peft 0.21 calls a transformers 5 property that is deprecated; nothing to change on our side.
PEFT_DEPRECATION = "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"


@pytest.mark.filterwarnings(PEFT_DEPRECATION)
@pytest.mark.parametrize("lora", [None, LoraSettings(rank=4, alpha=8, target_modules=("c_attn",))])
def test_learner_conformance_and_checkpoint_restores_next_step_loss(tokenizer: object,
                                                                     lora: LoraSettings | None) -> None:
    candidates, prompts = answered(small_task())
    check_learner(lambda: SFTLearner(base=tiny(tokenizer), lr=1e-2, batch_size=2, grad_accum=2, lora=lora),
                  candidates, prompts, atol=1e-6)


@pytest.mark.filterwarnings(PEFT_DEPRECATION)
@pytest.mark.parametrize("lora", [None, LoraSettings(rank=8, alpha=16, target_modules=("c_attn", "c_fc"))])
def test_full_and_lora_fine_tuning_both_lower_the_loss(tokenizer: object, lora: LoraSettings | None) -> None:
    candidates, prompts = answered(small_task(), n=8)
    learner = SFTLearner(base=tiny(tokenizer), lr=3e-3 if lora is None else 5e-2, batch_size=4, lora=lora)
    trainable = sum(p.numel() for p in learner.model.network.parameters() if p.requires_grad)
    total = sum(p.numel() for p in learner.model.network.parameters())
    assert (trainable == total) == (lora is None)
    before = learner.loss(candidates)
    frozen = {k: v.clone() for k, v in learner.model.network.named_parameters() if not v.requires_grad}
    for k in range(15):
        metrics = learner.update(candidates, prompts, rng=np.random.default_rng(k))
    assert metrics["optimizer_steps"] == 2 and metrics["trained_tokens"] > 0
    # A random 32-wide model with rank-8 adapters and a frozen output layer has little room to move.
    assert learner.loss(candidates) < (0.7 if lora is None else 0.95) * before
    after = dict(learner.model.network.named_parameters())
    assert all(torch.equal(v, after[k]) for k, v in frozen.items())


def test_prompt_tokens_are_masked_and_usage_counts_trained_tokens(tokenizer: object) -> None:
    candidates, _ = answered(small_task(), n=3)
    learner = SFTLearner(base=tiny(tokenizer))
    ids, n_prompt = learner.encode(candidates.samples["question_prompt"][0], candidates.samples["completion"][0])
    _, labels, _ = learner._collate([(ids, n_prompt)])
    assert (labels[0, :n_prompt] == -100).all() and (labels[0, n_prompt:] >= 0).all()
    usage = learner.training_usage(candidates)
    assert usage["tokens"][0] == len(ids) and usage["completion_tokens"][0] == len(ids) - n_prompt


def test_restart_goes_back_to_the_base_model(tokenizer: object) -> None:
    candidates, prompts = answered(small_task())
    base_loss = SFTLearner(base=tiny(tokenizer)).loss(candidates)
    learner = SFTLearner(base=tiny(tokenizer), lr=1e-2, reset="restart")
    learner.update(candidates, prompts, rng=np.random.default_rng(0))
    once = learner.loss(candidates)
    learner.update(candidates, prompts, rng=np.random.default_rng(0))
    assert learner.loss(candidates) == pytest.approx(once, rel=1e-6) and once < base_loss


def test_rationalization_retries_failures_with_the_hint(tokenizer: object) -> None:
    task = small_task()
    prompts = task.sample_prompts(4, rng=np.random.default_rng(0))
    wrapped = Rationalizing(greedy(8), task.verifier)
    candidates = check_generator(wrapped, tiny(tokenizer), prompts)
    assert all(candidates.samples["rationalized"])  # an untrained model fails every prompt
    assert candidates.samples["prompt"] == prompts.items["prompt"]  # trained without the hint
    assert np.all(candidates.usage["samples"] == 2)
    assert np.all(candidates.usage["verify:samples"] == 1)  # the check it ran itself, charged to verify


def test_math_task_is_a_prompt_pool_for_weighted_policies() -> None:
    from synthloop.policies import WeightedPrompts
    from synthloop.testing import check_prompt_policy

    task = small_task()
    again = task.prompts_at(np.array([3, 0, 3]))
    assert again.index.tolist() == [3, 0, 3] and again.items["prompt"][0] == again.items["prompt"][2]
    check_prompt_policy(WeightedPrompts(pool_size=task.pool_size), task, model=None)


# -- the loop ---------------------------------------------------------------------------------


def config(tmp: Path, **overrides: object) -> dict[str, object]:
    """A from-scratch GPT-2 pretrained just long enough to answer about 1 in 8 problems."""
    data: dict[str, object] = {
        "name": "tiny-math",
        "seed": 0,
        "task": {"kind": "math", "levels": [{"name": "add1", "dataset": "chain_sum",
                                             "params": EASY.params}],
                 "train_size": 200, "eval_size": 50, "shots": 0},
        "model": {"kind": "scratch", "n_layer": 2, "n_embd": 48, "n_head": 4, "n_positions": 128,
                  "vocab_size": 400, "seed_problems": 500, "pretrain_steps": 300, "pretrain_batch_size": 32,
                  "pretrain_lr": 1e-2, "pretrain_bf16": False},
        "generator": {"kind": "hf", "max_new_tokens": 20, "temperature": 0.7, "batch_size": 64,
                      "eval_batch_size": 64, "bf16": False},
        "learner": {"kind": "sft", "lr": 1e-3, "batch_size": 16, "epochs": 1, "bf16": False},
        "selector": {"kind": "passed"},
        "schedule": {"kind": "constant", "n0": 128},
        "budget": {"total": 400_000, "unit": "tokens",
                   "costs": {"generate": {"tokens": 1.0}, "train": {"tokens": 1.0}}},
        "loop": {"max_iterations": 5, "store_candidates": "selected"},
    }
    data.update(overrides)
    return data


def test_config_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^model\.kind"):
        parse_config(config(tmp_path, model={"kind": "gpt5"}))
    with pytest.raises(ConfigError, match=r"^task\.levels\.0\.dataset"):
        parse_config(config(tmp_path, task={"kind": "math", "levels": [{"name": "x", "dataset": "mnist"}]}))
    with pytest.raises(ConfigError, match=r"^learner\.reset"):
        parse_config(config(tmp_path, learner={"kind": "sft", "reset": "sometimes"}))


def test_loop_with_hf_plugins_charges_tokens_and_accuracy_rises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    monkeypatch.setenv("SYNTHLOOP_CACHE", str(tmp_path / "cache"))
    import pyarrow.parquet as pq

    from synthloop.experiments import run_config
    from synthloop.store import RunStore

    cfg = parse_config(config(tmp_path))
    history = run_config(cfg, run_dir=tmp_path / "run")
    committed = RunStore(tmp_path / "run").manifest().initial
    assert committed is not None
    initial = committed.metrics["accuracy"]
    final = history[-1].eval["accuracy"]
    curve = [initial] + [m.eval["accuracy"] for m in history]
    assert len(history) == 5 and all(m.n_selected == 128 for m in history)
    assert history[-1].cumulative_cost <= 400_000
    # STaR / Spend Wisely on an easy task: held-out greedy accuracy and the acceptance rate both rise.
    assert final >= initial + 0.08, curve
    # acceptance is accepted / drawn (draws past n_t counted too), on training prompts at temperature
    # 0.7: it follows accuracy, about 0.11 -> 0.20 here
    assert history[-1].acceptance_rate > 1.5 * history[0].acceptance_rate
    ledger = pq.read_table(tmp_path / "run" / "ledger.parquet").to_pylist()
    generated = sum(r["cost"] for r in ledger if r["stage"] == "generate")
    trained = sum(r["cost"] for r in ledger if r["stage"] == "train")
    assert generated > 0 and trained > 0  # both priced in tokens
    assert trained == pytest.approx(sum(m.train["trained_tokens"] for m in history))
    assert (tmp_path / "run" / "iter-0004" / "checkpoint" / "learner" / "trainable.safetensors").is_file()


def test_loss_on_completion_positions_only_equals_the_full_loss(tokenizer: object) -> None:
    candidates, _ = answered(small_task(), n=6)
    learner = SFTLearner(base=tiny(tokenizer))
    examples = [learner.encode(p, c) for p, c in zip(candidates.samples["question_prompt"],
                                                      candidates.samples["completion"], strict=True)]
    ids, labels, mask = learner._collate(examples)
    with torch.no_grad():
        logits = learner.model.network(input_ids=ids, attention_mask=mask).logits
        full = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
        trimmed = learner._loss_sum(learner.model.network, ids, labels, mask, min(k for _, k in examples))
    assert float(trimmed) == pytest.approx(float(full), rel=1e-5)


def test_planning_prompt_lengths_table_equals_the_measurement() -> None:
    """``PROMPT_CHARS`` spares planning the reasoning-gym import; it must hold what the
    measurement gives, for every math example, or plans would drift with reasoning-gym."""
    from synthloop.configs import load_config
    from synthloop.families import math as math_family

    examples = sorted((Path(__file__).resolve().parents[1] / "examples").glob("math-*.yaml"))
    assert examples
    keys = set()
    for path in examples:
        task = math_family.FAMILY.validate(load_config(path)).task
        keys.add(math_family.planning_key(task))
        assert math_family.planning_key(task) in math_family.PROMPT_CHARS, path.name
        assert math_family.prompt_chars(task) == math_family.measured_prompt_chars(task), path.name
    assert keys == set(math_family.PROMPT_CHARS)  # no stale entries
    other = parse_config(config(Path("."), task={"kind": "math", "shots": 2, "levels": [
        {"name": "b", "dataset": "basic_arithmetic", "params": {"min_terms": 2, "max_terms": 3}}]}))
    task = math_family.FAMILY.validate(other).task
    assert math_family.planning_key(task) not in math_family.PROMPT_CHARS
    assert math_family.prompt_chars(task) == math_family.measured_prompt_chars(task) > 100


def test_cli_plans_the_example_configs_and_rejects_a_bad_one(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    for name in ("math-smollm2.yaml", "math-schedules.yaml"):
        out = subprocess.run([sys.executable, "-m", "synthloop.cli", "plan", str(root / "examples" / name)],
                             capture_output=True, text=True, env=env, timeout=120, check=False)
        assert out.returncode == 0, out.stderr
        assert "6 iterations" in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text((root / "examples" / "math-schedules.yaml").read_text().replace("chain_sum", "chainsum", 1))
    out = subprocess.run([sys.executable, "-m", "synthloop.cli", "plan", str(bad)],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "task.levels.0.dataset" in out.stderr


def test_tiny_model_kind_builds_an_untrained_gpt2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTHLOOP_CACHE", str(tmp_path))
    from synthloop.experiments import build_components

    cfg = parse_config(config(tmp_path, model={"kind": "tiny", "n_layer": 1, "n_embd": 16, "n_head": 2,
                                               "seed_problems": 50}))
    components = build_components(cfg)
    assert components.learner.model.network.config.n_layer == 1
    assert check_evaluation(components.task, components.learner.model)["accuracy"] < 0.1
