"""What a model runs a generation with: its KV cache, allocated once for the whole generation, and its decode
step: a lean step for the architectures that have one, where it gives the same logits as the model (see
fast_gpt2.py, fast_llama.py), else None and the engine calls the model.

One place to add an architecture's lean step, or to wrap steps (compiled, batched) for every architecture.
"""

from __future__ import annotations

import sys


def new_cache(model, capacity: int):
    """A cache for up to `capacity` positions: the model's own (`model.new_cache`, bardterm's models), else
    kv_cache.py's for a transformers model, else None (the model then makes its own on the first pass)."""
    if hasattr(model, "new_cache"):
        return model.new_cache(capacity)
    if "transformers" not in sys.modules:  # not imported: the model cannot be one of its models
        return None
    from bardterm.kv_cache import preallocated_cache

    return preallocated_cache(model, capacity)


def fast_decode_step(model):
    """Return `step(input_ids (rows, 1), cache) -> logits (rows, vocab)` for `model`, or None: the native step
    (native_step.py: compiled C++, batch 1 on the CPU) over the lean one where it can run, else the lean one."""
    from bardterm.fast_gpt2 import gpt2_decode_step
    from bardterm.fast_llama import llama_decode_step
    from bardterm.native_step import native_decode_step

    for build in (gpt2_decode_step, llama_decode_step):
        step = build(model)
        if step is not None:
            return native_decode_step(model, step) or step
    return None
