"""The digits learner's per-example update statistics (what the adaptive schedule reads there)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from synthloop.budget import AdaptivePlanner, UnitCosts  # noqa: E402
from synthloop.models.diffusion import (  # noqa: E402
    DDPMScheduler,
    NoisePredictionLearner,
    UNetSpec,
    _Moments,
    last_layer_gradients,
)
from synthloop.records import Candidates, IterationRecord, Prompts, ones_usage  # noqa: E402
from torch_threads import one_thread  # noqa: E402, F401  (autouse: one torch thread for this module)


def _learner(batch_size: int = 8) -> NoisePredictionLearner:
    torch.manual_seed(0)
    unet = UNetSpec(block_out_channels=(8, 16), norm_num_groups=4).build()
    return NoisePredictionLearner(unet, DDPMScheduler(num_train_timesteps=1000), noise_step=10,
                                  batch_size=batch_size, lr=1e-3, ema_decay=0.9, flops_per_forward=1.0)


def test_last_layer_gradients_are_the_per_example_autograd_gradients() -> None:
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(6, 2, 3, padding=1)
    inputs, target = torch.randn(5, 6, 8, 8), torch.randn(5, 2, 8, 8)
    rows = last_layer_gradients(conv, inputs, (conv(inputs) - target).detach())
    for i in range(5):
        conv.zero_grad()
        torch.nn.functional.mse_loss(conv(inputs[i:i + 1]), target[i:i + 1]).backward()
        assert conv.weight.grad is not None and conv.bias is not None and conv.bias.grad is not None
        expected = torch.cat([conv.weight.grad.reshape(-1), conv.bias.grad]).double().numpy()
        np.testing.assert_allclose(rows[i], expected, rtol=1e-4, atol=1e-7)
    # the batch loss's gradient is their mean
    conv.zero_grad()
    torch.nn.functional.mse_loss(conv(inputs), target).backward()
    assert conv.weight.grad is not None
    np.testing.assert_allclose(rows.mean(axis=0)[:-2], conv.weight.grad.reshape(-1).double().numpy(), rtol=1e-4,
                               atol=1e-7)


def _images(n: int, seed: int) -> Candidates:
    image = np.random.default_rng(seed).uniform(-1, 1, (n, 1, 8, 8)).astype(np.float32)
    return Candidates(samples={"image": image}, prompt_index=np.arange(n), usage=ones_usage(n, samples=1))


def test_the_learner_reports_statistics_over_the_images_it_trained_on() -> None:
    learner = _learner()
    assert learner.update_statistics() == {}
    learner.update(_images(5, 0), Prompts.unconditional(5), rng=np.random.default_rng(0))
    assert learner.update_statistics() == {}  # no full batch yet: no optimizer step, no statistics
    learner.update(_images(20, 1), Prompts.unconditional(20), rng=np.random.default_rng(1))
    stats = learner.update_statistics()
    assert set(stats) == {"update_variance", "update_norm2"}  # no previous update yet
    assert stats["update_variance"] > 0 and stats["update_norm2"] > 0
    # the variance of a mean over 24 examples is what the norm test compares with the squared mean
    assert np.isfinite(stats["update_variance"] / 24 / stats["update_norm2"])


def _known_update(learner: NoisePredictionLearner, rows: np.ndarray) -> dict[str, float]:
    learner._moments = _Moments()
    learner._moments.add(rows)
    learner._record_statistics()
    return learner.update_statistics()


def test_the_inner_product_is_that_of_successive_mean_updates() -> None:
    learner = _learner()
    first = np.array([[1.0, 2.0, 0.0], [3.0, 0.0, 2.0]])  # mean (2, 1, 1)
    second = np.array([[0.0, 1.0, -1.0], [2.0, -3.0, 5.0], [1.0, 5.0, 2.0]])  # mean (1, 1, 2)
    assert "update_dot_previous" not in _known_update(learner, first)
    stats = _known_update(learner, second)
    assert stats["update_dot_previous"] == pytest.approx(2 + 1 + 2) and stats["update_norm2"] == pytest.approx(6)
    # an update that took no step moves nothing: the pair spans it
    assert _known_update(learner, np.zeros((1, 3))) == {}
    assert _known_update(learner, first)["update_dot_previous"] == pytest.approx(5)


def test_the_inner_product_survives_a_checkpoint_and_old_checkpoints_load(tmp_path) -> None:
    learner = _learner()
    learner.update(_images(16, 0), Prompts.unconditional(16), rng=np.random.default_rng(0))
    first = learner.update_statistics()
    assert "update_dot_previous" not in first
    learner.save(tmp_path)
    learner.update(_images(16, 1), Prompts.unconditional(16), rng=np.random.default_rng(1))
    uninterrupted = learner.update_statistics()
    assert uninterrupted["update_dot_previous"] != 0
    # Cauchy-Schwarz against the two norms the planner also reads
    assert uninterrupted["update_dot_previous"] ** 2 <= first["update_norm2"] * uninterrupted["update_norm2"] * (1 + 1e-9)
    resumed = _learner()
    resumed.load(tmp_path)
    resumed.update(_images(16, 1), Prompts.unconditional(16), rng=np.random.default_rng(1))
    assert resumed.update_statistics() == uninterrupted
    (tmp_path / "previous_update.safetensors").unlink()  # a checkpoint written before it was kept
    old = _learner()
    old.load(tmp_path)
    old.update(_images(16, 1), Prompts.unconditional(16), rng=np.random.default_rng(1))
    stats = old.update_statistics()
    assert "update_dot_previous" not in stats
    assert stats == {k: v for k, v in uninterrupted.items() if k != "update_dot_previous"}


def test_with_statistics_the_adaptive_planner_leaves_the_pilot() -> None:
    """From records carrying the digits learner's statistics the planner sizes by its rule, not
    by keeping the pilot (the behaviour for learners that report none)."""
    learner = _learner(batch_size=4)
    planner = AdaptivePlanner(budget=1e6, unit_costs=UnitCosts(0.0, 1.0), acceptance_rate=1.0, tolerance=0.1, n0=16)
    t, spent, sizes = 0, 0.0, []
    while (rows := planner.refit(next_iteration=t, spent=spent, acceptance_rate=1.0)) and t < 4:
        n = rows[0].n_selected
        learner.update(_images(n, t), Prompts.unconditional(n), rng=np.random.default_rng(t))
        planner.observe(IterationRecord(
            iteration=t, n_target=n, n_selected=n, n_generated=n, n_parts=1, n_accepted=n, acceptance_rate=1.0,
            verdicts={}, cost={}, seconds={}, iteration_cost=float(n), cumulative_cost=0.0, budget=0.0,
            cut=False, exhausted=False, selected_sha256="", train={}, eval={},
            update_statistics=learner.update_statistics()))
        spent, t = spent + n, t + 1
        sizes.append(n)
    assert sizes[:3] == [16, 16, 16] and sizes[3] != 16 and sizes[3] < 1e5, sizes


def test_the_digits_task_has_a_diagnostic_view_in_pixels() -> None:
    from synthloop.diagnostics.stage import Diagnosable
    from synthloop.models.diffusion import DenoisingGenerator
    from synthloop.tasks.digits import DigitsData, DigitsDenoiseTask

    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (40, 1, 8, 8)).astype(np.float32)
    task = DigitsDenoiseTask(DigitsData.split(images, n_heldout=10, seed=0),
                             denoiser=DenoisingGenerator(noise_step=2, flops_per_forward=1.0),
                             psnr_range=(20.0, 30.0), n_eval=5)
    assert isinstance(task, Diagnosable)
    view = task.diagnostic_view(Candidates(samples={"image": 2 * images[:6]}, prompt_index=np.arange(6),
                                           usage=ones_usage(6, samples=1)), Prompts.unconditional(6))
    assert view.features is not None and view.features.shape == (6, 64) and np.abs(view.features).max() <= 1
    anchor, reference = task.diagnostic_reference(8, rng=rng)
    assert anchor.features is not None and anchor.features.shape == (8, 64)
    assert reference.features is not None and reference.features.shape == (8, 64)
    held = {row.tobytes() for row in task.data.heldout.reshape(10, -1).astype(np.float64)}
    assert all(row.tobytes() in held for row in reference.features)
