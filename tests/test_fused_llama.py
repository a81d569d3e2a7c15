"""The fused decoding step (``HFGenerator(decode="fused")``) computes what transformers computes:
its logits agree with the model's own forward over several steps on the KV slab, greedy decoding
gives the same tokens, LoRA adapters are merged without touching the training model, and models it
cannot run are refused with a one-line error."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from synthloop.models import hf  # noqa: E402
from synthloop.models.fused_llama import (  # noqa: E402
    FusedLlama,
    _cpu_reorders_bf16,
    _packed_linear,
    fused_llama,
    packs,
)
from synthloop.models.hf import HFGenerator, HFModel  # noqa: E402
from synthloop.models.kv_slab import SlabLayer  # noqa: E402
from synthloop.models.scratch import TinyGPT2Config, tiny_gpt2, train_tokenizer  # noqa: E402
from synthloop.records import Prompts  # noqa: E402
from torch_threads import one_thread  # noqa: E402, F401  (autouse: one torch thread for this module)

TEXTS = ["1 + 2 =", "Question: 3 + 4 + 5 + 6 + 7 + 8 + 9 =\nAnswer:", "9 - 4 =", "5 + 5 =",
         "Question: State the final answer: 9 - 4 + 1 - 2 + 7 - 3 + 8 - 1 =\nAnswer:", "7 * 3 =",
         "Question: 2 + 2 =\nAnswer:", "8 - 8 + 8 ="]
STEPS = 8
PEFT_DEPRECATION = "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"  # peft's, not ours


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return train_tokenizer([t + " 12 34 56 78 90" for t in TEXTS] * 20, vocab_size=120)


def tiny_llama(tokenizer: Any, **overrides: Any) -> HFModel:
    """A random Llama with grouped-query attention and rotary positions (SmolLM2's layout), EOS
    made likely enough that sampled rows finish early and leave the batch."""
    from transformers import LlamaConfig, LlamaForCausalLM

    settings: dict[str, Any] = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                    max_position_embeddings=128, eos_token_id=tokenizer.eos_token_id,
                                    pad_token_id=tokenizer.pad_token_id)
    config = LlamaConfig(**(settings | overrides))
    with torch.random.fork_rng():
        torch.manual_seed(5)
        network = LlamaForCausalLM(config)
        with torch.no_grad():
            network.lm_head.weight[tokenizer.eos_token_id] *= 4.0
    return HFModel(network=network.eval(), tokenizer=tokenizer)


def bf16_tolerance(logits: Any) -> float:
    """Two bf16 roundings of the largest logit (bf16 keeps 8 significant bits: one rounding is at
    most 2**-8 relative). The fused step casts, multiplies and normalises in the same dtypes as
    autocast, so only the order of additions inside a product or a norm may differ; on the CPUs
    measured so far the logits are even bit for bit the same."""
    return 2 * 2.0 ** -8 * float(logits.abs().max())


def step_both(net: Any, tok: Any, bf16: bool, fused: FusedLlama) -> list[tuple[Any, Any]]:
    """(transformers' logits, the fused step's) at every decoding step after the same prompts and
    the same greedy tokens (transformers' choice), a row leaving the batch half-way."""
    prompts = [tok(t)["input_ids"] for t in TEXTS]
    _, mask, positions = hf.left_padded(prompts, tok.pad_token_id, "cpu")
    exact, ours = hf.KVCache(), hf.KVCache()
    pairs = []
    with torch.no_grad(), hf.autocast(bf16):
        logits = exact.prefill(net, prompts, tok.pad_token_id)
        ours.prefill(net, prompts, tok.pad_token_id)
        exact.reserve(net, mask.shape[1] + STEPS)
        ours.reserve(net, mask.shape[1] + 3, fused.dtype)  # too small: the slab regrows on the way
        for step in range(STEPS):
            token = logits.argmax(-1)
            mask = torch.cat([mask, torch.ones_like(token[:, None])], dim=1)
            if step == 3:
                rows = torch.tensor([0, 1, 3, 4, 5, 6, 7])
                exact.keep(rows)
                ours.keep(rows)
                mask, token, positions = mask[rows], token[rows], positions[rows]
            after = positions[:, -1] + 1 + step
            logits = exact.forward(net, input_ids=token[:, None], attention_mask=mask, position_ids=after[:, None])
            pairs.append((logits.float(), fused.step(ours.value.layers, token, after, mask)))
    assert all(isinstance(layer, SlabLayer) for layer in ours.value.layers)
    return pairs


def assert_steps_match(net: Any, tokenizer: Any, bf16: bool, fused: FusedLlama) -> None:
    """The fused step's logits within two bf16 roundings of the model's (fp32: the same products
    on the same weights, only summed in another order), with the same greedy tokens."""
    for expected, got in step_both(net, tokenizer, bf16, fused):
        tolerance = bf16_tolerance(expected) if bf16 else 1e-5 * float(expected.abs().max())
        torch.testing.assert_close(got, expected, rtol=0, atol=tolerance)
        assert torch.equal(got.argmax(-1), expected.argmax(-1))


@pytest.mark.parametrize("bf16", [False, True])
def test_fused_step_logits_match_the_model_over_several_steps(tokenizer: Any, bf16: bool) -> None:
    net = tiny_llama(tokenizer).network
    fused = FusedLlama(net, torch.bfloat16 if bf16 else torch.float32)
    assert fused.packed == (bf16 and packs(torch.bfloat16, torch.device("cpu")))
    assert_steps_match(net, tokenizer, bf16, fused)


def test_biases_are_carried(tokenizer: Any) -> None:
    net = tiny_llama(tokenizer, attention_bias=True, mlp_bias=True).network
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(2)
        for name, param in net.named_parameters():
            if name.endswith("bias"):  # transformers starts them at zero: make them matter
                param.normal_(0.0, 0.5)
    for bf16 in (False, True):
        assert_steps_match(net, tokenizer, bf16, FusedLlama(net, torch.bfloat16 if bf16 else torch.float32))


def test_reordered_weights_multiply_bit_for_bit_as_plain_ones() -> None:
    if not packs(torch.bfloat16, torch.device("cpu")):
        pytest.skip("this torch or CPU cannot reorder bf16 weights for oneDNN")
    g = torch.Generator().manual_seed(0)
    for rows, n_in, n_out in [(16, 576, 960), (5, 576, 3072), (1, 1536, 576)]:
        x = torch.randn(rows, n_in, generator=g).bfloat16()
        w = torch.randn(n_out, n_in, generator=g).bfloat16()
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 16)
        assert torch.equal(_packed_linear(x, packed, None), torch.nn.functional.linear(x, w))


def test_a_cpu_that_refuses_the_bf16_reorder_runs_on_plain_products(tokenizer: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(weight: Any, rows: int) -> Any:
        raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx_ne_convert or "
                           "avx512bw, avx512vl and avx512dq")

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", refuse)
    _cpu_reorders_bf16.cache_clear()
    try:
        assert not packs(torch.bfloat16, torch.device("cpu"))
        net = tiny_llama(tokenizer).network
        fused = FusedLlama(net, torch.bfloat16)
        assert not fused.packed
        assert_steps_match(net, tokenizer, True, fused)
    finally:
        _cpu_reorders_bf16.cache_clear()


def generate(model: HFModel, *, decode: str, temperature: float, seed: int = 11) -> Any:
    gen = HFGenerator(max_new_tokens=24, temperature=temperature, batch_size=8, bf16=True, decode=decode)  # type: ignore[arg-type]
    prompts = Prompts(index=np.arange(len(TEXTS)), items={"prompt": TEXTS})
    return gen.generate(model, prompts, rng=np.random.default_rng(seed))


def test_greedy_decoding_gives_the_exact_paths_tokens(tokenizer: Any) -> None:
    model = tiny_llama(tokenizer)
    fused, exact = (generate(model, decode=d, temperature=0.0) for d in ("fused", "exact"))
    assert fused.samples["completion"] == exact.samples["completion"]
    np.testing.assert_array_equal(fused.usage["completion_tokens"], exact.usage["completion_tokens"])
    assert fused.usage["completion_tokens"].min() < 24  # some rows stopped at EOS and left the batch


def test_sampling_through_generate_is_seeded(tokenizer: Any) -> None:
    model = tiny_llama(tokenizer)
    first, again = (generate(model, decode="fused", temperature=1.2) for _ in range(2))
    other = generate(model, decode="fused", temperature=1.2, seed=12)
    assert first.samples["completion"] == again.samples["completion"]
    assert first.samples["completion"] != other.samples["completion"]
    counts = first.usage["completion_tokens"]
    assert counts.min() < 24 == counts.max()  # rows left the batch early, others ran to the limit


def lora_model(tokenizer: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    network = tiny_llama(tokenizer).network
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
                        init_lora_weights=False)  # random B: adapters that change the logits
    with torch.random.fork_rng():
        torch.manual_seed(7)
        return get_peft_model(network, config).eval()


@pytest.mark.filterwarnings(PEFT_DEPRECATION)
def test_lora_adapters_are_merged_without_touching_the_model(tokenizer: Any) -> None:
    peft_net = lora_model(tokenizer)
    before = {k: v.clone() for k, v in peft_net.state_dict().items()}
    fused = fused_llama(peft_net, torch.float32)
    assert all(torch.equal(v, before[k]) for k, v in peft_net.state_dict().items())
    pairs = step_both(peft_net, tokenizer, False, fused)
    for expected, got in pairs:
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
    base = tiny_llama(tokenizer).network  # the same weights without adapters
    without = step_both(base, tokenizer, False, FusedLlama(base, torch.float32))[0][1]
    assert (pairs[0][1] - without).abs().max() > 0.05  # the adapters matter: merging them is tested
    assert fused_llama(peft_net, torch.float32) is fused  # unchanged weights: built once
    with torch.no_grad():
        next(p for n, p in peft_net.named_parameters() if "lora_B" in n).mul_(2.0)
    rebuilt = fused_llama(peft_net, torch.float32)
    assert rebuilt is not fused  # a changed adapter (an optimizer step) rebuilds the fused weights
    for expected, got in step_both(peft_net, tokenizer, False, rebuilt):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.filterwarnings(PEFT_DEPRECATION)
def test_dora_adapters_are_refused(tokenizer: Any) -> None:
    from peft import LoraConfig, get_peft_model

    net = get_peft_model(tiny_llama(tokenizer).network, LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    with pytest.raises(ValueError, match="DoRA"):
        FusedLlama(net, torch.float32)


def test_models_it_cannot_run_get_a_one_line_error(tokenizer: Any) -> None:
    gpt2 = tiny_gpt2(tokenizer, TinyGPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=64, seed=1))
    with pytest.raises(ValueError, match="LlamaForCausalLM only") as error:
        generate(gpt2, decode="fused", temperature=0.0)
    assert "\n" not in str(error.value)
    dynamic = tiny_llama(tokenizer, rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    with pytest.raises(ValueError, match="'dynamic'"):
        FusedLlama(dynamic.network, torch.float32)
    gelu = tiny_llama(tokenizer, hidden_act="gelu")
    with pytest.raises(ValueError, match="silu"):
        FusedLlama(gelu.network, torch.float32)


def test_the_math_generator_config_takes_decode() -> None:
    from pydantic import ValidationError

    from synthloop.families.math import GeneratorConfig

    assert GeneratorConfig().decode == "exact"  # the default keeps today's tokens
    assert GeneratorConfig.model_validate({"decode": "fused"}).decode == "fused"
    with pytest.raises(ValidationError):
        GeneratorConfig.model_validate({"decode": "fast"})
    with pytest.raises(ValueError, match="decode must be"):
        HFGenerator(decode="fast")  # type: ignore[arg-type]
