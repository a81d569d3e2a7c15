"""A key/value cache layer that decodes into preallocated memory.

transformers' ``DynamicLayer`` grows its keys and values with ``torch.cat`` at every decoding step,
which copies the whole cache each time (10% of a decoding step at batch 16 on SmolLM2). A
:class:`SlabLayer` holds them in a buffer sized for the whole generation and writes each step's
keys and values in place; attention reads a view of the filled part, the same numbers in the same
layout, so sampling gives the same tokens (``tests/test_hf_slab.py`` checks it).

Under bf16 autocast the rotary embedding leaves keys in fp32, and autocast casts the whole cache
to bf16 again in every layer at every step before attention (a copy of every key, each step).
Given ``dtype``, a slab stores keys and values already cast, once, as they arrive: attention
then reads exactly the bf16 numbers autocast would have handed it.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer


class SlabLayer(DynamicLayer):
    """A full-attention cache layer ``[batch, heads, positions, head_dim]`` with room for
    ``capacity`` positions; ``keys`` and ``values`` are views of the first ``length``, stored in
    ``dtype`` if given (else as they come)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.device = keys.device
        self.is_initialized = True
        self.length = keys.shape[-2]
        self.cast = dtype
        self._keys = self._slab(keys, capacity, dtype)
        self._values = self._slab(values, capacity, dtype)
        self._views()

    @staticmethod
    def _slab(t: torch.Tensor, capacity: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        batch, heads, length, dim = t.shape
        slab = t.new_empty((batch, heads, max(capacity, length), dim), dtype=dtype or t.dtype)
        slab[:, :, :length] = t
        return slab

    def _views(self) -> None:
        self.keys = self._keys[:, :, :self.length]
        self.values = self._values[:, :, :self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new positions after the filled ones (as ``torch.cat`` would place them) and
        return views of everything filled. A step that does not fit, or that arrives in another
        dtype than an uncast slab's (``cat`` would promote), regrows the slab first."""
        new = key_states.shape[-2]
        end = self.length + new
        promote = self.cast is None and key_states.dtype != self._keys.dtype
        if end > self._keys.shape[-2] or promote:
            dtype = self.cast or torch.promote_types(key_states.dtype, self._keys.dtype)
            room = max(end, 2 * self._keys.shape[-2])
            filled = slice(0, self.length)
            self._keys = self._slab(self._keys[:, :, filled].to(dtype), room)
            self._values = self._slab(self._values[:, :, filled].to(dtype), room)
        self._keys[:, :, self.length:end] = key_states
        self._values[:, :, self.length:end] = value_states
        self.length = end
        self._views()
        return self._keys[:, :, :end], self._values[:, :, :end]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only these rows (the filled part only: the rest holds nothing yet)."""
        self._keys = self._keys[indices]
        self._values = self._values[indices]
        self._views()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        self.length = max(0, self.length + tokens_to_remove)
        self._views()

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._keys = self._keys.repeat_interleave(repeats, dim=0)
        self._values = self._values.repeat_interleave(repeats, dim=0)
        self._views()

    def reset(self) -> None:
        self.length = 0
        self._views()


def reserve(cache: Any, capacity: int, dtype: torch.dtype | None = None) -> None:
    """Turn every layer of a plain DynamicCache (see ``hf._plain_layers``) into a
    :class:`SlabLayer` with room for ``capacity`` positions (stored in ``dtype`` if given)."""
    cache.layers = [SlabLayer(layer.keys, layer.values, capacity, dtype) for layer in cache.layers]
