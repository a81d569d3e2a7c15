"""Small language models built here: a locally trained tokenizer, a tiny GPT-2, and pretraining
from scratch on a task's labelled seed problems.

They need no download, build in seconds, and their starting accuracy is set by how long they were
pretrained: tests use them for speed, and schedule comparisons use them to run many seeds on a CPU.
Pretrained models are cached under ``cache_dir()/scratch-<hash of the config>``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthloop.longstep import LongStep
from synthloop.models.hf import (
    HFModel,
    cache_dir,
    config_key,
    load_pretrained,
    model_device,
    prepare_tokenizer,
)

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_tokenizer(texts: Sequence[str], *, vocab_size: int = 256) -> object:
    """A byte-level BPE trained on ``texts``; digits are split one by one (arithmetic needs them)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    core.decoder = decoders.ByteLevel()
    # Only the bytes the texts use start the vocabulary, so a small vocabulary still has merges.
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=False)
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS, pad_token=PAD)
    return prepare_tokenizer(tokenizer)


@dataclass(frozen=True)
class TinyGPT2Config:
    """A GPT-2 small enough to train on a CPU in minutes (defaults: about 0.2M parameters)."""

    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_positions: int = 256
    vocab_size: int = 256
    seed: int = 0


def tiny_gpt2(tokenizer: object, config: TinyGPT2Config = TinyGPT2Config()) -> HFModel:
    """A randomly initialised GPT-2 for ``tokenizer`` (seeded, so two builds are identical)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab = len(tokenizer)  # type: ignore[arg-type]
    gpt_config = GPT2Config(vocab_size=vocab, n_positions=config.n_positions, n_embd=config.n_embd,
                            n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0,
                            bos_token_id=tokenizer.eos_token_id,  # type: ignore[attr-defined]
                            eos_token_id=tokenizer.eos_token_id,  # type: ignore[attr-defined]
                            pad_token_id=tokenizer.pad_token_id)  # type: ignore[attr-defined]
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        network = GPT2LMHeadModel(gpt_config)
    network.eval()
    return HFModel(network=network, tokenizer=tokenizer)


@dataclass(frozen=True)
class PretrainConfig:
    """Pretraining on labelled seed problems: the longer, the higher the starting accuracy."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    bf16: bool = True
    seed: int = 0


def pretrain(model: HFModel, texts: Sequence[str], config: PretrainConfig, *,
             description: str = "pretraining a small GPT-2 from scratch") -> dict[str, float]:
    """Next-token training of ``model`` on ``texts`` (each followed by EOS), on the model's device,
    showing progress under ``description``; returns the mean loss of the last 20 steps."""
    tok, network = model.tokenizer, model.network
    encoded = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    limit = network.config.n_positions
    encoded = [e[:limit] for e in encoded]
    rng = np.random.default_rng(config.seed)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=0.01)
    network.train()
    losses: list[float] = []
    with LongStep(description, total=config.steps) as progress:
        for step in range(config.steps):
            losses.append(_pretrain_step(network, tok, encoded, optimizer, rng, config, step))
            progress.advance()
    network.eval()
    return {"loss": float(np.mean(losses[-20:])) if losses else float("nan")}


def _pretrain_step(network: Any, tok: Any, encoded: Sequence[list[int]], optimizer: torch.optim.Optimizer,
                   rng: np.random.Generator, config: PretrainConfig, step: int) -> float:
    """One AdamW step (linear warm-up then cosine decay) on a random batch of ``encoded``."""
    from synthloop.models.hf import autocast

    device = model_device(network)
    for group in optimizer.param_groups:  # linear warm-up then cosine decay
        warm = min(1.0, (step + 1) / max(1, config.steps // 20))
        group["lr"] = config.lr * warm * 0.5 * (1 + np.cos(np.pi * step / config.steps))
    batch = [encoded[i] for i in rng.integers(0, len(encoded), size=config.batch_size)]
    width = max(len(b) for b in batch)
    ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for r, b in enumerate(batch):
        ids[r, :len(b)] = torch.tensor(b)
        labels[r, :len(b)] = torch.tensor(b)
    ids, labels = ids.to(device), labels.to(device)
    with autocast(config.bf16, device):
        loss = network(input_ids=ids, attention_mask=(labels != -100).long(),
                       labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def scratch_model(texts: Sequence[str], *, tokenizer_texts: Sequence[str], vocab_size: int,
                  architecture: TinyGPT2Config, training: PretrainConfig,
                  cache: Path | None = None, extra_key: str = "", device: str = "cpu",
                  dtype: str = "float32", description: str = "pretraining a small GPT-2 from scratch") -> HFModel:
    """A tiny GPT-2 pretrained on ``texts``, loaded from the cache when built before, then placed on
    ``device`` with weights in ``dtype`` (pretraining itself runs in float32 on that device).

    The cache key covers the configs and a hash of the texts, so a change to any retrains.
    """
    from synthloop.models import devices

    where = devices.resolve_device(device)
    devices.resolve_dtype(dtype, where)  # refuse a bad dtype before minutes of pretraining
    key = config_key({"arch": asdict(architecture), "train": asdict(training), "vocab": vocab_size,
                      "texts": config_key({"t": list(texts), "k": list(tokenizer_texts)}), "extra": extra_key})
    directory = (cache or cache_dir()) / f"scratch-{key}"
    if (directory / "config.json").is_file():
        return load_pretrained(directory, device=device, dtype=dtype)
    tokenizer = train_tokenizer(tokenizer_texts, vocab_size=vocab_size)
    model = tiny_gpt2(tokenizer, architecture)
    model.network.to(where)
    stats = pretrain(model, texts, training, description=description)
    partial = directory.with_name(directory.name + ".partial")
    model.network.save_pretrained(partial)
    model.tokenizer.save_pretrained(partial)
    (partial / "pretrain.json").write_text(json.dumps(stats))
    if directory.exists():  # another process finished first: keep its copy
        return load_pretrained(directory, device=device, dtype=dtype)
    partial.rename(directory)
    return load_pretrained(directory, device=device, dtype=dtype)
