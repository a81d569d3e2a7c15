"""The sampler's decoding shortcuts change nothing it samples: a preallocated KV cache gives the
tokens a growing one gives, and ``multinomial_cpu`` gives the tokens (and leaves the generator in
the state) ``torch.multinomial`` does."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from synthloop.models import hf  # noqa: E402
from synthloop.models.hf import HFGenerator, HFModel, multinomial_cpu  # noqa: E402
from synthloop.models.kv_slab import SlabLayer  # noqa: E402
from synthloop.models.scratch import TinyGPT2Config, tiny_gpt2, train_tokenizer  # noqa: E402
from synthloop.records import Prompts  # noqa: E402
from torch_threads import one_thread  # noqa: E402, F401  (autouse: one torch thread for this module)

TEXTS = ["1 + 2 =", "Question: 3 + 4 + 5 + 6 + 7 + 8 + 9 =\nAnswer:", "9 - 4 =", "5 + 5 =",
         "Question: State the final answer: 9 - 4 + 1 - 2 + 7 - 3 + 8 - 1 =\nAnswer:", "7 * 3 =",
         "Question: 2 + 2 =\nAnswer:", "8 - 8 + 8 ="]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return train_tokenizer([t + " 12 34 56 78 90" for t in TEXTS] * 20, vocab_size=120)


def tiny_llama(tokenizer: Any) -> HFModel:
    """A random Llama with grouped-query attention and rotary positions (SmolLM2's layout): under
    autocast its cached keys arrive in fp32 and its values in bf16."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        network = LlamaForCausalLM(config)
        assert network.config._attn_implementation == "sdpa"  # what the bf16 cache storage needs
        with torch.no_grad():  # make EOS likely enough that rows finish early and leave the batch
            network.lm_head.weight[tokenizer.eos_token_id] *= 4.0
    return HFModel(network=network.eval(), tokenizer=tokenizer)


def sample(model: HFModel, *, bf16: bool) -> Any:
    gen = HFGenerator(max_new_tokens=30, temperature=1.2, batch_size=8, bf16=bf16)
    prompts = Prompts(index=np.arange(len(TEXTS)), items={"prompt": TEXTS})
    return gen.generate(model, prompts, rng=np.random.default_rng(11))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("bf16", [False, True])
def test_preallocated_cache_samples_what_a_growing_cache_samples(tokenizer: Any, kind: str, bf16: bool,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_llama(tokenizer) if kind == "llama" else tiny_gpt2(
        tokenizer, TinyGPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=128, seed=4))
    reserved: list[bool] = []
    real_reserve = hf.KVCache.reserve

    def recording(self: hf.KVCache, network: Any, positions: int) -> bool:
        reserved.append(real_reserve(self, network, positions))
        assert all(isinstance(layer, SlabLayer) for layer in self.value.layers)
        return reserved[-1]

    monkeypatch.setattr(hf.KVCache, "reserve", recording)
    fast = sample(model, bf16=bf16)
    assert reserved == [True]  # the preallocated path was taken
    monkeypatch.setattr(hf.KVCache, "reserve", lambda self, network, positions: False)
    plain = sample(model, bf16=bf16)
    assert fast.samples["completion"] == plain.samples["completion"]
    np.testing.assert_array_equal(fast.usage["completion_tokens"], plain.usage["completion_tokens"])
    counts = fast.usage["completion_tokens"]
    assert counts.min() < 30 == counts.max()  # some rows left the batch early, some ran to the end


@pytest.mark.parametrize("bf16", [False, True])
def test_preallocated_cache_gives_the_very_logits_of_a_growing_cache(tokenizer: Any, bf16: bool) -> None:
    net, tok = tiny_llama(tokenizer).network, tokenizer
    prompts = [tok(t)["input_ids"] for t in TEXTS]
    _, mask, positions = hf.left_padded(prompts, tok.pad_token_id, "cpu")
    slab, grown = hf.KVCache(), hf.KVCache()
    with torch.no_grad(), hf.autocast(bf16):
        logits = [cache.prefill(net, prompts, tok.pad_token_id) for cache in (slab, grown)]
        assert slab.reserve(net, mask.shape[1] + 2) and not isinstance(grown.value.layers[0], SlabLayer)
        for step in range(6):  # past the room reserved: the slab regrows
            assert torch.equal(logits[0], logits[1])
            token = logits[0].argmax(-1, keepdim=True)
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            if step == 3:  # a row leaves the batch
                rows = torch.tensor([0, 1, 3, 4, 5, 6, 7])
                slab.keep(rows)
                grown.keep(rows)
                mask, token, positions = mask[rows], token[rows], positions[rows]
            after = positions[:, -1:] + 1 + step
            logits = [cache.forward(net, input_ids=token, attention_mask=mask, position_ids=after)
                      for cache in (slab, grown)]
        assert torch.equal(logits[0], logits[1])


def test_slab_layer_regrows_and_selects_rows_as_a_dynamic_layer_does() -> None:
    from transformers.cache_utils import DynamicLayer

    g = torch.Generator().manual_seed(0)
    first = [torch.randn(4, 2, 5, 8, generator=g) for _ in range(2)]
    grown, slab = DynamicLayer(), SlabLayer(first[0], first[1], capacity=6)
    grown.update(*first)
    batch = 4
    for step in range(5):  # past the capacity: the slab regrows
        if step == 2:
            rows = torch.tensor([0, 2, 3])
            grown.batch_select_indices(rows)
            slab.batch_select_indices(rows)
            batch = len(rows)
        new = [torch.randn(batch, 2, 1 + step % 2, 8, generator=g) for _ in range(2)]
        expected, got = grown.update(*new), slab.update(*new)
        for e, s in zip(expected, got, strict=True):
            assert torch.equal(e, s)
    assert slab.get_seq_length() == grown.get_seq_length() == 12


def test_slab_layer_stores_in_the_given_dtype() -> None:
    keys = torch.randn(2, 1, 3, 4)
    slab = SlabLayer(keys, keys.bfloat16(), capacity=8, dtype=torch.bfloat16)
    step = torch.randn(2, 1, 1, 4)
    got, _ = slab.update(step, step.bfloat16())
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, torch.cat([keys, step], dim=-2).bfloat16())


def distributions(seed: int) -> Any:
    g = torch.Generator().manual_seed(seed)
    scale = [0.3, 1.0, 3.0, 8.0, 30.0][seed % 5]
    logits = torch.randn(6, 3000, generator=g) * scale
    logits[1, 7:] = -1e4  # exact zeros after the softmax: only seven tokens can come out
    logits[2, :] = 0.0  # uniform
    return torch.softmax(logits, dim=-1)


@pytest.mark.parametrize("seed", range(25))
def test_multinomial_cpu_draws_what_torch_multinomial_draws(seed: int) -> None:
    probs = distributions(seed)
    ours, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    for _ in range(4):
        expected = torch.multinomial(probs, 1, generator=theirs).squeeze(-1)
        assert torch.equal(multinomial_cpu(probs, ours), expected)
        assert torch.equal(ours.get_state(), theirs.get_state())
    assert int(multinomial_cpu(probs, ours)[1]) < 7


def test_multinomial_cpu_rejects_invalid_probabilities() -> None:
    probs = torch.full((2, 10), 0.1)
    probs[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        multinomial_cpu(probs, torch.Generator().manual_seed(0))
