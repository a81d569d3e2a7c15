"""Denoising with a diffusers DDPM: the generator, the noise-prediction learner and pretraining.

Spend Wisely (Yang et al., 2025), section 5.1. A clean image x is observed as
y = sqrt(abar_t) x + sqrt(1 - abar_t) eps at diffusion timestep t = s - 1 (``DDPMScheduler.add_noise``),
so "noise level s" means the last s of the 1000 forward steps. Denoising runs the s reverse steps
t = s-1, ..., 0: exactly s UNet forward passes per image. With the standard linear betas this is the
paper's noise (33.2 dB noisy-input PSNR at s = 10 and 28.4 dB at s = 20, before clipping to [-1, 1]).
The reverse steps are ancestral DDPM steps (``DDPMScheduler.step``, the paper's) or, with
``sampler="ddim"``, deterministic DDIM steps (``DDIMScheduler.step``, eta = 0) on the same timesteps.
A DDPM step returns a posterior *sample*, about 3 dB below the posterior mean for a perfect model;
for a small model on 8x8 digits that sample is no better than the noisy input, so the CPU
experiment denoises with DDIM (``docs/diffusion.md``).

The learner fine-tunes on kept denoised images with the standard epsilon-prediction loss at
timesteps drawn from the last s steps, Adam, and an EMA of the weights; the EMA copy is what the
generator samples from and what evaluation measures. One optimizer step per full batch of B kept
images: images that do not fill a batch wait in the learner's state (and its checkpoint) for the
next iteration.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from diffusers import DDPMScheduler as _DDPMScheduler
from diffusers import UNet2DModel as _UNet2DModel
from safetensors.torch import load_file, save_file

from synthloop.longstep import LongStep
from synthloop.models.unet_flops import TRAIN_FLOPS_FACTOR
from synthloop.records import Candidates, Prompts, Usage, ones_usage

# diffusers' lazy module hides the torch.nn.Module base of its classes from type checkers.
UNet2DModel: Any = _UNet2DModel
DDPMScheduler: Any = _DDPMScheduler
UNet = Any  # a diffusers UNet2DModel
Scheduler = Any  # a diffusers DDPMScheduler

@dataclass(frozen=True)
class DenoisingModel:
    """A frozen sampling snapshot: the UNet (eval mode, no gradients) and its noise schedule."""

    unet: UNet
    scheduler: Scheduler

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def tensor(self, array: npt.NDArray[np.float32]) -> torch.Tensor:
        """``array`` on the UNet's device in its dtype (float32 or bfloat16)."""
        return torch.from_numpy(array).to(device=self.unet.device, dtype=self.unet.dtype)


@dataclass(frozen=True)
class UNetSpec:
    """A small ``UNet2DModel`` for pretraining from scratch (one down/up block per width)."""

    sample_size: int = 8
    channels: int = 1
    block_out_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    norm_num_groups: int = 8

    def build(self) -> UNet:
        depth = len(self.block_out_channels)
        return UNet2DModel(
            sample_size=self.sample_size,
            in_channels=self.channels,
            out_channels=self.channels,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            down_block_types=("DownBlock2D",) * depth,
            up_block_types=("UpBlock2D",) * depth,
            norm_num_groups=self.norm_num_groups,
        )


def forward_flops(unet: UNet) -> float:
    """FLOPs of one UNet forward pass on one image, counted by ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    size = unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    x = torch.zeros(1, unet.config.in_channels, size, size, device=unet.device, dtype=unet.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(x, torch.zeros(1, dtype=torch.long, device=unet.device))
    return float(counter.get_total_flops())


def torch_generator(rng: np.random.Generator, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator seeded from ``rng``, so torch draws follow the numpy seed tree."""
    return torch.Generator(device=device).manual_seed(int(rng.integers(0, 2**62)))


def add_noise(scheduler: Scheduler, clean: torch.Tensor, eps: torch.Tensor, noise_step: int) -> torch.Tensor:
    """The observation y at noise level s: the forward process at timestep s - 1."""
    t = torch.full((clean.shape[0],), noise_step - 1, dtype=torch.long, device=clean.device)
    return scheduler.add_noise(clean, eps, t)


def reverse(model: DenoisingModel, noisy: torch.Tensor, *, noise_step: int, generator: torch.Generator,
            sampler: str = "ddpm") -> torch.Tensor:
    """Run the last ``noise_step`` reverse steps from ``noisy``: noise_step UNet calls.

    ``ddpm``: ancestral DDPM steps (``DDPMScheduler.step``, fresh noise each step but the last): a
    sample of the model's posterior, as in the paper. ``ddim``: the deterministic DDIM update
    (``DDIMScheduler.step``, eta = 0) on the same timesteps: the model's posterior-mean path.
    """
    scheduler = model.scheduler if sampler == "ddpm" else _ddim_for(model.scheduler)
    x = noisy
    with torch.inference_mode():
        for t in range(noise_step - 1, -1, -1):
            eps = model.unet(x, t).sample
            if sampler == "ddpm":
                x = scheduler.step(eps, t, x, generator=generator).prev_sample
            else:
                x = scheduler.step(eps, t, x, eta=0.0).prev_sample
    return x


def _ddim_for(ddpm: Scheduler) -> Scheduler:
    """A DDIM scheduler with the DDPM's betas and unit steps (t -> t - 1); made per call (a few
    arrays of num_train_timesteps), so no cache outlives the model it was made for."""
    from diffusers import DDIMScheduler

    ddim: Any = DDIMScheduler.from_config(ddpm.config)
    ddim.set_timesteps(ddpm.config.num_train_timesteps)
    return ddim


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class DenoisingGenerator:
    """Denoises noisy observations of the prompts' clean images with the model it is given.

    Prompts carry the clean image in ``items["clean"]`` ([n, C, H, W] float32 in [-1, 1]). The
    observation noise and the reverse-step noise are drawn from ``rng``. Usage per image:
    ``forward_passes`` = s and ``flops`` = s x the FLOPs of one forward pass.
    """

    def __init__(self, *, noise_step: int, flops_per_forward: float, batch_size: int = 256,
                 sampler: str = "ddpm") -> None:
        if noise_step < 1:
            raise ValueError(f"noise_step must be >= 1, got {noise_step}")
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(f"generator.sampler: allowed: ddpm, ddim (got {sampler!r})")
        self.sampler = sampler
        self.noise_step = noise_step
        self.flops_per_forward = flops_per_forward
        self.batch_size = batch_size

    def max_usage_per_draw(self) -> dict[str, float]:
        return {"samples": 1.0, "forward_passes": float(self.noise_step),
                "flops": self.noise_step * self.flops_per_forward}

    def denoise(self, model: DenoisingModel, clean: npt.NDArray[np.float32], eps: npt.NDArray[np.float32],
                *, generator: torch.Generator) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """(denoised, noisy) images for clean images and their observation noise, in batches."""
        out = np.empty_like(clean)
        noisy = np.empty_like(clean)
        for rows in _batches(len(clean), self.batch_size):
            x0 = model.tensor(clean[rows])
            y = add_noise(model.scheduler, x0, model.tensor(eps[rows]), self.noise_step)
            noisy[rows] = y.float().cpu().numpy()
            out[rows] = reverse(model, y, noise_step=self.noise_step, generator=generator,
                                sampler=self.sampler).float().cpu().numpy()
        return out, noisy

    def generate(self, model: DenoisingModel, prompts: Prompts, *, rng: np.random.Generator) -> Candidates:
        clean = np.ascontiguousarray(prompts.items["clean"], dtype=np.float32)
        eps = rng.standard_normal(clean.shape, dtype=np.float32)
        images, _ = self.denoise(model, clean, eps, generator=torch_generator(rng, model.device))
        n = len(prompts)
        usage = ones_usage(n, samples=1, forward_passes=self.noise_step,
                           flops=self.noise_step * self.flops_per_forward)
        return Candidates(samples={"image": images}, prompt_index=prompts.index, usage=usage)


@dataclass
class _EMA:
    """Exponential moving average of the weights, shadow <- d shadow + (1 - d) live, per optimizer step.

    No warm-up: the shadow starts from the pretrained weights, not from a random initialisation.
    """

    decay: float
    updates: int = 0

    def step(self, shadow: torch.nn.Module, live: torch.nn.Module) -> None:
        with torch.no_grad():
            for s, p in zip(shadow.parameters(), live.parameters(), strict=True):
                s.lerp_(p, 1.0 - self.decay)
        self.updates += 1


class NoisePredictionLearner:
    """Fine-tunes the UNet on kept images: eps-prediction MSE at t ~ U{0..s-1}, Adam, EMA.

    ``update`` appends the kept images to the images left over from earlier iterations and takes
    floor(len / B) optimizer steps of exactly B images each, in order; the rest waits. ``model`` is
    a frozen copy of the EMA weights, made once per update (the generator never sees weights move
    within an iteration). Training usage per image: 1 forward pass (the paper's count; its backward
    is not counted separately) and 3 x the forward FLOPs (forward + backward).
    """

    def __init__(self, unet: UNet, scheduler: Scheduler, *, noise_step: int, batch_size: int,
                 lr: float, ema_decay: float, flops_per_forward: float) -> None:
        self.noise_step = noise_step
        self.batch_size = batch_size
        self.lr = lr
        self.flops_per_forward = flops_per_forward
        self.scheduler = scheduler
        self.unet_ = unet.train()
        self.ema_unet_ = copy.deepcopy(unet).eval().requires_grad_(False)
        self.ema_ = _EMA(decay=ema_decay)
        self.optimizer_ = torch.optim.Adam(self.unet_.parameters(), lr=lr)
        shape = (0, unet.config.in_channels, *spatial_size(unet))
        self.leftover_ = np.zeros(shape, dtype=np.float32)
        self._snapshot: DenoisingModel | None = None
        self._moments = _Moments()
        self.statistics_: dict[str, float] = {}
        self.previous_: npt.NDArray[np.float64] | None = None  # the last mean update, for the inner product

    @property
    def model(self) -> DenoisingModel:
        if self._snapshot is None:
            frozen = copy.deepcopy(self.ema_unet_).eval().requires_grad_(False)
            self._snapshot = DenoisingModel(unet=frozen, scheduler=self.scheduler)
        return self._snapshot

    def training_usage(self, candidates: Candidates) -> Usage:
        return ones_usage(len(candidates), samples=1, forward_passes=1,
                          flops=TRAIN_FLOPS_FACTOR * self.flops_per_forward)

    def update(self, selected: Candidates, prompts: Prompts, *, rng: np.random.Generator) -> dict[str, float]:
        images = np.ascontiguousarray(selected.samples["image"], dtype=np.float32) if len(selected) else None
        pool = self.leftover_ if images is None else np.concatenate([self.leftover_, images])
        steps = len(pool) // self.batch_size
        self._moments = _Moments()
        losses = [self._step(pool[k * self.batch_size:(k + 1) * self.batch_size], rng) for k in range(steps)]
        self.leftover_ = pool[steps * self.batch_size:].copy()
        self._snapshot = None
        self._record_statistics()
        return {"optimizer_steps": float(steps), "loss": float(np.mean(losses)) if losses else 0.0,
                "leftover": float(len(self.leftover_))}

    def _step(self, batch: npt.NDArray[np.float32], rng: np.random.Generator) -> float:
        device, dtype = self.unet_.device, self.unet_.dtype
        x0 = torch.from_numpy(batch).to(device=device, dtype=dtype)
        eps = torch.from_numpy(rng.standard_normal(batch.shape, dtype=np.float32)).to(device=device, dtype=dtype)
        t = torch.from_numpy(rng.integers(0, self.noise_step, len(batch))).to(device)
        noisy = self.scheduler.add_noise(x0, eps, t)
        head: list[torch.Tensor] = []
        hook = self.unet_.conv_out.register_forward_hook(lambda _m, inputs, _out: head.append(inputs[0]))
        try:
            prediction = self.unet_(noisy, t).sample
        finally:
            hook.remove()
        loss = torch.nn.functional.mse_loss(prediction, eps)
        self._moments.add(last_layer_gradients(self.unet_.conv_out, head[0].detach(), (prediction - eps).detach()))
        self.optimizer_.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer_.step()
        self.ema_.step(self.ema_unet_, self.unet_)
        return float(loss.detach())

    def _record_statistics(self) -> None:
        """The update's statistics, and the inner product of its mean with the previous update's
        (from which the adaptive schedule regresses the contraction, budget.regressed_contraction).
        An update without statistics moved nothing, so the previous mean update stays the last."""
        self.statistics_ = self._moments.statistics()
        mean = self._moments.mean()
        if mean is None or not self.statistics_:
            return
        if self.previous_ is not None and self.previous_.shape == mean.shape:
            self.statistics_["update_dot_previous"] = float(mean @ self.previous_)
        self.previous_ = mean

    def update_statistics(self) -> dict[str, float]:
        """Per-example gradients of the loss in the output layer's parameters, over the images the
        last update trained on: their summed variance, the squared norm of their mean and that mean's
        inner product with the previous update's (for the adaptive schedule). Empty when the update
        took no optimizer step."""
        return dict(self.statistics_)

    def save(self, directory: Path) -> None:
        save_file(_flat_state(self.unet_), str(directory / "unet.safetensors"))
        save_file(_flat_state(self.ema_unet_), str(directory / "ema_unet.safetensors"))
        save_file({"leftover": torch.from_numpy(self.leftover_)}, str(directory / "leftover.safetensors"))
        torch.save(self.optimizer_.state_dict(), directory / "optimizer.pt")
        (directory / "learner.json").write_text(json.dumps({"ema_updates": self.ema_.updates}))
        if self.previous_ is not None:
            save_file({"previous_update": torch.from_numpy(self.previous_)},
                      str(directory / "previous_update.safetensors"))

    def load(self, directory: Path) -> None:
        try:
            self.unet_.load_state_dict(load_file(str(directory / "unet.safetensors"), device=str(self.unet_.device)))
            self.ema_unet_.load_state_dict(load_file(str(directory / "ema_unet.safetensors"),
                                                     device=str(self.unet_.device)))
            self.leftover_ = load_file(str(directory / "leftover.safetensors"))["leftover"].numpy().copy()
            self.optimizer_.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
            self.ema_.updates = int(json.loads((directory / "learner.json").read_text())["ema_updates"])
            previous = directory / "previous_update.safetensors"  # absent in checkpoints written before it was kept
            self.previous_ = load_file(str(previous))["previous_update"].numpy().copy() if previous.exists() else None
        except (OSError, KeyError, RuntimeError, ValueError) as error:
            raise ValueError(f"learner checkpoint {directory} is unreadable: {error}") from None
        self._snapshot = None


def last_layer_gradients(conv: torch.nn.Conv2d, inputs: torch.Tensor, residual: torch.Tensor) -> npt.NDArray[np.float64]:
    """Per-example gradients [n, weights + biases] of the mean-squared error in ``conv``'s parameters.

    ``conv`` maps ``inputs`` [n, C_in, H, W] to the prediction; ``residual`` = prediction - target.
    Example i's loss is mean((prediction_i - target_i)^2), so its gradient in the output is
    2 residual_i / (C_out H W); the weight gradient is that contracted with the unfolded inputs (the
    convolution's patches), the bias gradient its spatial sum. Cheap: one unfold and one product.
    """
    n = len(inputs)
    if isinstance(conv.padding, str):
        raise ValueError(f"last_layer_gradients needs a numeric padding, got {conv.padding!r}")
    upstream = (2.0 / residual[0].numel()) * residual.float().reshape(n, residual.shape[1], -1)  # [n, C_out, HW]
    patches = torch.nn.functional.unfold(inputs.float(), conv.kernel_size, dilation=conv.dilation,
                                         padding=conv.padding, stride=conv.stride)  # [n, C_in k k, HW]
    weight = torch.einsum("nop,nkp->nok", upstream, patches).reshape(n, -1)
    parts = [weight] if conv.bias is None else [weight, upstream.sum(dim=2)]
    return torch.cat(parts, dim=1).double().cpu().numpy()


@dataclass
class _Moments:
    """Running sums of per-example vectors: their count, sum and sum of squares per coordinate."""

    count: int = 0
    total: npt.NDArray[np.float64] | None = None
    squares: npt.NDArray[np.float64] | None = None

    def add(self, rows: npt.NDArray[np.float64]) -> None:
        total, squares = rows.sum(axis=0), np.square(rows).sum(axis=0)
        self.total = total if self.total is None else self.total + total
        self.squares = squares if self.squares is None else self.squares + squares
        self.count += len(rows)

    def mean(self) -> npt.NDArray[np.float64] | None:
        return None if self.count < 2 or self.total is None else self.total / self.count

    def statistics(self) -> dict[str, float]:
        if self.count < 2 or self.total is None or self.squares is None:
            return {}
        mean = self.total / self.count
        variance = np.maximum(self.squares - self.count * np.square(mean), 0.0) / (self.count - 1)
        return {"update_variance": float(variance.sum()), "update_norm2": float(mean @ mean)}


def _flat_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in module.state_dict().items()}


def spatial_size(unet: UNet) -> tuple[int, int]:
    size = unet.config.sample_size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


# -- the starting model: a diffusers checkpoint, or a small DDPM pretrained here and cached ---------


@dataclass(frozen=True)
class PretrainSpec:
    """DDPM training (eps-prediction MSE, Adam) for ``steps`` steps, t ~ U{0..max_timestep-1}.

    ``max_timestep`` = 1000 is standard DDPM training. Denoising at noise level s only ever uses
    t < s, so a CPU run may spend its few pretraining steps on the low-noise end (for example
    ``max_timestep`` = 100): a model that denoises, but a few dB below what fine-tuning reaches,
    as the paper's starting model was.
    """

    unet: UNetSpec = field(default_factory=UNetSpec)
    data: str = "task"  # provenance only: the images themselves are part of the cache key
    steps: int = 400
    max_timestep: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0


def default_cache_dir() -> Path:
    return Path(os.environ.get("SYNTHLOOP_CACHE", Path.home() / ".cache" / "synthloop"))


def pretrain_key(spec: PretrainSpec, images: npt.NDArray[np.float32]) -> str:
    """Hash of the pretrain config and the training images: the cache entry's name."""
    digest = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode())
    digest.update(np.ascontiguousarray(images, dtype=np.float32).tobytes())
    digest.update(f"diffusers-unet2d/{torch.__version__.split('+')[0]}".encode())
    return digest.hexdigest()[:16]


def pretrain(spec: PretrainSpec, images: npt.NDArray[np.float32], *,
             device: str = "cpu") -> tuple[UNet, Scheduler]:
    """Train a small DDPM on ``images`` ([n, C, H, W] in [-1, 1]) from a fixed seed."""
    with torch.random.fork_rng():  # weight init draws from torch's global generator: seed a fork of it
        torch.manual_seed(spec.seed)
        unet = spec.unet.build().to(device).train()
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.Adam(unet.parameters(), lr=spec.lr)
    rng = np.random.default_rng(spec.seed)
    data = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(device)
    with LongStep("pretraining the denoising model (once; cached)", total=spec.steps) as progress:
        for _ in range(spec.steps):
            rows = torch.from_numpy(rng.integers(0, len(data), spec.batch_size)).to(device)
            x0 = data[rows]
            eps = torch.from_numpy(rng.standard_normal(tuple(x0.shape), dtype=np.float32)).to(device)
            t = torch.from_numpy(rng.integers(0, spec.max_timestep, len(x0))).to(device)
            loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(x0, eps, t), t).sample, eps)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            progress.advance()
    return unet.eval(), scheduler


def load_or_pretrain(spec: PretrainSpec, images: npt.NDArray[np.float32], *, cache_dir: Path | None = None,
                     device: str = "cpu") -> tuple[UNet, Scheduler, Path]:
    """The pretrained model for ``spec`` from the cache, training and caching it on a miss."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = root / "ddpm" / pretrain_key(spec, images)
    if not (entry / "unet" / "config.json").is_file():
        unet, scheduler = pretrain(spec, images, device=device)
        staging = entry.with_name(entry.name + f".tmp-{os.getpid()}")
        unet.save_pretrained(staging / "unet")
        scheduler.save_pretrained(staging / "scheduler")
        (staging / "pretrain.json").write_text(json.dumps(asdict(spec), indent=1))
        entry.parent.mkdir(parents=True, exist_ok=True)
        try:
            staging.rename(entry)
        except OSError:  # another process cached the same entry first: use theirs
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    unet, scheduler = load_checkpoint(str(entry), device=device)
    return unet, scheduler, entry


def load_checkpoint(path_or_id: str, *, device: str = "cpu") -> tuple[UNet, Scheduler]:
    """A diffusers DDPM from a local folder or a hub id: the UNet and its scheduler.

    Accepts a pipeline layout (``unet/`` and ``scheduler/`` subfolders) or a flat one (the UNet's
    ``config.json`` at the top, as in ``google/ddpm-cifar10-32``); without a scheduler config the
    standard 1000-step linear schedule is used.
    """
    local = Path(path_or_id)
    if local.exists() and not local.is_dir():
        raise ValueError(f"model.path {path_or_id}: expected a diffusers model folder, got a file")
    subfolder = _subfolder(path_or_id)
    try:
        unet = UNet2DModel.from_pretrained(path_or_id, subfolder=subfolder)
    except (OSError, ValueError) as error:
        raise ValueError(f"model.path {path_or_id}: cannot load a diffusers UNet2DModel "
                         f"({_first_line(error)})") from None
    try:
        scheduler = DDPMScheduler.from_pretrained(path_or_id, subfolder="scheduler" if subfolder else None)
    except (OSError, ValueError):
        scheduler = DDPMScheduler(num_train_timesteps=1000)
    return unet.to(device).eval(), scheduler


def checkpoint_forward_flops(path_or_id: str) -> float:
    """FLOPs of one forward pass of a checkpoint's UNet, built from its config (no weights loaded)."""
    try:
        config = UNet2DModel.load_config(path_or_id, subfolder=_subfolder(path_or_id))
    except (OSError, ValueError) as error:
        raise ValueError(f"model.path {path_or_id}: cannot read a UNet config "
                         f"({_first_line(error)})") from None
    return forward_flops(UNet2DModel.from_config(config))


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _subfolder(path_or_id: str) -> str | None:
    local = Path(path_or_id)
    return "unet" if local.is_dir() and (local / "unet" / "config.json").is_file() else None
