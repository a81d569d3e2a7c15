"""The digits-denoising family (``task.kind: digits-denoise``): its config, planning usage and wiring.

Validation and planning import no ML framework: the FLOPs of a UNet pretrained here come from its
shape (``synthloop.models.unet_flops``); only a ``pretrained`` checkpoint's UNet is built (from its
config, without weights) to count them. ``build`` imports torch, diffusers and scikit-learn.

Sections (every field has a default except where noted):

    task:      {kind: digits-denoise, source: digits | mnist, path, image_size, channels, n_heldout,
                n_eval, noise_step, psnr_range: [lo, hi], split_seed, eval_seed}
    model:     {kind: pretrain, data: task | natural-patches, patches, patch_downsample,
                block_out_channels, layers_per_block, norm_num_groups, steps, max_timestep,
                batch_size, lr, seed, cache_dir, device, dtype}
            or {kind: pretrained, path: <diffusers folder or hub id>, device, dtype}
               device: auto | cpu | cuda | mps (default cpu); dtype: float32 | bfloat16 | float16
               (the UNet's weights; float16 not on cpu)
    generator: {kind: denoise, batch_size, sampler: ddpm | ddim}
    learner:   {kind: noise_prediction, batch_size (B), lr, ema_decay}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from synthloop.configs import (
    ConfigError,
    RunConfig,
    Strict,
    make_selector,
    validate_kind,
    validate_section,
)
from synthloop.families.placement import Placement
from synthloop.models.unet_flops import TRAIN_FLOPS_FACTOR, unet_forward_flops
from synthloop.strict import Count, Seed

if TYPE_CHECKING:
    from synthloop.loop import Components
    from synthloop.models.diffusion import PretrainSpec, UNetSpec
    from synthloop.tasks.digits import DigitsData, Images



class DigitsTaskConfig(Strict):
    kind: Literal["digits-denoise"]
    source: Literal["digits", "mnist"] = "digits"
    path: Path | None = None  # MNIST IDX (optionally .gz) or .npz file; required for mnist
    image_size: Annotated[int, Field(ge=1, le=1024)] | None = None  # pad to this size (default: the images' own, or the model's)
    channels: Annotated[int, Field(ge=1, le=4)] | None = None  # repeat gray to this many channels (default: the model's)
    n_heldout: Count = 297
    n_eval: Count = 128  # held-out images denoised at each evaluation
    limit: Count | None = None  # use only the first `limit` images of the source
    noise_step: Annotated[int, Field(ge=1, le=1000)] = 10  # s: observation at the last s forward steps
    psnr_range: tuple[float, float] = (40.0, 45.0)  # [lo, hi] mapping PSNR to acceptance probability
    split_seed: Seed = 0
    eval_seed: Seed = 0

    @field_validator("psnr_range")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not value[1] > value[0]:
            raise ValueError(f"needs lo < hi, got [{value[0]}, {value[1]}]")
        return value

    @model_validator(mode="after")
    def _path_for_mnist(self) -> DigitsTaskConfig:
        if self.source == "mnist" and self.path is None:
            raise ValueError("path: the mnist source needs a path to an IDX or .npz file")
        if self.source == "digits" and self.path is not None:
            raise ValueError("path: the digits source is bundled with scikit-learn and takes no path")
        if self.n_eval > self.n_heldout:
            raise ValueError(f"n_eval ({self.n_eval}) cannot exceed n_heldout ({self.n_heldout})")
        return self


class PretrainModelConfig(Placement):
    kind: Literal["pretrain"]
    # what the DDPM is pretrained on: the task's training images, or patches of natural photographs
    # (a generic denoiser that has never seen the task's images, like the paper's CIFAR-10 model)
    data: Literal["task", "natural-patches"] = "task"
    patches: Count = 30000  # natural-patches: how many
    patch_downsample: Count = 4  # natural-patches: shrink the photographs by this factor first
    block_out_channels: Annotated[tuple[Count, ...], Field(min_length=1, max_length=4)] = (32, 64)
    layers_per_block: Count = 1
    norm_num_groups: Count = 8
    steps: Count = 400
    max_timestep: Annotated[int, Field(ge=1, le=1000)] = 1000  # pretrain on t < max_timestep
    batch_size: Count = 64
    lr: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1e-3
    seed: Seed = 0
    cache_dir: Path | None = None  # default: $SYNTHLOOP_CACHE or ~/.cache/synthloop

    @model_validator(mode="after")
    def _groups_divide(self) -> PretrainModelConfig:
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"block_out_channels {bad[0]} is not a multiple of norm_num_groups "
                             f"{self.norm_num_groups}")
        return self


class PretrainedModelConfig(Placement):
    kind: Literal["pretrained"]
    path: Annotated[str, Field(min_length=1)]  # a diffusers folder or hub id (google/ddpm-cifar10-32)


class GeneratorConfig(Strict):
    kind: Literal["denoise"] = "denoise"
    batch_size: Count = 256  # images per batched reverse pass (memory, not semantics)
    sampler: Literal["ddpm", "ddim"] = "ddpm"  # ancestral DDPM (the paper's) or deterministic DDIM


class LearnerConfig(Strict):
    kind: Literal["noise_prediction"] = "noise_prediction"
    batch_size: Count = 32  # B: one optimizer step per B kept images
    lr: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 5e-5
    ema_decay: Annotated[float, Field(ge=0, lt=1)] = 0.999


@dataclass(frozen=True)
class DigitsSettings:
    task: DigitsTaskConfig
    model: PretrainModelConfig | PretrainedModelConfig
    generator: GeneratorConfig
    learner: LearnerConfig


class DigitsFamily:
    def validate(self, config: RunConfig) -> DigitsSettings:
        task = validate_section(config.task, DigitsTaskConfig, "task")
        # pretrain: a small DDPM trained here and cached; pretrained: a diffusers checkpoint path or hub id
        model = validate_kind(config.model, {"pretrain": PretrainModelConfig,
                                             "pretrained": PretrainedModelConfig}, "model")
        generator = validate_section(config.generator, GeneratorConfig, "generator")
        learner = validate_section(config.learner, LearnerConfig, "learner")
        if task.source == "mnist" and task.path is not None and not task.path.is_file():
            raise ConfigError(f"task.path: no such file {task.path}")
        return DigitsSettings(task=task, model=model, generator=generator, learner=learner)

    def usage_per_draw(self, settings: DigitsSettings) -> Mapping[str, float]:
        """s UNet forward passes per denoised image."""
        s = float(settings.task.noise_step)
        return {"samples": 1.0, "forward_passes": s, "flops": s * forward_flops(settings)}

    def usage_per_example(self, settings: DigitsSettings) -> Mapping[str, float]:
        """One forward pass per trained image (the paper's count); forward + backward is 3x its FLOPs."""
        return {"samples": 1.0, "forward_passes": 1.0, "flops": TRAIN_FLOPS_FACTOR * forward_flops(settings)}

    def schedule_defaults(self, settings: DigitsSettings) -> dict[str, float]:
        # an update of fewer than B kept images fills no optimizer step (they wait for the next one);
        # one Adam step per B kept images, each on fresh ones, at a fixed learning rate: a fixed-steps
        # learner, so the adaptive planner keeps every iteration at one step (docs/adaptive.md)
        return {"smallest_update": float(settings.learner.batch_size), "fixed_steps": 1.0}

    def build(self, config: RunConfig, settings: DigitsSettings) -> Components:
        try:
            return build_components(config, settings)
        except ValueError as error:
            raise ConfigError(str(error)) from None


FAMILY = DigitsFamily()


# -- planning usage -----------------------------------------------------------------------------


def geometry(settings: DigitsSettings, unet_config: Mapping[str, Any] | None = None) -> tuple[int, int]:
    """(image_size, channels): as configured, else the checkpoint's, else the images' own."""
    task = settings.task
    native = 8 if task.source == "digits" else 28
    if task.image_size:
        size = task.image_size
    elif unet_config:
        sample_size = unet_config["sample_size"]
        size = int(sample_size if isinstance(sample_size, int) else sample_size[0])
    else:
        size = native
    channels = task.channels or (int(unet_config["in_channels"]) if unet_config else 1)
    return size, channels


def forward_flops(settings: DigitsSettings) -> float:
    """FLOPs of one UNet forward pass on one image: from the shape of a UNet pretrained here, or
    counted on a ``pretrained`` checkpoint's UNet built from its config (no weights loaded)."""
    model = settings.model
    if isinstance(model, PretrainedModelConfig):
        from synthloop.models.diffusion import checkpoint_forward_flops

        try:
            return checkpoint_forward_flops(model.path)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    size, channels = geometry(settings)
    return float(unet_forward_flops(sample_size=size, channels=channels,
                                    block_out_channels=model.block_out_channels,
                                    layers_per_block=model.layers_per_block))


# -- wiring: data, the starting model, generator, task, learner ----------------------------------


def unet_spec(model: PretrainModelConfig, *, size: int, channels: int) -> UNetSpec:
    from synthloop.models.diffusion import UNetSpec

    return UNetSpec(sample_size=size, channels=channels, block_out_channels=tuple(model.block_out_channels),
                    layers_per_block=model.layers_per_block, norm_num_groups=model.norm_num_groups)


def pretrain_spec(settings: DigitsSettings) -> PretrainSpec:
    from synthloop.models.diffusion import PretrainSpec

    model = settings.model
    assert isinstance(model, PretrainModelConfig)
    size, channels = geometry(settings)
    return PretrainSpec(unet=unet_spec(model, size=size, channels=channels), data=model.data,
                        steps=model.steps, max_timestep=model.max_timestep, batch_size=model.batch_size,
                        lr=model.lr, seed=model.seed)


def build_components(config: RunConfig, settings: DigitsSettings) -> Components:
    """Data, starting model (cached pretrain or checkpoint), generator, task, selector, learner."""
    from synthloop.loop import Components
    from synthloop.models import diffusion
    from synthloop.tasks.digits import DigitsDenoiseTask

    task_config, model_config = settings.task, settings.model
    device, dtype = placement(model_config)
    if isinstance(model_config, PretrainModelConfig):
        spec = pretrain_spec(settings)
        size, channels = spec.unet.sample_size, spec.unet.channels
        data = load_data(task_config, size, channels)
        unet, scheduler, _ = diffusion.load_or_pretrain(
            spec, pretrain_images(model_config, data, size, channels),
            cache_dir=model_config.cache_dir, device=device)
        flops = forward_flops(settings)  # what planning priced; equal to the count on CPU (tested)
    else:
        unet, scheduler = diffusion.load_checkpoint(model_config.path, device=device)
        size, channels = geometry(settings, unet.config)
        unet_size = diffusion.spatial_size(unet)[0]
        if (size, channels) != (unet_size, unet.config.in_channels):
            raise ValueError(f"task: images are {channels}x{size}x{size} but the UNet at {model_config.path} "
                             f"takes {unet.config.in_channels}x{unet_size}x{unet_size}")
        data = load_data(task_config, size, channels)
        flops = diffusion.forward_flops(unet)
    unet = unet.to(dtype=dtype)
    generator = diffusion.DenoisingGenerator(noise_step=task_config.noise_step, flops_per_forward=flops,
                                             batch_size=settings.generator.batch_size,
                                             sampler=settings.generator.sampler)
    task = DigitsDenoiseTask(data, denoiser=generator, psnr_range=task_config.psnr_range,
                             n_eval=task_config.n_eval, eval_seed=task_config.eval_seed, label=task_config.source)
    learner = diffusion.NoisePredictionLearner(
        unet, scheduler, noise_step=task_config.noise_step, batch_size=settings.learner.batch_size,
        lr=settings.learner.lr, ema_decay=settings.learner.ema_decay, flops_per_forward=flops)
    return Components(task=task, generator=generator, selector=make_selector(config.selector), learner=learner)


def placement(model: PretrainModelConfig | PretrainedModelConfig) -> tuple[str, Any]:
    """(device, dtype) the config names, resolved here (``auto``: CUDA, MPS, else the CPU)."""
    from synthloop.models.devices import DeviceError, resolve_device, resolve_dtype

    try:
        device = resolve_device(model.device)
        return str(device), resolve_dtype(model.dtype, device)
    except DeviceError as error:
        raise ConfigError(f"model.{error}") from None


def pretrain_images(model: PretrainModelConfig, data: DigitsData, size: int, channels: int) -> Images:
    from synthloop.tasks.digits import natural_patches

    if model.data == "natural-patches":
        return natural_patches(model.patches, size=size, channels=channels, downsample=model.patch_downsample,
                               seed=model.seed)
    return data.train


def load_data(task: DigitsTaskConfig, size: int, channels: int) -> DigitsData:
    from synthloop.tasks.digits import DigitsData, load_images

    images = load_images(task.source, path=task.path, image_size=size, channels=channels, limit=task.limit)
    return DigitsData.split(images, n_heldout=task.n_heldout, seed=task.split_seed)
