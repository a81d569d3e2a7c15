"""The math learner's per-example update statistics (what the adaptive schedule reads there).

Each first-epoch optimizer step's gradient is one draw; the tests recompute those gradients with a
separate backward pass on a second learner that follows the same trajectory, and check the
reported variance, norm and inner product against them (docs/adaptive.md, "Math task").
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("reasoning_gym")

from synthloop.models.hf import CoordinateSample, LoraSettings, SFTLearner, StepMoments  # noqa: E402
from synthloop.models.scratch import TinyGPT2Config, tiny_gpt2, train_tokenizer  # noqa: E402
from synthloop.records import Candidates, Prompts  # noqa: E402
from synthloop.tasks.math import Level, load_problems, question_prompt  # noqa: E402
from torch_threads import one_thread  # noqa: E402, F401  (autouse: one torch thread for this module)

EASY = Level("add1", "chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1})
PEFT_DEPRECATION = "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"
KEYS = {"update_variance", "update_norm2", "update_dot_previous"}


@pytest.fixture(scope="module")
def tokenizer() -> object:
    texts = [f"{question_prompt(p.question)} {p.solution}" for p in load_problems(EASY, size=200, seed=5)]
    return train_tokenizer(texts, vocab_size=200)


def _learner(tokenizer: object, **options: object) -> SFTLearner:
    model = tiny_gpt2(tokenizer, TinyGPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=192, seed=0))
    torch.manual_seed(0)  # peft draws the LoRA A matrices from the global generator
    settings: dict[str, object] = {"lr": 1e-2, "batch_size": 2, "grad_accum": 2, "max_grad_norm": 0.5, **options}
    return SFTLearner(base=model, **settings)  # type: ignore[arg-type]


def _examples(n: int, seed: int) -> Candidates:
    """Worked solutions of distinct lengths (so the length-sorted micro-batches differ from the steps)."""
    problems = load_problems(EASY, size=n, seed=seed)
    samples = {"prompt": [question_prompt(p.question) for p in problems],
               "question_prompt": [question_prompt(p.question) for p in problems],
               "completion": [" " + p.solution for p in problems]}
    return Candidates(samples=samples, prompt_index=np.arange(n), usage={"samples": np.ones(n)})


def _step_gradients(reference: SFTLearner, selected: Candidates, seed: int) -> list[tuple[int, np.ndarray]]:
    """(b_k, g_k) of every first-epoch step, each from one full-batch backward of its own; the
    reference learner then takes the same optimizer steps as the learner under test (all epochs)."""
    rng = np.random.default_rng(seed)
    rng.integers(0, 2**63 - 1)  # the learner's dropout seed comes first
    examples = [reference.encode(p, c) for p, c in zip(selected.samples["question_prompt"],
                                                       selected.samples["completion"], strict=True)]
    per_step = reference.batch_size * reference.grad_accum
    params = [p for p in reference.model.network.parameters() if p.requires_grad]
    steps = []
    for epoch in range(reference.epochs):
        order = rng.permutation(len(examples))
        for start in range(0, len(order), per_step):
            batch = [examples[int(i)] for i in order[start:start + per_step]]
            if epoch == 0:
                steps.append((len(batch), _gradient(reference, batch, params)))
            reference.optimizer_step(batch)
    return steps


def _gradient(reference: SFTLearner, batch: list[tuple[list[int], int]], params: list) -> np.ndarray:
    network = reference.model.network
    ids, labels, mask = reference._collate(batch)
    logits = network(input_ids=ids, attention_mask=mask).logits[:, :-1]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                             ignore_index=-100, reduction="sum")
    grads = torch.autograd.grad(loss / int((labels != -100).sum()), params, allow_unused=True)
    return torch.cat([torch.zeros(p.numel()) if g is None else g.reshape(-1) for p, g in zip(params, grads,
                                                                                             strict=True)]).double().numpy()


def _expected(steps: list[tuple[int, np.ndarray]]) -> tuple[float, np.ndarray]:
    """V = sum b_k ||g_k - gbar||^2 / (m - 1) and the b_k-weighted mean gbar, computed directly."""
    b = np.array([k for k, _ in steps], dtype=np.float64)
    g = np.stack([v for _, v in steps])
    mean = (b[:, None] * g).sum(axis=0) / b.sum()
    return float((b * np.square(g - mean).sum(axis=1)).sum() / (len(steps) - 1)), mean


@pytest.mark.filterwarnings(PEFT_DEPRECATION)
@pytest.mark.parametrize("lora", [None, LoraSettings(rank=4, alpha=8, target_modules=("c_attn",))])
def test_statistics_equal_a_direct_computation_from_each_steps_gradient(tokenizer: object,
                                                                       lora: LoraSettings | None) -> None:
    clip = 0.5 if lora is None else 0.05  # low enough to act (LoRA's zero-initialised B gives small gradients)
    learner, reference = (_learner(tokenizer, lora=lora, epochs=2, max_grad_norm=clip) for _ in range(2))
    first, second = _examples(22, 1), _examples(22, 2)  # steps of 4, 4, 4, 4, 4 and 2 examples
    learner.update(first, Prompts.unconditional(22), rng=np.random.default_rng(5))
    stats = learner.update_statistics()
    steps = _step_gradients(reference, first, 5)
    variance, mean = _expected(steps)
    assert [b for b, _ in steps] == [4, 4, 4, 4, 4, 2] and set(stats) == KEYS - {"update_dot_previous"}
    assert max(np.linalg.norm(g) for _, g in steps) > learner.max_grad_norm  # clipping acted; stats are before it
    assert stats["update_variance"] == pytest.approx(variance, rel=1e-4)
    assert stats["update_norm2"] == pytest.approx(float(mean @ mean), rel=1e-4)
    # the checks can fail: an unweighted mean or a variance without the b_k factor is far off
    unweighted = np.mean([g for _, g in steps], axis=0)
    assert abs(float(unweighted @ unweighted) / float(mean @ mean) - 1) > 1e-2
    plain = sum(np.square(g - mean).sum() for _, g in steps) / (len(steps) - 1)
    assert abs(plain / variance - 1) > 0.5
    learner.update(second, Prompts.unconditional(22), rng=np.random.default_rng(6))
    _, second_mean = _expected(_step_gradients(reference, second, 6))
    assert learner.update_statistics()["update_dot_previous"] == pytest.approx(float(second_mean @ mean), rel=1e-4)
    trainable = sum(p.numel() for p in learner.model.network.parameters() if p.requires_grad)
    assert learner.coordinates_ is not None and learner.coordinates_.total == trainable == len(mean)


def test_a_coordinate_sample_scaled_by_d_over_m_is_unbiased() -> None:
    rng = np.random.default_rng(0)
    sizes = (50, 30, 1, 19)
    a, b = rng.normal(size=100) + 1.0, rng.normal(size=100)
    parts = [torch.from_numpy(x) for x in np.split(a, np.cumsum(sizes)[:-1])]
    others = [torch.from_numpy(x) for x in np.split(b, np.cumsum(sizes)[:-1])]
    squares, products = [], []
    for seed in range(3000):
        sample = CoordinateSample(sizes, cap=10, seed=seed)
        x, y = sample.take(parts), sample.take(others)
        np.testing.assert_array_equal(x, a[sample.indices()])
        squares.append(sample.scale * float(x @ x))
        products.append(sample.scale * float(x @ y))
    for estimates, exact in ((squares, float(a @ a)), (products, float(a @ b))):
        error = np.std(estimates) / np.sqrt(len(estimates))
        assert abs(np.mean(estimates) - exact) < 4 * error, (np.mean(estimates), exact, error)
        assert np.std(estimates) > 0.05 * abs(exact)  # the sample does vary (the test is not trivial)
    whole = CoordinateSample(sizes, cap=100, seed=3)
    assert whole.scale == 1 and whole.take(parts).tolist() == a.tolist()
    again = CoordinateSample(sizes, cap=10, seed=7)
    assert again.indices().tolist() == CoordinateSample(sizes, cap=10, seed=7).indices().tolist()
    assert len(set(again.indices().tolist())) == 10  # without replacement


def test_a_capped_learner_measures_its_sampled_coordinates_scaled_to_the_whole(tokenizer: object) -> None:
    capped, reference = _learner(tokenizer, statistics_coordinates=64), _learner(tokenizer)
    whole = _learner(tokenizer, statistics_coordinates=10**9)
    selected = _examples(12, 3)
    for learner in (capped, whole):
        learner.update(selected, Prompts.unconditional(12), rng=np.random.default_rng(2))
    steps = _step_gradients(reference, selected, 2)
    assert capped.coordinates_ is not None and capped.coordinates_.count == 64
    chosen = capped.coordinates_.indices()
    scale = capped.coordinates_.total / 64
    variance, mean = _expected([(b, g[chosen]) for b, g in steps])
    stats = capped.update_statistics()
    assert stats["update_variance"] == pytest.approx(scale * variance, rel=1e-4)
    assert stats["update_norm2"] == pytest.approx(scale * float(mean @ mean), rel=1e-4)
    full_variance, full_mean = _expected(steps)
    assert whole.update_statistics()["update_variance"] == pytest.approx(full_variance, rel=1e-4)
    assert whole.update_statistics()["update_norm2"] == pytest.approx(float(full_mean @ full_mean), rel=1e-4)


def test_a_resumed_learner_reports_the_same_statistics_and_old_checkpoints_load(tokenizer: object,
                                                                                 tmp_path: Path) -> None:
    learner = _learner(tokenizer)
    learner.update(_examples(12, 1), Prompts.unconditional(12), rng=np.random.default_rng(0))
    learner.save(tmp_path)
    assert (tmp_path / "previous_update.safetensors").is_file()
    learner.update(_examples(12, 2), Prompts.unconditional(12), rng=np.random.default_rng(1))
    uninterrupted = learner.update_statistics()
    assert set(uninterrupted) == KEYS
    resumed = _learner(tokenizer)
    resumed.load(tmp_path)
    resumed.update(_examples(12, 2), Prompts.unconditional(12), rng=np.random.default_rng(1))
    assert resumed.update_statistics() == uninterrupted  # bitwise
    (tmp_path / "previous_update.safetensors").unlink()  # a checkpoint written before it was kept
    old = _learner(tokenizer)
    old.load(tmp_path)
    old.update(_examples(12, 2), Prompts.unconditional(12), rng=np.random.default_rng(1))
    assert old.update_statistics() == {k: v for k, v in uninterrupted.items() if k != "update_dot_previous"}


def test_fewer_than_two_steps_report_nothing_and_keep_the_previous_mean(tokenizer: object) -> None:
    learner = _learner(tokenizer)
    assert learner.update_statistics() == {}
    learner.update(_examples(8, 1), Prompts.unconditional(8), rng=np.random.default_rng(0))
    first = learner.previous_
    assert first is not None and set(learner.update_statistics()) == KEYS - {"update_dot_previous"}
    learner.update(_examples(4, 2), Prompts.unconditional(4), rng=np.random.default_rng(1))  # one step of 4
    assert learner.update_statistics() == {} and learner.previous_ is first
    learner.update(_examples(8, 2).take(np.arange(0)), Prompts.unconditional(0), rng=np.random.default_rng(1))
    assert learner.update_statistics() == {}
    learner.update(_examples(8, 3), Prompts.unconditional(8), rng=np.random.default_rng(2))
    stats = learner.update_statistics()
    assert learner.previous_ is not None
    assert stats["update_dot_previous"] == pytest.approx(float(learner.previous_ @ first))


def test_restart_reports_each_updates_own_statistics(tokenizer: object) -> None:
    """Restarting from the base model, the same data and rng give the same update twice: the same
    variance and norm, and an inner product with the previous mean equal to the squared norm."""
    learner = _learner(tokenizer, reset="restart")
    learner.update(_examples(12, 1), Prompts.unconditional(12), rng=np.random.default_rng(0))
    once = learner.update_statistics()
    learner.update(_examples(12, 1), Prompts.unconditional(12), rng=np.random.default_rng(0))
    twice = learner.update_statistics()
    assert twice["update_variance"] == once["update_variance"] and twice["update_norm2"] == once["update_norm2"]
    assert twice["update_dot_previous"] == pytest.approx(once["update_norm2"], rel=1e-12)


def test_step_moments_weight_each_step_by_its_examples() -> None:
    moments = StepMoments()
    assert moments.statistics(1.0) == {} and moments.mean() is None
    moments.add(np.array([2.0, 0.0]), 3)
    assert moments.statistics(1.0) == {}  # one step: no variance
    moments.add(np.array([0.0, 1.0]), 1)
    # gbar = (1.5, 0.25); V = 3 ||(0.5, -0.25)||^2 + 1 ||(-1.5, 0.75)||^2 = 0.9375 + 2.8125
    assert moments.statistics(2.0) == pytest.approx({"update_variance": 2 * 3.75, "update_norm2": 2 * 2.3125})


def _adaptive_config() -> dict[str, object]:
    """A random tiny model whose every answer is accepted (noisy filter, false_accept 1): real
    gradients on real SFT steps, cheaply; the sizes are what the adaptive planner makes of them."""
    return {
        "name": "tiny-math-adaptive", "seed": 0,
        "task": {"kind": "math", "levels": [{"name": "add1", "dataset": "chain_sum", "params": EASY.params}],
                 "train_size": 200, "eval_size": 4, "shots": 0,
                 "filter": {"kind": "noisy", "false_accept": 1.0, "seed": 0}},
        "model": {"kind": "tiny", "n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 128,
                  "vocab_size": 200, "seed_problems": 100},
        "generator": {"kind": "hf", "max_new_tokens": 6, "temperature": 1.0, "batch_size": 64,
                      "eval_batch_size": 4, "bf16": False},
        "learner": {"kind": "sft", "lr": 3e-3, "batch_size": 4, "epochs": 1, "bf16": False},
        "selector": {"kind": "passed"},
        "schedule": {"kind": "adaptive", "tolerance": 0.5},
        "budget": {"total": 900, "unit": "samples", "costs": {"train": {"samples": 1.0}}},
        "loop": {"max_iterations": 6, "store_candidates": "selected"},
    }


def test_an_adaptive_math_run_records_the_statistics_and_adapts(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTHLOOP_CACHE", str(tmp_path / "cache"))
    from dataclasses import replace

    from synthloop.configs import make_planner, parse_config
    from synthloop.experiments import run_config

    config = parse_config(_adaptive_config())
    history = run_config(config, run_dir=tmp_path / "run")
    sizes = [m.n_selected for m in history]
    assert sizes[0] == 30 and len(history) >= 5, sizes  # the pilot, ceil(sqrt(900))
    measured = [m for m in history if m.n_selected > 4]  # two optimizer steps of 4 or more
    assert len(measured) >= 4 and measured[0].iteration == 0, sizes
    assert all(m.update_statistics == {} for m in history if m.n_selected <= 4)  # one step: nothing to measure
    for m in measured:
        assert set(m.update_statistics) == (KEYS if m.iteration > 0 else KEYS - {"update_dot_previous"}), m
        assert m.update_statistics["update_variance"] > 0 and m.update_statistics["update_norm2"] > 0
    assert sizes[:3] == [30] * 3 and any(n != 30 for n in sizes[3:-1]), sizes  # it adapts after learning
    # the planner's sizes come from the statistics: without them it would have kept the pilot
    for strip in (False, True):
        planner = make_planner(config)
        for record in history[:3]:
            planner.observe(replace(record, update_statistics={}) if strip else record)
        rows = planner.refit(next_iteration=3, spent=history[2].cumulative_cost,
                             acceptance_rate=history[2].acceptance_rate)
        assert (rows[0].n_selected == 30) == strip, (strip, rows, sizes)
