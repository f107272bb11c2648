"""The decode step a model runs for one new token per row: a lean step for the architectures that have one,
where it gives the same logits as the model (see fast_gpt2.py, fast_llama.py), else None and the engine calls the model.

One place to add an architecture's lean step, or to wrap steps (compiled, batched) for every architecture.
"""

from __future__ import annotations


def fast_decode_step(model):
    """Return `step(input_ids (rows, 1), cache) -> logits (rows, vocab)` for `model`, or None."""
    from bardterm.fast_gpt2 import gpt2_decode_step
    from bardterm.fast_llama import llama_decode_step

    for build in (gpt2_decode_step, llama_decode_step):
        step = build(model)
        if step is not None:
            return step
    return None
