"""A lean decode step for Llama models: the same tensor operations as transformers' Llama, without the module
calls, output objects, mask and rotary bookkeeping around them (as fast_gpt2.py does for GPT-2).

Used only where it gives the model's logits: a `LlamaForCausalLM` in eval mode with SDPA attention and plain
rotary positions (rope type "default"), no hooks, one new token per row; anything else returns None and the
engine calls the model. Values that differ only in where they are computed: the rotary cos/sin come from the
model's own `rotary_emb` for all positions at once (the same numbers as its one position a call), and
`rotate_half(x) * sin` is `roll(x) * sin'` with sin' the sin with its first half negated (negation is exact).
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from bardterm.lean_step import append, has_hooks, linear


def llama_decode_step(model):
    """Return `step(input_ids (rows, 1), cache) -> logits (rows, vocab)` for `model`, or None if not exact."""
    if "transformers" not in sys.modules:  # not imported: the model cannot be one of its models
        return None
    from transformers import LlamaForCausalLM

    config = model.config
    if not (isinstance(model, LlamaForCausalLM) and not model.training and config._attn_implementation == "sdpa"
            and model.model.rotary_emb.rope_type == "default" and not has_hooks(model)):
        return None
    layers = model.model.layers[:config.num_hidden_layers]
    projections = [linear(layer) for decoder in layers for layer in (
        decoder.self_attn.q_proj, decoder.self_attn.k_proj, decoder.self_attn.v_proj, decoder.self_attn.o_proj,
        decoder.mlp.gate_proj, decoder.mlp.up_proj, decoder.mlp.down_proj)]
    head = linear(model.lm_head)
    if head is None or None in projections:  # a layer type this step does not know
        return None
    # Plain tensors and functions, looked up once: module attribute access costs more than the small ops.
    blocks = [(_norm(decoder.input_layernorm), *projections[7 * i:7 * i + 4], decoder.self_attn.scaling,
               _norm(decoder.post_attention_layernorm), *projections[7 * i + 4:7 * i + 7], _activation(decoder.mlp))
              for i, decoder in enumerate(layers)]
    final_norm, wte = _norm(model.model.norm), model.model.embed_tokens
    embed = (lambda ids: F.embedding(ids, wte.weight)) if type(wte) is torch.nn.Embedding else wte.forward
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = layers[0].self_attn.head_dim
    device = model.lm_head.weight.device
    dtype = embed(torch.zeros(1, 1, dtype=torch.long, device=device)).dtype  # the rotary tables' type, as the model's
    # Built on the first step and again when outgrown, for twice the positions: a table of all 8192 of SmolLM2's
    # would cost every generation 4-9 ms before its first token (2-core AMD EPYC, one thread).
    cos = sin = torch.empty(0)

    def step(input_ids: torch.Tensor, cache) -> torch.Tensor:
        nonlocal cos, sin
        rows = input_ids.shape[0]
        seen = cache.get_seq_length()
        if seen >= cos.shape[0]:
            cos, sin = _rope_table(model.model.rotary_emb, 2 * (seen + 1), dtype, device)
        cos_here, sin_here = cos[seen], sin[seen]
        hidden = embed(input_ids)
        for index, (norm_1, q_proj, k_proj, v_proj, o_proj, scaling, norm_2, gate, up, down, act) in enumerate(blocks):
            x = _rms_norm(norm_1, hidden)
            # One position: (rows, 1, heads * head_dim) is already (rows, heads, 1, head_dim) in memory.
            query = _rotate(q_proj(x).view(rows, heads, 1, head_dim), cos_here, sin_here)
            key = _rotate(k_proj(x).view(rows, kv_heads, 1, head_dim), cos_here, sin_here)
            key, value = append(cache, index, key, v_proj(x).view(rows, kv_heads, 1, head_dim))
            attended = F.scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, scale=scaling,
                                                      is_causal=False, enable_gqa=kv_heads != heads)
            hidden.add_(o_proj(attended.reshape(rows, 1, heads * head_dim)))  # hidden is ours: add in place
            x = _rms_norm(norm_2, hidden)
            hidden.add_(down(act(gate(x)).mul_(up(x))))
        return head(_rms_norm(final_norm, hidden))[:, -1, :]

    return step


def _norm(norm):
    return norm.weight, norm.variance_epsilon


def _rms_norm(norm, x):
    """transformers' LlamaRMSNorm, op for op: in float32, then back to x's type, times the weight."""
    weight, eps = norm
    x32 = x.to(torch.float32)
    variance = x32.pow(2).mean(-1, keepdim=True)
    return (x32 * torch.rsqrt(variance.add_(eps))).to(x.dtype).mul_(weight)


def _activation(mlp):
    from transformers.activations import SiLUActivation

    if type(mlp.act_fn) in (SiLUActivation, torch.nn.SiLU):
        return lambda x: F.silu(x, inplace=True)  # x is the gate's fresh output: no copy
    return mlp.act_fn


def _rope_table(rotary, length: int, dtype, device):
    """cos and sin' for positions 0..length-1, each (length, 1, 1, head_dim): the model's own rotary_emb on all
    positions at once; sin' has its first half negated, so that rotate_half(x) * sin == roll(x) * sin'."""
    cos, sin = rotary(torch.empty(0, dtype=dtype, device=device), torch.arange(length, device=device)[None])
    half = sin.shape[-1] // 2
    sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    return cos.view(length, 1, 1, -1), sin.view(length, 1, 1, -1)


def _rotate(x, cos, sin):
    """transformers' (x * cos) + (rotate_half(x) * sin), with rotate_half(x) = cat(-x2, x1) as roll(x) and the
    minus moved into sin."""
    return (x * cos).add_(x.roll(x.shape[-1] // 2, -1).mul_(sin))
