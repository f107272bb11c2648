"""Weight-only int8: every linear layer keeps int8 weights and one float scale per output channel.

    quantize_int8(model)   # in place; nn.Linear and GPT-2's Conv1D become Int8Linear

w ≈ q * scale with scale = max|w| / 127 over each output row (symmetric, round to nearest): the error per
weight is at most scale / 2. The activations stay in the model's float type. A tied head and input embedding
(GPT-2, SmolLM2) share one int8 table, so the largest matrix is stored once, in a quarter of fp32's bytes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 q, scale) with weight[i] ≈ q[i] * scale[i], per row, computed in float32."""
    weight = weight.detach().float()
    scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8).contiguous()
    return q, scale


class Int8Linear(nn.Module):
    """y = x @ (q * scale).T + bias, with q int8 of shape (out, in). Replaces nn.Linear and Conv1D alike."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = q.shape[1], q.shape[0]
        self.register_buffer("weight", q)  # int8: what `weight` holds is what memory holds
        self.register_buffer("scale", scale.to(dtype))
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(dtype), requires_grad=False)

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> Int8Linear:
        q, scale = _quantize_rows(weight)
        return cls(q, scale, bias, weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.device.type == "cpu" and rows.dtype == torch.bfloat16:
            # PyTorch's CPU kernel for int8 weights and bf16 activations (the one torchao's int8 weight-only
            # layout calls); it reads the int8 weights directly.
            out = torch._weight_int8pack_mm(rows.contiguous(), self.weight, self.scale)
        else:  # any other device or float type: dequantize on the fly (exact same numbers, more traffic)
            out = F.linear(rows, self.weight.to(rows.dtype)) * self.scale
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


class Int8Embedding(nn.Module):
    """An embedding table stored as int8 rows with one scale each (shared with a tied Int8Linear head)."""

    def __init__(self, head: Int8Linear):
        super().__init__()
        self.weight, self.scale = head.weight, head.scale  # the same tensors, not copies
        self.embedding_dim = head.in_features
        self.num_embeddings = head.out_features

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight).to(self.scale.dtype) * self.scale[ids].unsqueeze(-1)


def _linear_weight(module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight as (out, in), bias) for nn.Linear and transformers' Conv1D (which stores (in, out)); else None."""
    if isinstance(module, nn.Linear):
        return module.weight, module.bias
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return module.weight.t(), module.bias
    return None


def quantize_int8(model: nn.Module) -> nn.Module:
    """Make every linear layer of `model` int8 (weight-only), in place; a tied input embedding shares the
    head's int8 table. Returns the model."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = (head is not None and embeddings is not None and isinstance(embeddings, nn.Embedding)
            and head.weight.data_ptr() == embeddings.weight.data_ptr())
    replaced: dict[int, Int8Linear] = {}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            found = _linear_weight(child)
            if found is None:
                continue
            if id(child) not in replaced:
                replaced[id(child)] = Int8Linear.from_float(*found)
            setattr(parent, name, replaced[id(child)])
    if head is not None and id(head) in replaced and embeddings is not None:
        if tied:
            model.set_input_embeddings(Int8Embedding(replaced[id(head)]))
        elif isinstance(embeddings, nn.Embedding):
            model.set_input_embeddings(Int8Embedding(Int8Linear.from_float(embeddings.weight, None)))
    return model


def to_linear_layout(model: nn.Module) -> nn.Module:
    """Replace GPT-2's Conv1D layers, whose weights are stored (in, out), with nn.Linear layers holding the same
    weights as (out, in), in place. Same products; in bf16 at batch 1 the CPU kernels read the (out, in) layout
    faster (distilgpt2's block matrices, one token, one thread, loaded 2-core AMD EPYC: 20.2 ms with addmm on
    (in, out), 15.2 ms with linear on (out, in); in fp32 it is the other way round, 18.8 against 23.9 ms)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__ == "Conv1D" and hasattr(child, "nf"):
                linear = nn.Linear(child.weight.shape[0], child.nf, bias=child.bias is not None, device="meta")
                linear.weight = nn.Parameter(child.weight.detach().t().contiguous(),
                                             requires_grad=child.weight.requires_grad)
                linear.bias = child.bias
                setattr(parent, name, linear)
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer, each tensor counted once (tied weights are one tensor)."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        key = id(tensor) if tensor.is_mkldnn else tensor.data_ptr()  # packed.py's weights have no data pointer
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total
