"""The sampler's prompt processing: prompts fed in length groups and their caches merged give what
one left-padded batch gives; the top-p shortcut draws from exactly the nucleus."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from synthloop.models.hf import (  # noqa: E402
    HFGenerator,
    HFModel,
    KVCache,
    _nucleus_draw,
    left_padded,
    length_groups,
)
from synthloop.models.scratch import TinyGPT2Config, tiny_gpt2, train_tokenizer  # noqa: E402
from synthloop.records import Prompts  # noqa: E402
from torch_threads import one_thread  # noqa: E402, F401  (autouse: one torch thread for this module)

TEXTS = ["1 + 2 =", "Question: 3 + 4 + 5 + 6 + 7 + 8 + 9 =\nAnswer:", "9 - 4 =",
         "Question: State the final answer: 9 - 4 + 1 - 2 + 7 - 3 + 8 - 1 =\nAnswer:", "5 + 5 ="]




@pytest.fixture(scope="module")
def model() -> HFModel:
    tokenizer = train_tokenizer([t + " 12 34 56 78 90" for t in TEXTS] * 20, vocab_size=120)
    return tiny_gpt2(tokenizer, TinyGPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=128, seed=4))


def test_length_groups_cover_every_row_once_and_bound_padding() -> None:
    lengths = [int(n) for n in np.random.default_rng(0).integers(1, 200, size=40)]
    groups = length_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(40))
    for group in groups:
        sizes = [lengths[i] for i in group]
        assert len(sizes) * max(sizes) <= 1.125 * sum(sizes)
    assert len(groups) < 40  # similar lengths do share a batch


def test_grouped_prefill_equals_one_padded_batch(model: HFModel) -> None:
    net, tok = model.network.eval(), model.tokenizer
    prompts = [tok(t)["input_ids"] for t in TEXTS]
    assert len(length_groups([len(p) for p in prompts])) > 1
    ids, mask, positions = left_padded(prompts, tok.pad_token_id, "cpu")
    grouped, padded = KVCache(), KVCache()
    with torch.no_grad():
        first = grouped.prefill(net, prompts, tok.pad_token_id)
        reference = padded.forward(net, input_ids=ids, attention_mask=mask, position_ids=positions)
        torch.testing.assert_close(first, reference, rtol=1e-4, atol=1e-5)
        step = first.argmax(-1, keepdim=True)
        mask = torch.cat([mask, torch.ones(len(prompts), 1, dtype=mask.dtype)], dim=1)
        after = positions[:, -1:] + 1
        for cache in (grouped, padded):  # the merged cache serves the next step as the padded one does
            logits = cache.forward(net, input_ids=step, attention_mask=mask, position_ids=after)
            if cache is grouped:
                merged = logits
        torch.testing.assert_close(merged, logits, rtol=1e-4, atol=1e-5)


def test_greedy_answers_are_the_same_alone_or_in_a_mixed_length_batch(model: HFModel) -> None:
    sampler = HFGenerator(max_new_tokens=8, temperature=0.0, batch_size=8)
    prompts = Prompts(index=np.arange(len(TEXTS)), items={"prompt": TEXTS})
    together = sampler.generate(model, prompts, rng=np.random.default_rng(0)).samples["completion"]
    alone = [sampler.generate(model, prompts.take(np.array([i])), rng=np.random.default_rng(0))
             .samples["completion"][0] for i in range(len(TEXTS))]
    assert together == alone


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.999])
@pytest.mark.parametrize("rows", [1, 2])
def test_nucleus_draws_only_nucleus_tokens_with_their_frequencies(top_p: float, rows: int) -> None:
    """A peaked row alone (its nucleus among the few ranked candidates, except at 0.999) and beside
    a flat one (whose nucleus needs the full sort): every draw lies in the nucleus and the top
    token's frequency follows its renormalized mass."""
    vocab = 300
    logits = torch.stack([torch.linspace(20, 0, vocab), torch.linspace(0.5, 0, vocab)])[:rows]
    probs = torch.softmax(logits, -1)
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([_nucleus_draw(probs, top_p, gen) for _ in range(4000)])
    for row in range(rows):
        ranked, order = probs[row].sort(descending=True)
        size = int((ranked.cumsum(0) - ranked <= top_p).sum())
        assert set(draws[:, row].tolist()) <= set(order[:size].tolist())
        expected = float(ranked[0] / ranked[:size].sum())
        observed = float((draws[:, row] == order[0]).float().mean())
        assert abs(observed - expected) < 4 * (expected * (1 - expected) / 4000) ** 0.5 + 1e-3
