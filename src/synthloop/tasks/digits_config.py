"""Config of the digits-denoising family (``task.kind: digits-denoise``); imports no ML framework.

Sections (every field has a default except where noted):

    task:      {kind: digits-denoise, source: digits | mnist, path, image_size, channels, n_heldout,
                n_eval, noise_step, psnr_range: [lo, hi], split_seed, eval_seed}
    model:     {kind: pretrain, data: task | natural-patches, patches, patch_downsample,
                block_out_channels, layers_per_block, norm_num_groups, steps, max_timestep,
                batch_size, lr, seed, cache_dir, device}
            or {kind: pretrained, path: <diffusers folder or hub id>, device}
    generator: {kind: denoise, batch_size, sampler: ddpm | ddim}
    learner:   {kind: noise_prediction, batch_size (B), lr, ema_decay}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from synthloop.configs import ConfigError, RunConfig, Strict, validate_kind, validate_section

PositiveInt = Annotated[int, Field(ge=1)]


class DigitsTaskConfig(Strict):
    kind: Literal["digits-denoise"]
    source: Literal["digits", "mnist"] = "digits"
    path: Path | None = None  # MNIST IDX (optionally .gz) or .npz file; required for mnist
    image_size: PositiveInt | None = None  # pad to this size (default: the images' own, or the model's)
    channels: PositiveInt | None = None  # repeat gray to this many channels (default: the model's)
    n_heldout: PositiveInt = 297
    n_eval: PositiveInt = 128  # held-out images denoised at each evaluation
    limit: PositiveInt | None = None  # use only the first `limit` images of the source
    noise_step: Annotated[int, Field(ge=1, le=1000)] = 10  # s: observation at the last s forward steps
    psnr_range: tuple[float, float] = (40.0, 45.0)  # [lo, hi] mapping PSNR to acceptance probability
    split_seed: Annotated[int, Field(ge=0)] = 0
    eval_seed: Annotated[int, Field(ge=0)] = 0

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


class PretrainModelConfig(Strict):
    kind: Literal["pretrain"]
    # what the DDPM is pretrained on: the task's training images, or patches of natural photographs
    # (a generic denoiser that has never seen the task's images, like the paper's CIFAR-10 model)
    data: Literal["task", "natural-patches"] = "task"
    patches: PositiveInt = 30000  # natural-patches: how many
    patch_downsample: PositiveInt = 4  # natural-patches: shrink the photographs by this factor first
    block_out_channels: Annotated[tuple[PositiveInt, ...], Field(min_length=1, max_length=4)] = (32, 64)
    layers_per_block: PositiveInt = 1
    norm_num_groups: PositiveInt = 8
    steps: PositiveInt = 400
    max_timestep: Annotated[int, Field(ge=1, le=1000)] = 1000  # pretrain on t < max_timestep
    batch_size: PositiveInt = 64
    lr: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1e-3
    seed: Annotated[int, Field(ge=0)] = 0
    cache_dir: Path | None = None  # default: $SYNTHLOOP_CACHE or ~/.cache/synthloop
    device: str = "cpu"

    @model_validator(mode="after")
    def _groups_divide(self) -> PretrainModelConfig:
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"block_out_channels {bad[0]} is not a multiple of norm_num_groups "
                             f"{self.norm_num_groups}")
        return self


class PretrainedModelConfig(Strict):
    kind: Literal["pretrained"]
    path: Annotated[str, Field(min_length=1)]  # a diffusers folder or hub id (google/ddpm-cifar10-32)
    device: str = "cpu"


class GeneratorConfig(Strict):
    kind: Literal["denoise"] = "denoise"
    batch_size: PositiveInt = 256  # images per batched reverse pass (memory, not semantics)
    sampler: Literal["ddpm", "ddim"] = "ddpm"  # ancestral DDPM (the paper's) or deterministic DDIM


class LearnerConfig(Strict):
    kind: Literal["noise_prediction"] = "noise_prediction"
    batch_size: PositiveInt = 32  # B: one optimizer step per B kept images
    lr: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 5e-5
    ema_decay: Annotated[float, Field(ge=0, lt=1)] = 0.999


@dataclass(frozen=True)
class DigitsSettings:
    task: DigitsTaskConfig
    model: PretrainModelConfig | PretrainedModelConfig
    generator: GeneratorConfig
    learner: LearnerConfig


_FORWARD_FLOPS: dict[str, float] = {}


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
        """s UNet forward passes per denoised image (FLOPs need the UNet's shape: lazy torch import)."""
        s = float(settings.task.noise_step)
        return {"samples": 1.0, "forward_passes": s, "flops": s * self._forward_flops(settings)}

    def usage_per_example(self, settings: DigitsSettings) -> Mapping[str, float]:
        """One forward pass per trained image (the paper's count); forward + backward is 3x its FLOPs."""
        return {"samples": 1.0, "forward_passes": 1.0, "flops": 3.0 * self._forward_flops(settings)}

    @staticmethod
    def _forward_flops(settings: DigitsSettings) -> float:
        from synthloop.models.diffusion import planning_flops

        key = settings.model.model_dump_json() + settings.task.model_dump_json()
        if key not in _FORWARD_FLOPS:  # one counted forward per model, not one per question asked
            try:
                _FORWARD_FLOPS[key] = float(planning_flops(settings))
            except ValueError as error:
                raise ConfigError(str(error)) from None
        return _FORWARD_FLOPS[key]

    def schedule_defaults(self, settings: DigitsSettings) -> dict[str, float]:
        return {}

    def build(self, config: RunConfig, settings: DigitsSettings) -> Any:
        from synthloop.models.diffusion import build_components

        try:
            return build_components(config, settings)
        except ValueError as error:
            raise ConfigError(str(error)) from None


FAMILY = DigitsFamily()
