"""The lean GPT-2 forward: the same tensor operations as transformers' GPT-2, in the same order, without the
module calls, output objects and mask bookkeeping around them.

It serves two models: transformers' `GPT2LMHeadModel`, whose decode step it replaces where it is exact (eval
mode, SDPA attention, no cross-attention, no hooks: hooks must see every call), and bardterm's own GPT-2
(`gpt2.py`), which loads without importing transformers and runs every pass through it. On a small model most of
a decode step is Python overhead rather than arithmetic; this removes most of it.
"""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F

from bardterm.lean_step import append, has_hooks, linear


def gpt2_decode_step(model):
    """Return `step(input_ids (rows, 1), cache) -> logits (rows, vocab)` for `model`, or None if not exact."""
    if not (_is_native(model) or _is_exact_transformers_gpt2(model)) or model.training or has_hooks(model):
        return None
    forward = lean_forward(model)
    return lambda input_ids, cache: forward(input_ids, cache)[0][:, -1, :]


def lean_forward(model):
    """Return `forward(input_ids (rows, positions), cache, hidden=False, keep=0) -> (logits, hidden states or None)`
    over `model`'s weights as they are now (after precision.py has laid them out). Logits are for the last `keep`
    positions (0: every position: the head is the largest product, and a prompt needs only its last);
    with `hidden`, the hidden states are transformers' `output_hidden_states` tuple: the embeddings, each block's
    output, and the last one after the final layer norm."""
    config, transformer = model.config, model.transformer
    width, heads = config.n_embd, config.n_head
    head_dim = width // heads
    # Plain tensors, looked up once: module attribute access costs more than the small ops themselves.
    blocks = [(_norm(block.ln_1), _conv(block.attn.c_attn), _conv(block.attn.c_proj), block.attn.scaling,
               _norm(block.ln_2), _conv(block.mlp.c_fc), _activation(block.mlp.act), _conv(block.mlp.c_proj))
              for block in transformer.h]
    ln_f, wte, wpe, head = _norm(transformer.ln_f), transformer.wte, transformer.wpe.weight, model.lm_head
    embed = (lambda ids: F.embedding(ids, wte.weight)) if type(wte) is torch.nn.Embedding else wte
    project = linear(head) or head
    positions = torch.arange(wpe.shape[0], device=wpe.device)

    def forward(input_ids: torch.Tensor, cache, hidden: bool = False, keep: int = 0):
        rows, length = input_ids.shape
        seen = cache.get_seq_length()
        states = [] if hidden else None
        x = embed(input_ids) + F.embedding(positions[seen:seen + length].view(1, length), wpe)
        mask, causal = _attention_mask(length, seen, x.device)
        for index, (ln_1, c_attn, c_proj, scaling, ln_2, c_fc, act, mlp_proj) in enumerate(blocks):
            if hidden:
                states.append(x)
            qkv = _addmm(c_attn, _layer_norm(ln_1, x))
            if length == 1:  # (rows, 1, 3 * width) is already (rows, 3, heads, 1, head_dim) in memory: one view
                query, key, value = qkv.view(rows, 3, heads, 1, head_dim).unbind(1)
            else:
                query, key, value = (part.view(rows, length, heads, head_dim).transpose(1, 2)
                                     for part in qkv.split(width, dim=2))
            key, value = append(cache, index, key, value)
            attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0,
                                                      scale=scaling, is_causal=causal)
            x = _addmm(c_proj, attended.transpose(1, 2).reshape(rows, length, width)) + x
            x = x + _addmm(mlp_proj, act(_addmm(c_fc, _layer_norm(ln_2, x))))
        x = _layer_norm(ln_f, x)
        if hidden:
            states.append(x)
        return project(x[:, -keep:, :] if keep else x), (tuple(states) if hidden else None)

    return forward


def _attention_mask(length: int, seen: int, device) -> tuple[torch.Tensor | None, bool]:
    """(attn_mask, is_causal) for `length` new positions after `seen` cached ones, as transformers' SDPA path
    passes them: one position sees everything; a first pass is plainly causal; more positions after a cache
    need an explicit mask (position i sees keys up to seen + i)."""
    if length == 1:
        return None, False
    if seen == 0:
        return None, True
    keys = torch.arange(seen + length, device=device)
    return keys.view(1, -1) <= (torch.arange(length, device=device) + seen).view(-1, 1), False


def _norm(norm):
    return norm.normalized_shape, norm.weight, norm.bias, norm.eps


def _conv(conv):
    """What `_addmm` takes: Conv1D's (bias, weight, out), or a function for the layers precision.py puts in its
    place (int8: its own kernel; bf16/fp16: nn.Linear on (out, in) weights, as nn.Linear computes it)."""
    return linear(conv) or (conv.bias, conv.weight, conv.nf)


def _activation(act):
    """GPT-2's tanh GELU ("gelu_new") in place; any other activation module as it is."""
    return _new_gelu_ if type(act).__name__ in ("NewGELUActivation", "NewGELU") else act


def _layer_norm(norm, x):
    shape, weight, bias, eps = norm
    return torch.layer_norm(x, shape, weight, bias, eps)


def _addmm(conv, x):  # transformers' Conv1D: x @ weight + bias
    if callable(conv):
        return conv(x)
    bias, weight, out = conv
    return torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight).view(*x.shape[:-1], out)


_GELU_C = math.sqrt(2.0 / math.pi)


def _new_gelu_(x):
    """transformers' NewGELUActivation, op for op (so bit for bit), reusing buffers instead of allocating:
    0.5 * x * (1.0 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3))). Overwrites its argument."""
    inner = torch.pow(x, 3.0).mul_(0.044715).add_(x).mul_(_GELU_C).tanh_().add_(1.0)
    return x.mul_(0.5).mul_(inner)


def _is_native(model) -> bool:
    gpt2 = sys.modules.get("bardterm.gpt2")  # not imported: the model cannot be one
    return gpt2 is not None and isinstance(model, gpt2.GPT2)


def _is_exact_transformers_gpt2(model) -> bool:
    transformers = sys.modules.get("transformers")  # not imported: the model cannot be one of its models
    if transformers is None:
        return False
    from transformers import GPT2LMHeadModel

    config = model.config
    return (isinstance(model, GPT2LMHeadModel) and config._attn_implementation == "sdpa"
            and not config.add_cross_attention)
