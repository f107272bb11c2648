"""Half-precision linear layers for the CPU kernels that run them fastest.

PackedLinear: bfloat16 layers whose weights are laid out once, at load, in oneDNN's blocked format.

`F.linear` in bfloat16 on the CPU hands oneDNN a plain (out, in) weight, and oneDNN reorders it into its blocked
layout on every call: at batch 1 the reorder costs as much as the product. Reordering once is what PyTorch's own
compiler does for frozen CPU models (`torch.ops.mkldnn._reorder_linear_weight` and `_linear_pointwise`, the ops
Inductor's freezing pass emits). Same products, bit for bit (tested); only the weight's layout differs.
Measured on a 2-core AMD EPYC (Zen 5, avx512_bf16), one thread, distilgpt2's 24 block matrices per token:
F.linear 14.3 ms, packed 9.0 ms (fp32 addmm: 15.9 ms).

WidenedLinear: float16 layers on a CPU without fp16 arithmetic. One row (a decode step) goes through PyTorch's
fp16 matrix-vector kernel, which widens as it reads and is the fastest of all here (the same 24 matrices: 4.8
ms); several rows (a prompt, an eval batch) are multiplied in float32, for want of an fp16 matrix product (fp16
rows were 4.5x slower than fp32 on the shipped model's 200-token prompt, 212 against 47 ms).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PackedLinear(nn.Module):
    """nn.Linear in bfloat16 with its weight in oneDNN's blocked layout (an opaque mkldnn tensor)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1))
        self.bias = linear.bias
        # The plain (out, in) weight too, for the native decode step (native_step.py), which reads rows: batch-1
        # steps there, prompts here. It costs the block weights twice (distilgpt2: +85 MB in bf16).
        self.plain_weight = linear.weight.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bfloat16 packed for oneDNN"


def can_pack() -> bool:
    """Whether this PyTorch and CPU can run packed bfloat16 layers (oneDNN with native bf16)."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def pack_bf16_linears(model: nn.Module) -> nn.Module:
    """Replace every bfloat16 nn.Linear on the CPU with a PackedLinear, in place. Returns the model.

    A head tied to the input embedding is packed too, into a copy: the embedding keeps the plain table for its
    lookups. That stores the largest matrix twice (distilgpt2's bf16 weights 164 -> 241 MB, still below fp32's
    330), but a plain bf16 head is reordered on every call: distilgpt2-shaped, one thread, 63 -> 86 tok/s, and the
    first token 185 -> 15 ms."""
    return _replace_cpu_linears(model, torch.bfloat16, PackedLinear)


class WidenedLinear(nn.Module):
    """nn.Linear in float16 on a CPU without fp16 arithmetic: one row as it is, several rows widened to float32.
    It holds the same weight tensor (a tied head still shares it with the embedding)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == x.shape[-1]:  # one row: the fp16 matrix-vector kernel
            return F.linear(x, self.weight, self.bias)
        bias = None if self.bias is None else self.bias.float()
        return F.linear(x.float(), self.weight.float(), bias).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, float16, rows widened to float32"


def widen_fp16_linears(model: nn.Module) -> nn.Module:
    """Replace every float16 nn.Linear on the CPU with a WidenedLinear, in place. Returns the model."""
    return _replace_cpu_linears(model, torch.float16, WidenedLinear)


def _replace_cpu_linears(model: nn.Module, dtype: torch.dtype, make) -> nn.Module:
    """Every nn.Linear of `model` holding `dtype` weights on the CPU becomes `make(linear)`, in place."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child.weight.dtype == dtype and child.weight.device.type == "cpu":
                setattr(parent, name, make(child))
    return model
