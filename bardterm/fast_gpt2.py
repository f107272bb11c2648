"""A lean decode step for GPT-2 models: the same tensor operations as transformers' GPT-2, in the same order,
without the module calls, output objects and mask bookkeeping around them.

On a small model most of a decode step is Python overhead rather than arithmetic; this removes most of it. It
is used only where it is exact: a `GPT2LMHeadModel` in eval mode with SDPA attention, no cross-attention, no
hooks (hooks must see every call), one new token per row. Anything else takes the ordinary `model(...)` path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bardterm.lean_step import append, has_hooks, linear


def gpt2_decode_step(model):
    """Return `step(input_ids (batch, 1), cache) -> logits (batch, vocab)` for `model`, or None if not exact."""
    from transformers import GPT2LMHeadModel
    from transformers.activations import NewGELUActivation

    config = model.config
    if not (isinstance(model, GPT2LMHeadModel) and not model.training and config._attn_implementation == "sdpa"
            and not config.add_cross_attention and not has_hooks(model)):
        return None
    transformer, width = model.transformer, config.hidden_size
    heads = config.num_attention_heads
    head_dim = width // heads
    # Plain tensors, looked up once: module attribute access costs more than the small ops themselves.
    blocks = [(_norm(block.ln_1), _conv(block.attn.c_attn), _conv(block.attn.c_proj), block.attn.scaling,
               _norm(block.ln_2), _conv(block.mlp.c_fc), block.mlp.act, _conv(block.mlp.c_proj))
              for block in transformer.h]
    ln_f, wte, wpe, head = _norm(transformer.ln_f), transformer.wte, transformer.wpe.weight, model.lm_head
    embed = (lambda ids: F.embedding(ids, wte.weight)) if type(wte) is torch.nn.Embedding else wte
    project = (lambda x: F.linear(x, head.weight)) if type(head) is torch.nn.Linear else head
    positions = torch.arange(wpe.shape[0], device=wpe.device)

    def step(input_ids: torch.Tensor, cache) -> torch.Tensor:
        rows = input_ids.shape[0]
        seen = cache.get_seq_length()
        hidden = embed(input_ids) + F.embedding(positions[seen:seen + 1].view(1, 1), wpe)
        for index, (ln_1, c_attn, c_proj, scaling, ln_2, c_fc, act, mlp_proj) in enumerate(blocks):
            # One position: (rows, 1, 3 * width) is already (rows, 3, heads, 1, head_dim) in memory, so one view
            # gives the (rows, heads, 1, head_dim) queries, keys and values that split + transpose would.
            query, key, value = _addmm(c_attn, _layer_norm(ln_1, hidden)).view(rows, 3, heads, 1, head_dim).unbind(1)
            key, value = append(cache, index, key, value)
            attended = F.scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                                      scale=scaling, is_causal=False)
            hidden = _addmm(c_proj, attended.reshape(rows, 1, width)) + hidden
            inner = _addmm(c_fc, _layer_norm(ln_2, hidden))
            inner = _new_gelu_(inner) if type(act) is NewGELUActivation else act(inner)
            hidden = hidden + _addmm(mlp_proj, inner)
        return project(_layer_norm(ln_f, hidden))[:, -1, :]

    return step


def _norm(norm):
    return norm.normalized_shape, norm.weight, norm.bias, norm.eps


def _conv(conv):
    """What `_addmm` takes: Conv1D's (bias, weight, out), or a function for the layers precision.py puts in its
    place (int8: its own kernel; bf16/fp16: nn.Linear on (out, in) weights, as nn.Linear computes it)."""
    return linear(conv) or (conv.bias, conv.weight, conv.nf)


def _layer_norm(norm, x):
    shape, weight, bias, eps = norm
    return torch.layer_norm(x, shape, weight, bias, eps)


def _addmm(conv, x):  # transformers' Conv1D: x @ weight + bias
    if callable(conv):
        return conv(x)
    bias, weight, out = conv
    return torch.addmm(bias, x.view(-1, x.shape[-1]), weight).view(*x.shape[:-1], out)


_GELU_C = math.sqrt(2.0 / math.pi)


def _new_gelu_(x):
    """transformers' NewGELUActivation, op for op (so bit for bit), reusing buffers instead of allocating:
    0.5 * x * (1.0 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3))). Overwrites nothing the caller keeps."""
    inner = torch.pow(x, 3.0).mul_(0.044715).add_(x).mul_(_GELU_C).tanh_().add_(1.0)
    return x.mul_(0.5).mul_(inner)
