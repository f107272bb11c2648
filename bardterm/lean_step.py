"""What the lean decode steps (fast_gpt2.py, fast_llama.py) share: linear layers as plain functions, the cache
append, and the check that no hook would miss the module calls a lean step leaves out."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.nn.modules import module as torch_module

from bardterm.packed import PackedLinear, WidenedLinear
from bardterm.quantize import Int8Linear


def linear(layer):
    """`layer`'s product as a plain function, for the layers precision.py leaves: nn.Linear (any float type),
    Int8Linear, PackedLinear and WidenedLinear (their own kernels); None for anything else. Without the module
    call (the hooks are checked)."""
    if type(layer) in (Int8Linear, PackedLinear, WidenedLinear):
        return layer.forward
    if type(layer) is torch.nn.Linear:
        return functools.partial(F.linear, weight=layer.weight, bias=layer.bias)
    return None


def append(cache, index, key, value):
    """`cache.update` for new positions, writing straight into preallocated buffers when the layer has room
    (kv_cache.PreallocatedLayer and kv_buffers.BufferLayer both have `fits` and `append`)."""
    layer = cache.layers[index] if index < len(cache.layers) else None
    fits = getattr(layer, "fits", None)
    if fits is not None and fits(key.shape[-2]):
        return layer.append(key, value)
    return cache.update(key, value, index)


def has_hooks(model) -> bool:
    """Whether a hook would miss calls that the lean step makes without the modules. transformers' own
    output-capturing hooks, which it leaves on the layers after one call with output_hidden_states (contrastive
    search's), record only inside the model's forward: they do not count, or one contrastive run would cost every
    later generation its lean step."""
    if any((torch_module._global_forward_hooks, torch_module._global_forward_pre_hooks)):
        return True
    return any(m._forward_pre_hooks or any(not _captures_outputs(hook) for hook in m._forward_hooks.values())
               for m in model.modules())


def _captures_outputs(hook) -> bool:
    return (getattr(hook, "__name__", "") == "output_capturing_hook"
            and getattr(hook, "__module__", "").startswith("transformers."))
