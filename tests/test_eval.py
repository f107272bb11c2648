"""`bardterm eval`: the window plan, the per-token and per-character arithmetic, and the command's output."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "tiny_shakespeare" / "input.txt"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """An untrained tiny GPT-2 with a BPE trained on a slice of the corpus, saved like a run's checkpoint."""
    if not CORPUS.is_file():
        pytest.skip(f"tiny_shakespeare test copy not found at {CORPUS}")
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from bardterm.training.tokenizer import train_bpe

    tokenizer = train_bpe(CORPUS.read_text()[:50_000], 300, model_max_length=48)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=48, n_embd=32, n_layer=2, n_head=2,
                                       bos_token_id=0, eos_token_id=0))
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "bardterm.json").write_text(json.dumps({"config": {"block_size": 40}}))
    return out


def covered(plan):
    targets = []
    for start, end, score_from in plan:
        targets += list(range(start + 1 + score_from, end + 1))
    return targets


@pytest.mark.parametrize("n, block, stride", [(10, 4, None), (10, 4, 4), (10, 4, 1), (10, 4, 3), (3, 8, None),
                                              (3, 8, 2), (1, 1, None), (97, 16, 5), (64, 16, 8)])
def test_window_plan_scores_every_token_once(n, block, stride):
    from bardterm.training.evaluate import window_plan

    plan = window_plan(n, block, stride)
    assert covered(plan) == list(range(1, n + 1))
    assert all(0 < end - start <= block for start, end, _ in plan)
    if stride and stride < block:
        # Every scored target after the first window sees at least block - stride tokens of context.
        for start, end, score_from in plan[1:]:
            assert score_from >= block - stride or end - start < block


def reference_losses(model, seq, block, stride=None) -> list[float]:
    """Token-by-token reference: the loss of each target, its context the window the plan assigns it."""
    import torch
    import torch.nn.functional as F

    from bardterm.training.evaluate import window_plan

    losses = [0.0] * (len(seq) - 1)
    with torch.no_grad():
        for start, end, score_from in window_plan(len(seq) - 1, block, stride):
            for k in range(score_from, end - start):
                t = start + 1 + k
                logits = model(input_ids=seq[None, start:t]).logits[0, -1]
                losses[t - 1] = float(F.cross_entropy(logits[None], seq[t:t + 1]))
    return losses


@pytest.mark.parametrize("block, stride", [(40, None), (7, None), (8, 3)])
def test_evaluate_ids_matches_a_token_by_token_reference(tiny_checkpoint, block, stride):
    import torch

    from bardterm.training.checkpoint import load_model
    from bardterm.training.evaluate import evaluate_ids
    from bardterm.training.tokenizer import bos_id, encode

    model, tokenizer = load_model(tiny_checkpoint)
    text = "First Citizen:\nBefore we proceed any further, hear me speak."
    ids = encode(tokenizer, text)
    m = evaluate_ids(model, ids, len(text), block, bos=bos_id(tokenizer), batch_size=3, stride=stride, per_token=True)
    seq = torch.cat([torch.tensor([bos_id(tokenizer)]), ids])
    losses = reference_losses(model, seq, block, stride)
    ref = sum(losses)
    torch.testing.assert_close(m["token_nats"], torch.tensor(losses, dtype=torch.float64), rtol=1e-4, atol=1e-5)
    assert m["tokens"] == len(ids) and m["chars"] == len(text)
    assert m["total_nats"] == pytest.approx(ref, rel=1e-4)
    assert m["loss"] == pytest.approx(ref / len(ids), rel=1e-4)
    assert m["nats_per_char"] == pytest.approx(ref / len(text), rel=1e-4)
    assert m["bits_per_char"] == pytest.approx(m["nats_per_char"] / math.log(2))
    assert m["perplexity"] == pytest.approx(math.exp(m["loss"]))


def test_eval_command_prints_all_figures(tiny_checkpoint, capsys, monkeypatch):
    from bardterm.cli import main

    monkeypatch.setenv("BARDTERM_TINY_SHAKESPEARE", str(CORPUS))
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--dataset", "tiny_shakespeare", "--split", "valtest",
                 "--batch-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "loss/token" in out and "perplexity" in out and "nats/char" in out and "bits/char" in out
    assert "non-overlapping" in out and "block 40" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] and
            line.split()[0] in ("validation", "test", "valtest")}
    assert list(rows) == ["valtest"] and rows["valtest"][1] == "111540"
    for row in rows.values():
        loss, ppl, npc, bpc = map(float, row[3:7])
        assert ppl == pytest.approx(math.exp(loss), rel=1e-3)
        assert bpc == pytest.approx(npc / math.log(2), rel=1e-3)
        assert npc == pytest.approx(loss * int(row[2]) / int(row[1]), rel=1e-3)
    # An untrained model with a 300-token vocabulary: about ln(300) nats per token.
    assert float(rows["valtest"][3]) == pytest.approx(math.log(300), abs=0.3)

    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--split", "test", "--json", "--stride", "30",
                 "--batch-size", "64"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["splits"]["test"]["stride"] == 30 and result["splits"]["test"]["chars"] == 55770


def test_eval_names_the_costliest_tokens(tiny_checkpoint, capsys, monkeypatch):
    from bardterm.cli import main
    from bardterm.training.checkpoint import load_model
    from bardterm.training.evaluate import costliest_tokens, evaluate_ids
    from bardterm.training.tokenizer import bos_id, encode

    model, tokenizer = load_model(tiny_checkpoint)
    text = CORPUS.read_text()[:3000]
    ids = encode(tokenizer, text)
    m = evaluate_ids(model, ids, len(text), 40, bos=bos_id(tokenizer), batch_size=5, stride=7, per_token=True)
    assert float(m["token_nats"].sum()) == pytest.approx(m["total_nats"], rel=1e-9)

    rows = costliest_tokens(ids, m["token_nats"], tokenizer, 5)
    assert len(rows) == 5 and [r["nats"] for r in rows] == sorted((r["nats"] for r in rows), reverse=True)
    top = rows[0]
    assert top["token"] == tokenizer.decode([top["id"]]) and top["count"] == int((ids == top["id"]).sum())
    assert top["nats"] == pytest.approx(float(m["token_nats"][ids == top["id"]].sum()))
    assert top["share"] == pytest.approx(top["nats"] / m["total_nats"]) and top["mean"] * top["count"] == pytest.approx(top["nats"])

    monkeypatch.setenv("BARDTERM_TINY_SHAKESPEARE", str(CORPUS))
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--split", "test", "--worst", "3",
                 "--batch-size", "64"]) == 0
    out = capsys.readouterr().out
    table = out.split("test: the 3 tokens that cost the most in all")[1].strip().splitlines()
    assert table[0].split() == ["token", "count", "nats", "mean", "share"] and len(table) == 4
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--split", "test", "--worst", "2", "--json",
                 "--batch-size", "64"]) == 0
    result = json.loads(capsys.readouterr().out)["splits"]["test"]
    assert len(result["costliest"]) == 2 and "token_nats" not in result


def test_eval_bad_input(tiny_checkpoint, tmp_path, capsys):
    from bardterm.cli import main

    assert main(["eval", "--checkpoint", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--block-size", "999",
                 "--dataset", str(CORPUS)]) == 2
    assert "longer than the model's context" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--worst", "-1", "--dataset", str(CORPUS)]) == 2
    assert "invalid --worst" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--checkpoint", str(tiny_checkpoint), "--split", "dev"])
