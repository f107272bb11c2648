"""A KV cache without transformers, for bardterm's own models (`gpt2.py`): per layer, key and value buffers
allocated once for the whole generation, as `kv_cache.py` does for transformers' models, with the same row
methods (`bardterm.interface.Cache`) and transformers' names for them, which beam search and plugins call.
"""

from __future__ import annotations

import copy

import torch


def write_after(buffers: tuple[torch.Tensor, torch.Tensor], length: int, key_states: torch.Tensor,
                value_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Write new keys and values into (key, value) buffers after their first `length` positions; returns views
    of everything written so far. (kv_cache.py's layers for transformers' models write the same way.)"""
    end = length + key_states.shape[-2]
    key_buffer, value_buffer = buffers
    key_buffer.narrow(2, length, end - length).copy_(key_states)
    value_buffer.narrow(2, length, end - length).copy_(value_states)
    return key_buffer.narrow(2, 0, end), value_buffer.narrow(2, 0, end)


class GrowingViews:
    """`keys` and `values` as views of the first positions of a layer's `_buffers`, made when they are read.

    A decode step that writes straight into the buffers (native_step.py) moves only the length (`grow_to`):
    making the two views of every layer every token cost SmolLM2's 30 layers 0.3 ms a token (5 us a view), about
    3% of its step. Setting `keys` or `values` works as for plain attributes."""

    _keys: torch.Tensor | None = None
    _values: torch.Tensor | None = None
    _grown_to: int | None = None  # views of this many positions are owed

    def grow_to(self, length: int) -> None:
        """The buffers now hold `length` positions (written there by the caller)."""
        self._grown_to = length

    def grown_length(self) -> int | None:
        """The length `grow_to` set, not yet made into views (None: `keys` says it)."""
        return self._grown_to

    def _settle(self) -> None:
        if self._grown_to is not None:
            length, self._grown_to = self._grown_to, None
            self._keys, self._values = (buffer.narrow(2, 0, length) for buffer in self._buffers)

    @property
    def keys(self):
        self._settle()
        return self._keys

    @keys.setter
    def keys(self, tensor) -> None:
        self._settle()
        self._keys = tensor

    @property
    def values(self):
        self._settle()
        return self._values

    @values.setter
    def values(self, tensor) -> None:
        self._settle()
        self._values = tensor


class BufferLayer(GrowingViews):
    """One layer's keys and values: views into buffers of `capacity` positions (doubled if ever outgrown)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def get_seq_length(self) -> int:
        if self._grown_to is not None:
            return self._grown_to
        return 0 if self.keys is None else self.keys.shape[-2]

    def fits(self, new_positions: int) -> bool:
        """Whether `append` can take `new_positions` more without reallocating."""
        return self.keys is not None and self.keys.shape[-2] + new_positions <= self._buffers[0].shape[-2]

    def append(self, key_states: torch.Tensor, value_states: torch.Tensor):
        """Write the new positions after the old ones; returns all keys and values so far."""
        self.keys, self.values = write_after(self._buffers, self.get_seq_length(), key_states, value_states)
        return self.keys, self.values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor):
        if not self.fits(key_states.shape[-2]):
            self._reallocate(self.get_seq_length() + key_states.shape[-2], key_states)
        return self.append(key_states, value_states)

    def select(self, rows: torch.Tensor) -> None:
        """Keep `rows` (a row may repeat), in buffers of the same length."""
        if self.keys is None:
            return
        length = self.get_seq_length()
        self._buffers = tuple(buffer[rows] for buffer in self._buffers)  # advanced indexing: a copy
        self.keys, self.values = (buffer.narrow(2, 0, length) for buffer in self._buffers)

    def crop(self, length: int) -> None:
        if self.keys is not None:
            self.keys, self.values = self.keys.narrow(2, 0, length), self.values.narrow(2, 0, length)

    def _reallocate(self, needed: int, like: torch.Tensor) -> None:
        size = max(self.capacity, needed, 2 * self._buffers[0].shape[-2] if self._buffers else 0)
        shape = (*like.shape[:-2], size, like.shape[-1])
        buffers = (like.new_empty(shape), like.new_empty(shape))
        length = self.get_seq_length()
        if length:
            buffers[0].narrow(2, 0, length).copy_(self.keys)
            buffers[1].narrow(2, 0, length).copy_(self.values)
        self._buffers = buffers
        self.keys, self.values = buffers[0].narrow(2, 0, length), buffers[1].narrow(2, 0, length)


class BufferCache:
    """The cache a bardterm model's `forward` takes and returns: one `BufferLayer` per layer, made on first use.

    Rows are the batch, one per sequence; every method works in place, except `copy`."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.layers: list[BufferLayer] = []

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].get_seq_length() if layer_idx < len(self.layers) else 0

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        while len(self.layers) <= layer_idx:
            self.layers.append(BufferLayer(self.capacity))
        return self.layers[layer_idx].update(key_states, value_states)

    def select_rows(self, rows) -> None:
        """Keep these rows, in this order; a row may appear several times or not at all."""
        for layer in self.layers:
            layer.select(torch.as_tensor(rows, dtype=torch.long, device=layer.keys.device))

    def repeat_rows(self, times: int) -> None:
        """Each row `times` times in a row: rows (a, b) become (a, a, b, b) for 2."""
        if self.layers and self.layers[0].keys is not None:
            self.select_rows(torch.arange(self.layers[0].keys.shape[0]).repeat_interleave(times))

    def copy(self) -> "BufferCache":
        """An independent copy, buffers and all: a branch that can go on without changing this one."""
        return copy.deepcopy(self)  # deepcopy keeps views views: the copy's keys stay in the copy's buffers

    def crop(self, tokens_to_remove_or_length: int) -> None:
        """As transformers' `crop`: a negative number removes that many positions; else keep that many."""
        length = self.get_seq_length()
        keep = length + tokens_to_remove_or_length if tokens_to_remove_or_length < 0 else tokens_to_remove_or_length
        for layer in self.layers:
            layer.crop(max(0, min(keep, length)))

    # transformers' names for the same methods, which beam search and plugins written for transformers call
    def batch_select_indices(self, indices) -> None:
        self.select_rows(indices)

    def reorder_cache(self, beam_idx) -> None:
        self.select_rows(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.repeat_rows(repeats)
