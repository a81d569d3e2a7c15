"""A fused decoding step for Llama-architecture causal LMs (``HFGenerator(decode="fused")``).

At batch 16 on SmolLM2-135M a transformers decoding step spends more time in per-layer module
overhead on tiny tensors (RMSNorm, rotary, residuals, autocast's casts, Python dispatch through
some 400 modules) than in its matrix products. :class:`FusedLlama` reads the model's weights once
into the compute dtype, with the query/key/value and gate/up matrices concatenated, and runs a
step with plain torch ops: one product per fused matrix, ``F.rms_norm``, rotary cos/sin from a
table computed once by the model's own rotary module, attention over the preallocated KV slab
(:mod:`synthloop.models.kv_slab`), ``silu(g) * u`` and one output product. No autocast, no module
calls. Prompt processing stays on the transformers path; its keys and values go into the slab.

Numerics mirror bf16 autocast: the residual stream and the norms stay fp32, every matrix product
runs in the compute dtype, rotary runs in fp32 on the product's output, keys and values are stored
in the compute dtype (what autocast hands attention). On the CPUs measured here the logits are bit
for bit those of ``decode="exact"`` (the concatenated and reordered products and ``F.rms_norm``
round as the separate modules do); that is not promised elsewhere, so ``tests/test_fused_llama.py``
allows two bf16 roundings, and on other hardware a seed may give other tokens.

What it does not do raises a one-line ``ValueError`` when the step is built (the user asked for it
by name; a silent fallback would hide a slower sampler): other architectures, rotary scaling that
depends on the sequence length, activations other than SiLU, and peft tuners other than plain LoRA
(LoRA adapters are merged into the fused weights, the training model is left untouched).
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

STATIC_ROPE = ("default", "linear", "llama3", "yarn")  # cos/sin depend on the position only


@dataclass
class _Layer:
    norm_in: torch.Tensor  # fp32 [hidden]
    qkv: torch.Tensor  # [(heads + 2 kv_heads) * head_dim, hidden]
    qkv_bias: torch.Tensor | None
    out: torch.Tensor  # [hidden, heads * head_dim]
    out_bias: torch.Tensor | None
    norm_post: torch.Tensor  # fp32 [hidden]
    gate_up: torch.Tensor  # [2 * intermediate, hidden]
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor  # [hidden, intermediate]
    down_bias: torch.Tensor | None


def _unwrapped(network: Any) -> Any:
    """The transformers model inside a peft wrapper (or the network itself)."""
    return network.get_base_model() if hasattr(network, "get_base_model") else network


def _check(model: Any) -> None:
    """A one-line ValueError naming what the fused step cannot do."""
    config = model.config
    name = type(model).__name__
    if getattr(config, "model_type", None) != "llama" or name != "LlamaForCausalLM":
        raise ValueError(f"decode: fused supports LlamaForCausalLM only, not {name} "
                         f"(model_type {getattr(config, 'model_type', None)!r}); use decode: exact")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"decode: fused supports hidden_act silu only, not {config.hidden_act!r}")
    rope = getattr(model.model.rotary_emb, "rope_type", "default")
    if rope not in STATIC_ROPE:
        raise ValueError(f"decode: fused supports rope types {', '.join(STATIC_ROPE)}, not {rope!r} "
                         f"(its cos/sin depend on the sequence length); use decode: exact")


def _weight(module: Any) -> torch.Tensor:
    """A linear or embedding module's effective weight: a plain one's, or a peft LoRA layer's
    base weight plus its active adapters' deltas (peft's own ``get_delta_weight``; nothing in the
    module is changed)."""
    if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
        return module.weight.detach()
    base = getattr(module, "base_layer", None)
    if base is None or not hasattr(module, "get_delta_weight") or not hasattr(module, "lora_A"):
        raise ValueError(f"decode: fused cannot read the weights of a {type(module).__name__} "
                         "(only plain linear layers and peft LoRA layers); use decode: exact")
    weight = _weight(base).float()
    if module.merged or module.disable_adapters:
        return weight  # merged adapters already live in the base weight; disabled ones do nothing
    for adapter in module.active_adapters:
        if adapter in getattr(module, "lora_magnitude_vector", {}):
            raise ValueError("decode: fused cannot merge DoRA adapters; use decode: exact")
        if adapter in module.lora_A or adapter in getattr(module, "lora_embedding_A", {}):
            weight = weight + module.get_delta_weight(adapter).detach().float()
    return weight


def _bias(module: Any) -> torch.Tensor | None:
    base = getattr(module, "base_layer", module)
    bias = getattr(base, "bias", None)
    return None if bias is None else bias.detach()


def _cat_bias(modules: list[Any], dtype: torch.dtype) -> torch.Tensor | None:
    biases = [_bias(m) for m in modules]
    if all(b is None for b in biases):
        return None
    rows = []
    for bias, module in zip(biases, modules, strict=True):
        if bias is None:  # a product without a bias in a fused matrix that has one: zeros for its rows
            weight = _weight(module)
            bias = weight.new_zeros(weight.shape[0])
        rows.append(bias)
    return torch.cat([r.float() for r in rows]).to(dtype)


def _fused(modules: list[Any], dtype: torch.dtype) -> torch.Tensor:
    return torch.cat([_weight(m).float() for m in modules]).to(dtype).contiguous()


def _layer(block: Any, dtype: torch.dtype) -> _Layer:
    attn, mlp = block.self_attn, block.mlp
    qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
    return _Layer(
        norm_in=_weight_of_norm(block.input_layernorm), qkv=_fused(qkv, dtype), qkv_bias=_cat_bias(qkv, dtype),
        out=_fused([attn.o_proj], dtype), out_bias=_cat_bias([attn.o_proj], dtype),
        norm_post=_weight_of_norm(block.post_attention_layernorm),
        gate_up=_fused([mlp.gate_proj, mlp.up_proj], dtype),
        gate_up_bias=_cat_bias([mlp.gate_proj, mlp.up_proj], dtype),
        down=_fused([mlp.down_proj], dtype), down_bias=_cat_bias([mlp.down_proj], dtype))


def _weight_of_norm(norm: Any) -> torch.Tensor:
    return norm.weight.detach().float().contiguous()


def _packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` on a weight that oneDNN has reordered once into its own blocked layout."""
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return out


def packs(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the products run on oneDNN-reordered weights: bf16 on a CPU where oneDNN can
    reorder bf16 weights. At batch 16 a plain bf16 ``F.linear`` reorders the weight on every
    call; reordered once, the products of a SmolLM2 step take about 40% less time, bit for bit
    the same results (checked in ``tests/test_fused_llama.py``). CPUs without avx512bw/vl/dq or
    avx_ne_convert refuse the reorder: there the step runs on plain ``F.linear``."""
    return dtype == torch.bfloat16 and device.type == "cpu" and _cpu_reorders_bf16()


@functools.cache
def _cpu_reorders_bf16() -> bool:
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=torch.bfloat16), 16)
    except RuntimeError:  # "bf16 path needs the cpu support avx_ne_convert or avx512bw, ..."
        return False
    return True


def _pack(layer: _Layer, rows: int) -> _Layer:
    def pack(w: torch.Tensor) -> torch.Tensor:
        packed: torch.Tensor = torch.ops.mkldnn._reorder_linear_weight(w, rows)
        return packed

    return _Layer(norm_in=layer.norm_in, qkv=pack(layer.qkv), qkv_bias=layer.qkv_bias, out=pack(layer.out),
                  out_bias=layer.out_bias, norm_post=layer.norm_post, gate_up=pack(layer.gate_up),
                  gate_up_bias=layer.gate_up_bias, down=pack(layer.down), down_bias=layer.down_bias)


class FusedLlama:
    """One decoding step of a Llama causal LM over a preallocated KV slab, with weights read once
    (see the module docstring). ``dtype`` is the compute dtype of the matrix products and the
    cache (bf16 under the sampler's ``bf16``, else the weights' own); ``rows`` the batch size the
    products are laid out for (any other works too)."""

    def __init__(self, network: Any, dtype: torch.dtype, rows: int = 16) -> None:
        model = _unwrapped(network)
        _check(model)
        config = model.config
        self.dtype = dtype
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = float(config.rms_norm_eps)
        self.scaling = float(model.model.layers[0].self_attn.scaling)
        with torch.no_grad():
            self.embed = _weight(model.model.embed_tokens).float()
            self.layers = [_layer(block, dtype) for block in model.model.layers]
            self.norm = _weight_of_norm(model.model.norm)
            self.lm_head = _weight(model.lm_head).to(dtype).contiguous()
            self.lm_bias = _cat_bias([model.lm_head], dtype)
            self.packed = packs(dtype, self.embed.device)
            if self.packed:
                self.layers = [_pack(layer, rows) for layer in self.layers]
                self.lm_head = torch.ops.mkldnn._reorder_linear_weight(self.lm_head, rows)
        self.linear = _packed_linear if self.packed else F.linear
        self._rotary = model.model.rotary_emb
        self._cos = self._sin = torch.empty(0)

    def _table(self, positions: int) -> None:
        """cos and sin for positions ``0 .. positions - 1`` from the model's own rotary module
        (scaling included), the sin with the sign of ``rotate_half`` folded into its first half."""
        grown = max(positions, 2 * self._cos.shape[0])
        ids = torch.arange(grown, device=self.embed.device)[None]
        with torch.no_grad():
            cos, sin = self._rotary(self.embed[:1, None].expand(1, grown, -1), ids)
        half = self.head_dim // 2
        self._cos = cos[0].float().contiguous()
        self._sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1).float().contiguous()

    def step(self, slabs: list[Any], ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor
             ) -> torch.Tensor:
        """Logits (fp32 ``[rows, vocab]``) for one new token per row: ``ids`` and ``positions``
        ``[rows]``, ``mask`` ``[rows, filled + 1]`` (1 = attend); each slab layer gains a position."""
        if int(positions.max()) >= self._cos.shape[0]:
            self._table(int(positions.max()) + 1)
        cos, sin = self._cos[positions][:, None], self._sin[positions][:, None]
        visible = mask.bool()[:, None, None, :]
        x = self.embed[ids]
        with torch.autocast(ids.device.type, enabled=False):
            for layer, slab in zip(self.layers, slabs, strict=True):
                x = self._block(layer, slab, x, cos, sin, visible)
            h = F.rms_norm(x, (x.shape[-1],), self.norm, self.eps).to(self.dtype)
            return self.linear(h, self.lm_head, self.lm_bias).float()

    def _block(self, layer: _Layer, slab: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               visible: torch.Tensor) -> torch.Tensor:
        rows, d = x.shape[0], self.head_dim
        h = F.rms_norm(x, (x.shape[-1],), layer.norm_in, self.eps).to(self.dtype)
        qkv = self.linear(h, layer.qkv, layer.qkv_bias)
        rotated = qkv[:, :(self.heads + self.kv_heads) * d].view(rows, -1, 2, d // 2)
        qk = rotated.float().view(rows, -1, d) * cos + rotated.flip(2).view(rows, -1, d) * sin
        k = qk[:, self.heads:, None]
        v = qkv[:, (self.heads + self.kv_heads) * d:].view(rows, self.kv_heads, 1, d)
        keys, values = slab.update(k, v)
        # grouped-query attention for one new position: each key/value head's query heads are
        # the query rows of one attention over that head's keys (no repeated keys)
        q = qk[:, :self.heads].to(self.dtype).view(rows, self.kv_heads, self.heads // self.kv_heads, d)
        attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible, scale=self.scaling)
        x = x + self.linear(attn.reshape(rows, -1), layer.out, layer.out_bias)
        h = F.rms_norm(x, (x.shape[-1],), layer.norm_post, self.eps).to(self.dtype)
        gate, up = self.linear(h, layer.gate_up, layer.gate_up_bias).chunk(2, dim=-1)
        return x + self.linear(F.silu(gate) * up, layer.down, layer.down_bias)


_BUILT: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], FusedLlama]] = weakref.WeakKeyDictionary()


def fused_llama(network: Any, dtype: torch.dtype, rows: int = 16) -> FusedLlama:
    """The fused step of ``network`` in ``dtype``, rebuilt only when a weight has changed since the
    last build (an optimizer step or a load changes a parameter's version or storage)."""
    key = (dtype, rows, *((p.data_ptr(), p._version) for p in network.parameters()))
    hit = _BUILT.get(network)
    if hit is not None and hit[0] == key:
        return hit[1]
    fused = FusedLlama(network, dtype, rows)
    _BUILT[network] = (key, fused)
    return fused
