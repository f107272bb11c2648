"""Muon for the hidden weight matrices, AdamW for the rest: `bardterm train --optimizer muon`.

Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks") takes the momentum of a
2-D weight's gradient and replaces it by the nearest semi-orthogonal matrix, found by five Newton-Schulz
iterations, so every direction of the matrix moves by about the same amount. Scaling that update by
0.2 * sqrt(max(rows, cols)) gives it AdamW's typical RMS (Liu et al. 2025, "Muon is Scalable for LLM
Training"), so AdamW's learning rate, schedule and weight decay carry over unchanged. Embeddings, the (tied)
output layer, norms and biases stay on AdamW, as both papers do.

torch.optim.Muon exists, but it orthogonalizes in bfloat16, which CPUs without avx512_bf16 emulate about 40x
slower; this one works in the weight's own dtype.
"""

from __future__ import annotations

import math

import torch

# Keller Jordan's quintic coefficients: steepest slope at zero; singular values end in about [0.5, 1.5].
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(matrix: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately U V^T for matrix = U S V^T, by Newton-Schulz iteration on the smaller side."""
    a, b, c = NS_COEFFICIENTS
    x = matrix.float()
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=1e-7)  # Frobenius norm >= spectral norm, so all singular values start <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.T if tall else x).to(matrix.dtype)


def hidden_matrices(model) -> set[int]:
    """ids of the 2-D weights Muon should update: all but embeddings and the output layer."""
    excluded = {id(p) for module in model.modules() if isinstance(module, torch.nn.Embedding)
                for p in module.parameters()}
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None:
        excluded |= {id(p) for p in output.parameters()}
    return {id(p) for p in model.parameters() if p.dim() == 2 and id(p) not in excluded}


class Muon(torch.optim.Optimizer):
    """One optimizer, two rules: groups with `use_muon` get Muon, the others AdamW (decoupled weight decay)."""

    def __init__(self, param_groups, *, lr: float, betas=(0.9, 0.99), momentum: float = 0.95,
                 eps: float = 1e-8, ns_steps: int = 5):
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if ns_steps < 1:
            raise ValueError(f"ns_steps must be at least 1, got {ns_steps}")
        defaults = dict(lr=lr, betas=tuple(betas), momentum=momentum, eps=eps, ns_steps=ns_steps,
                        weight_decay=0.0, use_muon=False)
        super().__init__(param_groups, defaults)
        for group in self.param_groups:
            if group["use_muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon groups may hold only 2-D weight matrices")

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, decay = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.mul_(1.0 - lr * decay)
                if group["use_muon"]:
                    self._muon(p, group, lr)
                else:
                    self._adamw(p, group, lr)
        return loss

    def _muon(self, p, group, lr):
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        buf = state["momentum_buffer"]
        buf.mul_(group["momentum"]).add_(p.grad)
        nesterov = p.grad.add(buf, alpha=group["momentum"])
        p.add_(orthogonalize(nesterov, group["ns_steps"]), alpha=-lr * 0.2 * math.sqrt(max(p.shape)))

    def _adamw(self, p, group, lr):
        state = self.state[p]
        if "exp_avg" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        state["exp_avg"].lerp_(p.grad, 1.0 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)
        correction1 = 1.0 - beta1 ** state["step"]
        correction2 = 1.0 - beta2 ** state["step"]
        denom = (state["exp_avg_sq"] / correction2).sqrt_().add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-lr / correction1)
