"""`--optimizer muon`: orthogonalized updates for hidden matrices at AdamW's scale, AdamW for the rest."""

from __future__ import annotations

import math

import pytest
import torch

from bardterm.training.muon import Muon, hidden_matrices, orthogonalize


@pytest.mark.parametrize("shape", [(48, 96), (96, 48), (40, 40)], ids=["wide", "tall", "square"])
def test_orthogonalize_flattens_the_spectrum(shape):
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(shape[0], min(shape)))
    v, _ = torch.linalg.qr(torch.randn(shape[1], min(shape)))
    spread = torch.logspace(-2, 0, min(shape))  # singular values over two decades
    matrix = u @ torch.diag(spread) @ v.T
    out = orthogonalize(matrix)
    assert out.shape == matrix.shape
    singular = torch.linalg.svdvals(out)
    assert singular.min() > 0.3 and singular.max() < 1.6, singular  # was 0.01 .. 1
    # The same directions: out is close to U V^T, the exact orthogonal factor.
    cosine = torch.sum(out * (u @ v.T)) / (out.norm() * (u @ v.T).norm())
    assert cosine > 0.9


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2))


def test_hidden_matrices_leave_out_embeddings_and_output_layer():
    model = tiny_gpt2()
    hidden = hidden_matrices(model)
    names = {name for name, p in model.named_parameters() if id(p) in hidden}
    assert names == {f"transformer.h.{i}.{m}.weight" for i in range(2)
                     for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}


def test_muon_update_has_adamw_scale_and_others_follow_adamw():
    torch.manual_seed(0)
    matrix = torch.nn.Parameter(torch.randn(64, 192) * 0.02)
    vector = torch.nn.Parameter(torch.randn(64))
    twin = torch.nn.Parameter(vector.detach().clone())
    lr = 1e-3
    muon = Muon([{"params": [matrix], "use_muon": True}, {"params": [vector], "weight_decay": 0.1}], lr=lr)
    adamw = torch.optim.AdamW([twin], lr=lr, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    before = matrix.detach().clone()
    for step in range(3):
        grads = torch.randn(64, 192), torch.randn(64)
        matrix.grad, vector.grad, twin.grad = grads[0], grads[1], grads[1].clone()
        muon.step()
        adamw.step()
        if step == 0:
            rms = (matrix.detach() - before).pow(2).mean().sqrt().item()
            assert 0.1 * lr < rms < 0.3 * lr  # 0.2 * lr: AdamW's typical update RMS (Liu et al. 2025)
    torch.testing.assert_close(vector, twin)  # the non-Muon groups are AdamW exactly


def test_muon_refuses_bad_arguments():
    matrix = torch.nn.Parameter(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="momentum"):
        Muon([{"params": [matrix], "use_muon": True}], lr=1e-3, momentum=1.0)
    with pytest.raises(ValueError, match="lr"):
        Muon([{"params": [matrix], "use_muon": True}], lr=0.0)
    with pytest.raises(ValueError, match="2-D"):
        Muon([{"params": [torch.nn.Parameter(torch.zeros(4))], "use_muon": True}], lr=1e-3)


def test_muon_trains_a_tiny_model():
    model = tiny_gpt2()
    hidden = hidden_matrices(model)
    params = list(model.parameters())
    optimizer = Muon([{"params": [p for p in params if id(p) in hidden], "use_muon": True},
                      {"params": [p for p in params if id(p) not in hidden]}], lr=3e-3)
    x = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(30):
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert math.isfinite(losses[-1]) and losses[-1] < losses[0] - 1.0
