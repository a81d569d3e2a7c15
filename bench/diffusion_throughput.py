"""Throughput of the diffusion plug-ins against a bare diffusers loop doing the same work.

Denoising: ``DenoisingGenerator.generate`` vs add_noise + s x (UNet, ``DDPMScheduler.step``, or
``DDIMScheduler.step`` for the DDIM sampler) on the same images in the same batches. Training: ``NoisePredictionLearner.update`` vs a plain loop of
Adam steps on B images with diffusers' ``EMAModel``. Both sides alternate over several rounds in one
process; the ratio uses the median of each (the machine is shared, absolute times are noise).

    OMP_NUM_THREADS=1 python bench/diffusion_throughput.py examples/digits-denoise-s10.yaml
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler
from diffusers.training_utils import EMAModel

from synthloop.configs import load_config
from synthloop.experiments import build_components
from synthloop.models.diffusion import DenoisingGenerator, DenoisingModel, NoisePredictionLearner, add_noise
from synthloop.records import Candidates


def bare_denoise(model: DenoisingModel, clean: np.ndarray, *, noise_step: int, batch: int, seed: int,
                 sampler: str) -> None:
    generator = torch.Generator().manual_seed(seed)
    noise_rng = np.random.default_rng(seed)
    if sampler == "ddim":
        ddim = DDIMScheduler.from_config(model.scheduler.config)
        ddim.set_timesteps(model.scheduler.config.num_train_timesteps)
    with torch.inference_mode():
        for start in range(0, len(clean), batch):
            x0 = torch.from_numpy(clean[start:start + batch])
            eps = torch.from_numpy(noise_rng.standard_normal(x0.shape, dtype=np.float32))
            x = add_noise(model.scheduler, x0, eps, noise_step)
            for t in range(noise_step - 1, -1, -1):
                if sampler == "ddim":
                    x = ddim.step(model.unet(x, t).sample, t, x, eta=0.0).prev_sample
                else:
                    x = model.scheduler.step(model.unet(x, t).sample, t, x, generator=generator).prev_sample


def bare_train(learner: NoisePredictionLearner, images: np.ndarray, *, seed: int) -> None:
    unet = copy.deepcopy(learner.unet_).train()
    optimizer = torch.optim.Adam(unet.parameters(), lr=learner.lr)
    ema = EMAModel(unet.parameters(), decay=learner.ema_.decay, use_ema_warmup=False)
    rng = np.random.default_rng(seed)
    for start in range(0, len(images) - learner.batch_size + 1, learner.batch_size):
        x0 = torch.from_numpy(images[start:start + learner.batch_size])
        eps = torch.from_numpy(rng.standard_normal(x0.shape, dtype=np.float32))
        t = torch.from_numpy(rng.integers(0, learner.noise_step, len(x0)))
        loss = torch.nn.functional.mse_loss(unet(learner.scheduler.add_noise(x0, eps, t), t).sample, eps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.step(unet.parameters())


def timed(fn: Callable[[], object]) -> float:
    clock = time.perf_counter()
    fn()
    return time.perf_counter() - clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    parts = build_components(config)
    learner, generator = parts.learner, parts.generator
    assert isinstance(learner, NoisePredictionLearner) and isinstance(generator, DenoisingGenerator)
    prompts = parts.task.sample_prompts(args.images, rng=np.random.default_rng(0))
    model = learner.model
    ours_gen, bare_gen, ours_train, bare_train_s = [], [], [], []
    for k in range(args.rounds):
        ours_gen.append(timed(lambda k=k: generator.generate(model, prompts, rng=np.random.default_rng(k))))
        bare_gen.append(timed(lambda k=k: bare_denoise(model, prompts.items["clean"], noise_step=generator.noise_step,
                                                       batch=generator.batch_size, seed=k,
                                                       sampler=generator.sampler)))
        fresh = build_components(config).learner
        assert isinstance(fresh, NoisePredictionLearner)
        selected = Candidates(samples={"image": prompts.items["clean"]}, prompt_index=prompts.index, usage={})
        ours_train.append(timed(lambda k=k, f=fresh, c=selected: f.update(c, prompts, rng=np.random.default_rng(k))))
        bare_train_s.append(timed(lambda k=k, f=fresh: bare_train(f, prompts.items["clean"], seed=k)))
    n = args.images
    rows = [("denoised images/s", n / statistics.median(ours_gen), n / statistics.median(bare_gen)),
            ("trained images/s", n / statistics.median(ours_train), n / statistics.median(bare_train_s))]
    print(f"{n} images, noise step {generator.noise_step}, sampler {generator.sampler}, "
          f"B = {learner.batch_size}, {args.rounds} rounds, "
          f"{torch.get_num_threads()} thread(s)")
    print("| measure | synthloop | bare diffusers | ratio |\n|---|---|---|---|")
    for name, ours, bare in rows:
        print(f"| {name} | {ours:.0f} | {bare:.0f} | {ours / bare:.2f}x |")


if __name__ == "__main__":
    main()
