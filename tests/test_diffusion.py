"""Digits denoising with diffusers (Spend Wisely, section 5.1): plug-ins, data, cost accounting, a run.

Everything is tiny (a ~10k-parameter UNet on 8x8 digits) so the file runs in well under a minute.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffusers import UNet2DModel  # noqa: E402

from synthloop.configs import ConfigError, RunConfig, load_config, parse_config  # noqa: E402
from synthloop.experiments import build_components, run_config  # noqa: E402
from synthloop.families import digits as digits_family  # noqa: E402
from synthloop.loop import Components  # noqa: E402
from synthloop.models import diffusion  # noqa: E402
from synthloop.models.diffusion import (  # noqa: E402
    DenoisingGenerator,
    NoisePredictionLearner,
    UNetSpec,
    forward_flops,
    load_checkpoint,
)
from synthloop.models.unet_flops import unet_forward_flops  # noqa: E402
from synthloop.records import Candidates, Prompts, Verdict  # noqa: E402
from synthloop.tasks.digits import PSNRVerifier, load_mnist, natural_patches, psnr  # noqa: E402
from synthloop.testing import (  # noqa: E402
    check_evaluation,
    check_generator,
    check_learner,
    check_task,
    check_verifier,
)
from torch_threads import one_thread  # noqa: E402, F401  (autouse: one torch thread for this module)

NOISE_STEP = 10
N_EVAL = 32


def tiny_config(cache: Path, **overrides: Any) -> RunConfig:
    data: dict[str, Any] = {
        "name": "tiny-digits",
        "seed": 0,
        "task": {"kind": "digits-denoise", "noise_step": NOISE_STEP, "n_heldout": 64, "n_eval": N_EVAL,
                 "psnr_range": [28.0, 36.0]},
        "model": {"kind": "pretrain", "block_out_channels": [8, 16], "norm_num_groups": 4, "steps": 40,
                  "batch_size": 32, "lr": 2e-3, "cache_dir": str(cache)},
        "learner": {"kind": "noise_prediction", "batch_size": 8, "lr": 3e-3, "ema_decay": 0.9},
        "generator": {"kind": "denoise", "batch_size": 64},
        "schedule": {"kind": "constant", "n0": 32, "iterations": 4},
        "budget": {"total": 1e7, "unit": "forward_passes", "costs": {"generate": 1.0, "train": 1.0},
                   "expected_acceptance": 0.5},
        "loop": {"store_candidates": "none"},
    }
    for section, values in overrides.items():
        data[section] = {**data[section], **values} if isinstance(values, dict) else values
    return parse_config(data)




@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synthloop-cache")


@pytest.fixture(scope="module")
def parts(cache: Path) -> Components:
    return build_components(tiny_config(cache))


@pytest.fixture()
def batch(parts: Components) -> tuple[Prompts, Candidates]:
    prompts = parts.task.sample_prompts(12, rng=np.random.default_rng(0))
    candidates = parts.generator.generate(parts.learner.model, prompts, rng=np.random.default_rng(1))
    return prompts, candidates


# -- conformance -------------------------------------------------------------------------------


def test_the_digits_are_a_prompt_pool_for_weighted_policies(parts: Components) -> None:
    from synthloop.policies import WeightedPrompts
    from synthloop.protocols import PromptPool
    from synthloop.testing import check_prompt_policy

    task = parts.task
    assert isinstance(task, PromptPool)
    again = task.prompts_at(np.array([5, 5]))
    assert np.array_equal(again.items["clean"][0], again.items["clean"][1])
    check_prompt_policy(WeightedPrompts(pool_size=task.pool_size), task, model=parts.learner.model)


def test_task_conforms(parts: Components) -> None:
    check_task(parts.task)
    metrics = check_evaluation(parts.task, parts.learner.model)
    # s = 10 of the linear DDPM schedule: the paper's noisy-input PSNR scale (33.25 dB on MNIST).
    assert 32.0 < metrics["psnr_noisy"] < 37.0
    assert metrics == parts.task.evaluate(parts.learner.model, rng=np.random.default_rng(99))


def test_generator_conforms_and_reports_usage(parts: Components) -> None:
    prompts = parts.task.sample_prompts(5, rng=np.random.default_rng(0))
    candidates = check_generator(parts.generator, parts.learner.model, prompts)
    assert candidates.samples["image"].shape == (5, 1, 8, 8)
    np.testing.assert_array_equal(candidates.usage["forward_passes"], NOISE_STEP)
    flops = forward_flops(parts.learner.model.unet)
    np.testing.assert_allclose(candidates.usage["flops"], NOISE_STEP * flops)
    assert parts.generator.max_usage_per_draw()["forward_passes"] == NOISE_STEP


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("digits-*.yaml")))
def test_planned_flops_equal_the_counted_flops_of_the_example_unets(example: str) -> None:
    """Planning prices FLOPs from the UNet's shape; the count must be FlopCounterMode's on the UNet
    that ``build`` makes, or plans would drift from what the ledger charges."""
    config = load_config(EXAMPLES / example)
    settings = digits_family.FAMILY.validate(config)
    spec = digits_family.pretrain_spec(settings).unet
    counted = forward_flops(spec.build())
    assert digits_family.forward_flops(settings) == counted
    usage = digits_family.FAMILY.usage_per_draw(settings)
    assert usage["flops"] == settings.task.noise_step * counted


@pytest.mark.parametrize("spec", [
    UNetSpec(),  # the tests' own model
    UNetSpec(sample_size=16, channels=3, block_out_channels=(32, 64, 64), layers_per_block=2),
    UNetSpec(sample_size=28, channels=1, block_out_channels=(16, 32, 64), layers_per_block=1),
    UNetSpec(sample_size=8, channels=2, block_out_channels=(16, 32, 64, 128), layers_per_block=3,
             norm_num_groups=16),
    UNetSpec(sample_size=8, channels=1, block_out_channels=(16,)),
])
def test_unet_flops_formula_equals_the_flop_counter_on_other_shapes(spec: UNetSpec) -> None:
    formula = unet_forward_flops(sample_size=spec.sample_size, channels=spec.channels,
                                 block_out_channels=spec.block_out_channels,
                                 layers_per_block=spec.layers_per_block)
    assert formula == forward_flops(spec.build())


def test_ddim_sampler_conforms(parts: Components) -> None:
    generator = DenoisingGenerator(noise_step=NOISE_STEP, flops_per_forward=1.0, sampler="ddim")
    prompts = parts.task.sample_prompts(5, rng=np.random.default_rng(0))
    candidates = check_generator(generator, parts.learner.model, prompts)
    assert candidates.samples["image"].shape == (5, 1, 8, 8)
    with pytest.raises(ValueError, match=r"generator\.sampler: allowed: ddpm, ddim"):
        DenoisingGenerator(noise_step=NOISE_STEP, flops_per_forward=1.0, sampler="euler")


def test_verifier_conforms(parts: Components, batch: tuple[Prompts, Candidates]) -> None:
    prompts, candidates = batch
    scores = check_verifier(parts.task.verifier, candidates, prompts)
    expected = np.clip((psnr(candidates.samples["image"], prompts.items["clean"]) - 28.0) / 8.0, 0, 1)
    np.testing.assert_allclose(scores.reward, expected)


def test_learner_conforms(parts: Components, batch: tuple[Prompts, Candidates], cache: Path) -> None:
    prompts, candidates = batch
    config = tiny_config(cache)
    check_learner(lambda: build_components(config).learner, candidates, prompts)


# -- reward, data, config ----------------------------------------------------------------------


def test_psnr_reward_maps_range_and_flags_broken_images() -> None:
    clean = np.full((3, 1, 4, 4), -1.0, dtype=np.float32)
    images = clean.copy()
    images[0] += 0.02  # MSE 4e-4 -> PSNR 40 dB
    images[1] += 0.002  # MSE 4e-6 -> PSNR 60 dB
    images[2, 0, 0, 0] = np.nan
    prompts = Prompts(index=np.arange(3), items={"clean": clean})
    candidates = Candidates(samples={"image": images}, prompt_index=np.arange(3), usage={})
    scores = PSNRVerifier(lo=35.0, hi=45.0).verify(candidates, prompts)
    np.testing.assert_allclose(scores.reward[:2], [0.5, 1.0], atol=1e-4)
    assert scores.verdict.tolist() == [Verdict.PASS, Verdict.PASS, Verdict.ERROR]
    assert np.isnan(scores.reward[2])


def _idx_bytes(images: np.ndarray) -> bytes:
    return struct.pack(">IIII", 0x803, *images.shape) + images.tobytes()


def test_mnist_loaders_read_idx_gzip_and_npz(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(images))
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images)))
    np.savez(tmp_path / "mnist.npz", images=images)
    for name in ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz", "mnist.npz"):
        np.testing.assert_array_equal(load_mnist(tmp_path / name), images)


def test_mnist_loader_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad-idx").write_bytes(b"\x00\x00\x08\x01" + b"\x00" * 12)
    (tmp_path / "short-idx").write_bytes(_idx_bytes(np.zeros((2, 28, 28), np.uint8))[:-5])
    np.savez(tmp_path / "other.npz", labels=np.zeros(3))
    for name, message in [("missing", "no such file"), ("bad-idx", "not an IDX image file"),
                          ("short-idx", "truncated"), ("other.npz", "no array named images")]:
        with pytest.raises(ValueError, match=message):
            load_mnist(tmp_path / name)


def test_mnist_source_pads_to_the_unet_size(tmp_path: Path, cache: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "mnist.npz", images=images)
    config = tiny_config(cache, task={"source": "mnist", "path": str(tmp_path / "mnist.npz"), "image_size": 32,
                                      "n_heldout": 8, "n_eval": 4},
                         model={"steps": 2})
    parts = build_components(config)
    clean = parts.task.sample_prompts(3, rng=np.random.default_rng(0)).items["clean"]
    assert clean.shape == (3, 1, 32, 32)
    assert np.all(clean[:, :, :2] == -1.0) and clean.min() >= -1.0 and clean.max() <= 1.0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"task": {"psnr_range": [40.0, 35.0]}}, "task.psnr_range: needs lo < hi"),
        ({"task": {"source": "mnist"}}, "mnist source needs a path"),
        ({"task": {"noise_steps": 10}}, "task.noise_steps: unknown key"),
        ({"model": {"kind": "diffusion"}}, "model.kind: unknown kind 'diffusion'; allowed: 'pretrain', 'pretrained'"),
        ({"model": {"block_out_channels": [10, 16]}}, "not a multiple of norm_num_groups"),
        ({"learner": {"batch_size": 0}}, "learner.batch_size"),
        ({"model": {"data": "cifar"}}, "model.data"),
    ],
)
def test_bad_config_names_the_field(cache: Path, override: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny_config(cache, **override)


def test_bad_checkpoint_path_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"model.path .*cannot load a diffusers UNet2DModel"):
        load_checkpoint(str(tmp_path))


# -- pretrain cache, learner state -------------------------------------------------------------


def test_pretrain_is_cached_by_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = build_components(tiny_config(tmp_path, model={"steps": 3}))

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("pretrained again despite a cached model")

    monkeypatch.setattr(diffusion, "pretrain", refuse)
    again = build_components(tiny_config(tmp_path, model={"steps": 3}))
    pairs = zip(first.learner.model.unet.parameters(), again.learner.model.unet.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert len(list((tmp_path / "ddpm").iterdir())) == 1
    with pytest.raises(AssertionError, match="pretrained again"):  # another config, another entry
        build_components(tiny_config(tmp_path, model={"steps": 4}))


def test_natural_patches_are_seeded_full_range_and_not_digits() -> None:
    patches = natural_patches(500, size=8, channels=3, downsample=4, seed=1)
    assert patches.shape == (500, 3, 8, 8) and patches.dtype == np.float32
    flat = patches[:, 0].reshape(500, -1)
    assert np.allclose(flat.min(axis=1), -1.0) and np.allclose(flat.max(axis=1), 1.0)  # stretched
    assert np.array_equal(patches[:, 0], patches[:, 2])  # gray repeated to every channel
    assert np.array_equal(patches, natural_patches(500, size=8, channels=3, downsample=4, seed=1))
    assert not np.array_equal(patches, natural_patches(500, size=8, channels=3, downsample=4, seed=2))
    # photographs, not digits: mid-gray is common, where 8x8 digits are mostly background (-1)
    assert np.mean(np.abs(flat) < 0.5) > 0.3


def test_pretraining_on_natural_patches_is_its_own_cache_entry(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[np.ndarray] = []
    real = diffusion.pretrain

    def spy(spec: Any, images: np.ndarray, **kwargs: Any) -> Any:
        seen.append(images)
        return real(spec, images, **kwargs)

    monkeypatch.setattr(diffusion, "pretrain", spy)
    build_components(tiny_config(tmp_path, model={"steps": 2}))
    build_components(tiny_config(tmp_path, model={"steps": 2, "data": "natural-patches", "patches": 256}))
    assert len(seen) == 2 and len(list((tmp_path / "ddpm").iterdir())) == 2
    assert len(seen[1]) == 256 and not np.isin(seen[1][:, 0, 0, 0], seen[0][:, 0, 0, 0]).all()
    entry = next(p for p in (tmp_path / "ddpm").iterdir() if "natural-patches" in (p / "pretrain.json").read_text())
    assert '"steps": 2' in (entry / "pretrain.json").read_text()
    with pytest.raises(ConfigError, match="patch_downsample 80 leaves photographs too small"):
        build_components(tiny_config(tmp_path, model={"data": "natural-patches", "patch_downsample": 80}))


def test_pretrain_cache_defaults_to_the_environment_folder(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTHLOOP_CACHE", str(tmp_path / "env-cache"))
    build_components(tiny_config(tmp_path, model={"steps": 2, "cache_dir": None}))
    entries = [p.name for p in (tmp_path / "env-cache" / "ddpm").iterdir()]
    assert len(entries) == 1 and len(entries[0]) == 16
    assert not (tmp_path / "ddpm").exists()


def test_partial_batches_wait_in_the_checkpoint(parts: Components, batch: tuple[Prompts, Candidates],
                                                tmp_path: Path, cache: Path) -> None:
    prompts, candidates = batch  # 12 images, B = 8: one step now, 4 left over
    learner = build_components(tiny_config(cache)).learner
    assert isinstance(learner, NoisePredictionLearner)
    first = learner.update(candidates, prompts, rng=np.random.default_rng(0))
    assert (first["optimizer_steps"], first["leftover"]) == (1.0, 4.0)
    learner.save(tmp_path)
    restored = build_components(tiny_config(cache)).learner
    restored.load(tmp_path)
    np.testing.assert_array_equal(restored.leftover_, learner.leftover_)  # type: ignore[attr-defined]
    second = restored.update(candidates, prompts, rng=np.random.default_rng(1))
    assert (second["optimizer_steps"], second["leftover"]) == (2.0, 0.0)


def test_model_snapshot_is_frozen_within_an_iteration(parts: Components, batch: tuple[Prompts, Candidates],
                                                      cache: Path) -> None:
    prompts, candidates = batch
    learner = build_components(tiny_config(cache)).learner
    snapshot = learner.model
    before = [p.clone() for p in snapshot.unet.parameters()]
    learner.update(candidates, prompts, rng=np.random.default_rng(0))
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot.unet.parameters(), strict=True))
    assert learner.model is not snapshot
    assert not all(torch.equal(a, b) for a, b in zip(before, learner.model.unet.parameters(), strict=True))


# -- the loop: PSNR rises, and the ledger counts every UNet call -------------------------------


def test_short_run_raises_psnr_and_ledger_counts_every_unet_call(cache: Path) -> None:
    config = tiny_config(cache)
    parts = build_components(config)
    images_through_unet = 0

    def count(module: Any, args: tuple[Any, ...], output: Any) -> None:
        nonlocal images_through_unet
        if isinstance(module, UNet2DModel):
            images_through_unet += int(args[0].shape[0])

    handle = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        history = run_config(config, run_dir=None, components=parts)
    finally:
        handle.remove()
    generated = sum(m.cost["generate"] for m in history)
    trained = sum(m.cost["train"] for m in history)
    evaluations = 1 + sum(1 for m in history if m.eval)
    assert [m.n_selected for m in history] == [32, 32, 32, 32]
    assert generated == NOISE_STEP * sum(m.n_generated for m in history)
    assert trained == 4 * 32 == 8 * sum(m.train["optimizer_steps"] for m in history)
    # planning prices FLOPs from the UNet's shape (models/unet_flops.py): it runs no forward pass
    assert images_through_unet == generated + trained + evaluations * N_EVAL * NOISE_STEP
    start = parts.task.evaluate(build_components(config).learner.model, rng=np.random.default_rng(0))["psnr"]
    final = history[-1].eval["psnr"]
    assert final > start + 1.0, f"held-out PSNR went from {start:.2f} to {final:.2f} dB"
