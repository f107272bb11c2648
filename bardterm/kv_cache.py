"""A KV cache that is allocated once per generation instead of growing by concatenation.

transformers' `DynamicLayer` appends each step's keys and values with `torch.cat`, which copies the whole
cache and allocates a fresh buffer every token (quadratic copying, and page faults on the CPU). We know the
final length up front (prompt + max new tokens), so each layer writes into a buffer of that size and hands the
model views of the filled part. The model sees the same keys and values, so the logits are the same.

`PreallocatedCache` is what a selector's `run.forward` hands back (`Step.cache`), with the documented row
methods of `bardterm.interface.Cache`: `select_rows`, `repeat_rows`, `copy` (and `crop`). transformers' own
`batch_select_indices`, `batch_repeat_interleave` and `reorder_cache` do the same here, keeping the buffers'
size: before, each replaced the keys with a plain tensor and the next step doubled the buffer to take them
back (107 positions grew to 438,272 in 12 steps of a contrastive search).
"""

from __future__ import annotations

import copy

import torch
from transformers import PreTrainedConfig
from transformers.cache_utils import DynamicCache, DynamicLayer

from bardterm.kv_buffers import GrowingViews, write_after


class PreallocatedLayer(GrowingViews, DynamicLayer):
    """A `DynamicLayer` whose keys and values are views into buffers sized for the whole generation."""

    def get_seq_length(self) -> int:
        grown = self.grown_length()
        return super().get_seq_length() if grown is None else grown

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        if self._buffers is None or not self._owns(self.keys) or length + key_states.shape[-2] > self._size():
            self._reallocate(length + key_states.shape[-2], key_states)  # first call, or someone replaced keys
        end = length + key_states.shape[-2]
        key_buffer, value_buffer = self._buffers
        key_buffer[..., length:end, :] = key_states
        value_buffer[..., length:end, :] = value_states
        self.keys, self.values = key_buffer[..., :end, :], value_buffer[..., :end, :]
        return self.keys, self.values

    def fits(self, new_positions: int) -> bool:
        """Whether `append` can take `new_positions` more: the buffers exist, hold the keys, and have room."""
        return (self._buffers is not None and self.keys is not None and self.keys.numel() > 0
                and self.keys.data_ptr() == self._buffers[0].data_ptr()
                and self.keys.shape[-2] + new_positions <= self._buffers[0].shape[-2])

    def append(self, key_states, value_states):
        """`update` without its checks, for a caller that asked `fits` (the lean GPT-2 step, every token)."""
        self.keys, self.values = write_after(self._buffers, self.keys.shape[-2], key_states, value_states)
        return self.keys, self.values

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: row i becomes row beam_idx[i]."""
        self.batch_select_indices(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Each row `repeats` times in a row, as transformers' method does, into buffers of the same size."""
        if self.get_seq_length() > 0:
            rows = self.keys.shape[0]
            self.batch_select_indices(torch.arange(rows, device=self.keys.device).repeat_interleave(repeats))

    def batch_select_indices(self, indices) -> None:
        """Keep rows `indices` (a row may repeat): in place when the number of rows stays, else into new buffers
        of the same size."""
        length = self.get_seq_length()
        if length == 0:
            return
        if self._buffers is None or not self._owns(self.keys):
            super().batch_select_indices(indices)
            return
        rows = torch.as_tensor(indices, dtype=torch.long, device=self.keys.device)
        if rows.shape[0] == self._buffers[0].shape[0]:
            for buffer in self._buffers:
                buffer[:, :, :length] = buffer[rows, :, :length]  # the right side is a copy: safe in place
        else:
            fresh = []
            for buffer in self._buffers:
                taken = buffer.new_empty((rows.shape[0], *buffer.shape[1:]))
                taken[:, :, :length] = buffer[rows, :, :length]
                fresh.append(taken)
            self._buffers = tuple(fresh)
        self.keys, self.values = (buffer[..., :length, :] for buffer in self._buffers)

    def _size(self) -> int:
        return self._buffers[0].shape[-2]

    def _owns(self, tensor) -> bool:
        return tensor is not None and (tensor.numel() == 0 or tensor.data_ptr() == self._buffers[0].data_ptr())

    def _reallocate(self, needed: int, like: torch.Tensor) -> None:
        # Past the end: double (amortised growth). Keys replaced from outside: take them back at the same size.
        overflow = self._buffers is not None and needed > self._size()
        size = max(self.capacity, needed, 2 * self._size() if overflow else 0)
        shape = (*like.shape[:-2], size, like.shape[-1])
        buffers = (like.new_empty(shape), like.new_empty(shape))
        length = self.get_seq_length()
        if length:
            buffers[0][..., :length, :] = self.keys
            buffers[1][..., :length, :] = self.values
        self._buffers = buffers


class PreallocatedCache(DynamicCache):
    """A `DynamicCache` whose full-attention layers are `PreallocatedLayer`s, with documented row methods.

    Rows are the batch, one per sequence; every method works in place, except `copy`. For transformers'
    attention layers of other kinds (sliding windows) they fall back on transformers' own methods.
    """

    def select_rows(self, rows) -> None:
        """Keep these rows, in this order; a row may appear several times or not at all."""
        self.batch_select_indices(torch.as_tensor(rows, dtype=torch.long))

    def repeat_rows(self, times: int) -> None:
        """Each row `times` times in a row: rows (a, b) become (a, a, b, b) for 2."""
        self.batch_repeat_interleave(times)

    def copy(self) -> "PreallocatedCache":
        """An independent copy, buffers and all: a branch that can go on without changing this one."""
        return copy.deepcopy(self)  # deepcopy keeps views views: the copy's keys stay in the copy's buffers


def preallocated_cache(model, capacity: int):
    """A cache for `model` whose full-attention layers are preallocated for `capacity` positions.

    Layers of other kinds (sliding windows, linear attention) keep their own transformers implementation.
    Returns None for a model that is not a transformers model: it then makes its own cache.
    """
    if not isinstance(getattr(model, "config", None), PreTrainedConfig):
        return None
    cache = PreallocatedCache(config=model.config)
    if cache.layers:
        cache.layers = [PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer
                        for layer in cache.layers]
    else:
        cache.layer_class_to_replicate = lambda: PreallocatedLayer(capacity)
    return cache
