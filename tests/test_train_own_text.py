"""Fine-tuning on your own text from a checkpoint stored in float16 (as the shipped one is): training keeps
float32 master weights, so Adam does not diverge, and the loss goes down on the user's text."""

from __future__ import annotations

import json

from conftest import make_gpt2, make_tokenizer


def test_fine_tune_a_float16_checkpoint_on_own_text(tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    from bardterm.cli import main

    tokenizer = make_tokenizer()
    base = tmp_path / "fp16-base"
    make_gpt2(tokenizer, n_layer=1).half().save_pretrained(base)
    tokenizer.save_pretrained(base)
    assert load_file(str(base / "model.safetensors"))["transformer.h.0.attn.c_attn.weight"].dtype == torch.float16

    own = tmp_path / "my_text.txt"
    own.write_text("The quick brown fox jumps over the lazy dog, and the dog sleeps on.\n" * 200)
    out = tmp_path / "mine"
    assert main(["train", "--base", str(base), "--dataset", str(own), "--output", str(out), "--block-size", "32",
                 "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "0", "--max-steps", "12",
                 "--eval-interval", "4", "--log-interval", "1", "--no-progress"]) == 0
    logged = [float(line.split(" loss ")[1].split()[0]) for line in capsys.readouterr().out.splitlines()
              if line.startswith("step ")]
    assert len(logged) == 12 and sum(logged[-3:]) < sum(logged[:3]) - 0.5
    meta = json.loads((out / "bardterm.json").read_text())
    vals = [m["val_loss"] for m in meta["metrics"]]
    assert vals[-1] < vals[0]
    # the master weights are float32 (the resume state holds them exactly), and the tokenizer is the base's
    assert load_file(str(out / "resume" / "model.safetensors"))["transformer.h.0.attn.c_attn.weight"].dtype == torch.float32
    assert (out / "tokenizer.json").read_text() == (base / "tokenizer.json").read_text()
