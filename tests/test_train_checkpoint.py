"""Checkpoint writes are atomic: a failure mid-save leaves the previous checkpoint intact and no debris."""

from __future__ import annotations

import json
import os

import pytest


@pytest.fixture
def tiny(tmp_path):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from bardterm.training.tokenizer import train_bpe

    tokenizer = train_bpe("To be, or not to be, that is the question.\n" * 50, 270)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=16, n_embd=16, n_layer=1, n_head=2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
    optimizer.step()
    return model, tokenizer, optimizer


def test_failed_save_keeps_previous_checkpoint(tiny, tmp_path, monkeypatch):
    import torch

    from bardterm.training import checkpoint as ckpt

    model, tokenizer, _ = tiny
    run = tmp_path / "run"
    ckpt.save_model_dir(model, tokenizer, {"step": 1}, run, top_level=True)
    ckpt.save_model_dir(model, tokenizer, {"step": 1}, run / "last", top_level=False)
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}

    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model, "save_pretrained", broken)
    for target, top in ((run, True), (run / "last", False)):
        with pytest.raises(OSError):
            ckpt.save_model_dir(model, tokenizer, {"step": 2}, target, top_level=top)
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in run.rglob(".*")], "staging debris left behind"
    assert json.loads((run / "bardterm.json").read_text()) == {"step": 1}


def test_resume_state_round_trip_without_pickle(tiny, tmp_path):
    import random

    import torch

    from bardterm.training import checkpoint as ckpt

    model, tokenizer, optimizer = tiny
    run = tmp_path / "run"
    torch.manual_seed(123)
    random.seed(5)
    ckpt.save_resume(run, model, optimizer, {"step": 7, "note": "x"})
    expected_torch, expected_py = torch.rand(3), random.random()
    assert sorted(p.name for p in (run / "resume").iterdir()) == [
        "model.safetensors", "optimizer.safetensors", "rng.safetensors", "trainer_state.json"]
    for f in (run / "resume").glob("*.safetensors"):
        assert f.read_bytes()[8:9] == b"{"  # safetensors header, not a pickle

    from transformers import GPT2LMHeadModel

    fresh = GPT2LMHeadModel(model.config)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    torch.manual_seed(999)
    state = ckpt.load_resume(run, fresh, fresh_opt)
    assert state["step"] == 7
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    sa, sb = optimizer.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for key in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][key]), torch.as_tensor(sb[i][key]))
    assert torch.equal(torch.rand(3), expected_torch) and random.random() == expected_py


def test_crash_between_renames_falls_back_to_old_resume(tiny, tmp_path):
    from bardterm.training import checkpoint as ckpt

    model, tokenizer, optimizer = tiny
    run = tmp_path / "run"
    ckpt.save_resume(run, model, optimizer, {"step": 3})
    os.rename(run / "resume", run / ".resume.old")  # as if killed after the first rename of a swap
    assert ckpt.resume_dir(run) == run / ".resume.old"
    assert ckpt.read_resume_state(run)["step"] == 3
