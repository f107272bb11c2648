"""`bardterm train`: tiny runs end to end, exact resume, checkpoint layout, plain-transformers loading, bad input.

Every run here is a tiny GPT-2 (2 layers, width 32, BPE vocab 300, block 32) on a 60,000-character slice of
tiny_shakespeare written to a temporary file, so the whole module runs in well under a minute on 2 cores and
nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest


from bardterm.errors import BardtermError

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "tiny_shakespeare" / "input.txt"

TINY = ["--base", "scratch", "--preset", "tiny", "--n-layer", "2", "--n-head", "2", "--n-embd", "32",
        "--vocab-size", "300", "--block-size", "32", "--batch-size", "4", "--eval-batch-size", "64",
        "--no-progress", "--log-interval", "1000", "--warmup-steps", "5"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    if not CORPUS.is_file():
        pytest.skip(f"tiny_shakespeare test copy not found at {CORPUS}")
    path = tmp_path_factory.mktemp("data") / "shakespeare60k.txt"
    path.write_text(CORPUS.read_text()[:60_000])
    return path


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("BARDTERM_TINY_SHAKESPEARE", str(CORPUS))


def cli(*argv: str) -> int:
    from bardterm.cli import main

    return main([str(a) for a in argv])


def train_args(text_file, out, *extra):
    return ["train", "--dataset", text_file, "--output", out, *TINY, *extra]


@pytest.fixture(scope="module")
def trained(text_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "trained"
    from bardterm.cli import main

    os.environ["HF_HUB_OFFLINE"] = "1"
    assert main([str(a) for a in train_args(text_file, out, "--max-steps", "40", "--eval-interval", "20")]) == 0
    return out


# ------------------------------------------------------------------------------------------- end to end


def test_checkpoint_layout_and_metadata(trained):
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "bardterm.json", "loss.png"):
        assert (trained / name).is_file(), name
    for sub in ("last", "resume"):
        assert (trained / sub).is_dir()
    assert (trained / "last" / "model.safetensors").is_file()
    assert {p.name for p in (trained / "resume").iterdir()} == {
        "model.safetensors", "optimizer.safetensors", "rng.safetensors", "trainer_state.json"}
    everything = [p for p in trained.rglob("*") if p.is_file()]
    assert not [p for p in everything if p.suffix in (".pt", ".bin", ".pkl", ".pth", ".tmp")]
    assert not [p for p in trained.rglob(".*")], "staging leftovers"
    assert (trained / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    meta = json.loads((trained / "bardterm.json").read_text())
    assert meta["bardterm_version"]
    assert meta["dataset"]["name"] == "shakespeare60k.txt" and len(meta["dataset"]["sha256"]) == 64
    assert meta["base"] == "scratch"
    cfg = meta["config"]
    for key in ("lr", "batch_size", "dropout", "optimizer", "weight_decay", "warmup_steps", "seed", "block_size"):
        assert key in cfg
    assert [m["step"] for m in meta["metrics"]] == [20, 40]
    best = meta["best"]
    assert best["val_loss"] == min(m["val_loss"] for m in meta["metrics"])
    assert math.isclose(best["bits_per_char"], best["nats_per_char"] / math.log(2))
    assert meta["wall_time_s"] > 0 and meta["hardware"]["cpu_count"] >= 1
    assert meta["finished"]["step"] == 40


def test_loads_in_plain_transformers_with_same_greedy_output(trained):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(trained)
    tokenizer = AutoTokenizer.from_pretrained(trained)
    ids = tokenizer("ROMEO:", return_tensors="pt").input_ids
    with torch.no_grad():
        plain = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id,
                               eos_token_id=None)[0, ids.shape[1]:].tolist()
    assert len(plain) == 12

    from bardterm import engine
    from bardterm.registry import build
    from bardterm.training.checkpoint import load_model

    ours_model, ours_tok = load_model(trained)
    result = engine.generate(ours_model, ours_tok, "ROMEO:", build("greedy", chain=[]), max_new_tokens=12)
    # The engine may stop at <|endoftext|>; compare the common prefix, which must be non-trivial.
    n = len(result.token_ids)
    assert n >= 1 and result.token_ids == plain[:n]


def test_best_is_lowest_validation_and_eval_agrees(trained, capsys):
    meta = json.loads((trained / "bardterm.json").read_text())
    capsys.readouterr()
    assert cli("eval", "--checkpoint", trained, "--dataset", meta["dataset"]["source"], "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert math.isclose(out["splits"]["validation"]["loss"], meta["best"]["val_loss"], rel_tol=1e-5)


def test_the_weight_average_follows_the_weights_with_a_warming_decay():
    import torch

    from bardterm.training.average import WeightAverage

    model = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False))
    model[1].weight = model[0].weight  # tied, as GPT-2's head and embedding are
    average = WeightAverage(model, decay=0.9)
    start = model[0].weight.detach().clone()
    assert average.model[1].weight is average.model[0].weight and not average.model[0].weight.requires_grad
    with torch.no_grad():
        model[0].weight.add_(1.0)
    average.update()  # first update: decay min(0.9, 2/11)
    expected = start + (1 - 2 / 11) * 1.0
    assert torch.allclose(average.model[0].weight, expected)
    for n in range(2, 200):
        average.update()
        expected = expected + (1 - min(0.9, (1 + n) / (10 + n))) * (start + 1.0 - expected)
    assert torch.allclose(average.model[0].weight, expected) and torch.allclose(expected, start + 1.0, atol=1e-6)
    assert torch.equal(model[0].weight, start + 1.0)  # the model itself is untouched


def test_with_a_weight_average_the_average_is_what_is_evaluated_and_saved(text_file, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "ema"
    assert cli(*train_args(text_file, out, "--max-steps", "12", "--eval-interval", "6", "--ema", "0.9")) == 0
    meta = json.loads((out / "bardterm.json").read_text())
    best, trained = load_file(str(out / "model.safetensors")), load_file(str(out / "resume" / "model.safetensors"))
    assert meta["config"]["ema"] == 0.9 and json.loads((out / "resume" / "trainer_state.json").read_text())["ema_updates"] == 12
    if meta["best"]["step"] == 12:  # the average at the last step is not the weights at the last step
        assert any(not torch.equal(best[k], trained[k]) for k in best)
    assert load_file(str(out / "resume" / "average.safetensors")).keys() == trained.keys()
    capsys.readouterr()
    assert cli("eval", "--checkpoint", out, "--dataset", text_file, "--json") == 0
    measured = json.loads(capsys.readouterr().out)["splits"]["validation"]["loss"]
    assert math.isclose(measured, meta["best"]["val_loss"], rel_tol=1e-5)  # the saved model is the one evaluated


@pytest.mark.parametrize("average", [[], ["--ema", "0.8"], ["--bpe-dropout", "0.2"], ["--optimizer", "muon"],
                                     ["--rename-speakers", "0.5"]],
                         ids=["weights", "weight-average", "bpe-dropout", "muon", "rename-speakers"])
def test_interrupted_and_resumed_run_equals_uninterrupted(text_file, tmp_path, capsys, average):
    """Ctrl+C at step 7 (mid-epoch, between evaluations), then --resume, ends with the same weights and
    prints the same log: the loss on the first line after the resume still averages the whole interval."""
    import torch
    from safetensors.torch import load_file

    from bardterm.training import loop
    from bardterm.training.cli import config_from_args
    from bardterm.cli import build_parser

    extra = ["--max-steps", "16", "--eval-interval", "6", "--grad-accum", "2", "--dropout", "0.2", "--log-interval", "4",
             *average]

    def logged() -> list[str]:  # the step and evaluation lines, without the timings
        lines = capsys.readouterr().out.splitlines()
        return [re.sub(r" [\d,.]+ tok/s.*", "", line) for line in lines if line.startswith(("step ", "eval step "))]

    def config(out):
        args = build_parser().parse_args([str(a) for a in train_args(text_file, out, *extra)])
        return config_from_args(args)

    capsys.readouterr()
    assert loop.train(config(tmp_path / "a"), show_progress=False) == 0
    log_a = logged()

    def ctrl_c(step):
        if step == 7:
            signal.raise_signal(signal.SIGINT)

    assert loop.train(config(tmp_path / "b"), show_progress=False, on_step=ctrl_c) == 130
    state = json.loads((tmp_path / "b" / "resume" / "trainer_state.json").read_text())
    assert state["step"] == 7
    assert cli(*train_args(text_file, tmp_path / "b", "--resume", "--log-interval", "4")) == 0
    log_b = logged()
    assert len(log_a) == 16 // 4 + 16 // 6 + 1 and log_b == log_a

    for saved in ("last/model.safetensors", "resume/model.safetensors", "model.safetensors"):  # last, raw, best
        a, b = (load_file(str(tmp_path / run / saved)) for run in "ab")
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (saved, key)
    a = load_file(str(tmp_path / "a" / "last" / "model.safetensors"))
    ma = json.loads((tmp_path / "a" / "bardterm.json").read_text())["metrics"]
    mb = json.loads((tmp_path / "b" / "bardterm.json").read_text())["metrics"]
    assert [m["val_loss"] for m in ma] == [m["val_loss"] for m in mb]
    # And the test can fail: a different seed gives different weights.
    assert cli(*train_args(text_file, tmp_path / "c", *extra[2:], "--max-steps", "16", "--seed", "7")) == 0
    c = load_file(str(tmp_path / "c" / "last" / "model.safetensors"))
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_refuses_changed_hyperparameters_and_missing_state(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(*train_args(text_file, out, "--max-steps", "4", "--eval-interval", "2")) == 0
    capsys.readouterr()
    assert cli(*train_args(text_file, out, "--resume", "--lr", "0.5")) == 2
    assert "--lr differ" in capsys.readouterr().err
    state_file = out / "resume" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["config"]["ema"]  # as a run saved before --ema existed: it ran without one
    state_file.write_text(json.dumps(state))
    assert cli(*train_args(text_file, out, "--resume", "--ema", "0.9")) == 2
    assert "--ema differ" in capsys.readouterr().err
    assert cli(*train_args(text_file, tmp_path / "empty", "--resume")) == 2
    assert "nothing to resume" in capsys.readouterr().err
    # Extending a finished run is allowed.
    assert cli(*train_args(text_file, out, "--resume", "--max-steps", "6")) == 0
    assert json.loads((out / "resume" / "trainer_state.json").read_text())["step"] == 6


def test_early_stopping(text_file, tmp_path):
    out = tmp_path / "early"
    # min_delta 100 means no evaluation after the first can count as an improvement.
    assert cli(*train_args(text_file, out, "--max-steps", "50", "--eval-interval", "3", "--patience", "2",
                           "--min-delta", "100")) == 0
    meta = json.loads((out / "bardterm.json").read_text())
    assert [m["step"] for m in meta["metrics"]] == [3, 6, 9]
    assert meta["finished"] == {"step": 9, "early_stopped": True}


def test_lion_optimizer_defaults(text_file, tmp_path):
    from bardterm.training.recipes import DEFAULTS, LION_LR_FACTOR, LION_WD_FACTOR, resolve

    adamw = resolve({"base": "scratch"})
    lion = resolve({"base": "scratch", "optimizer": "lion"})
    assert 3 <= adamw["lr"] / lion["lr"] <= 10 and math.isclose(lion["lr"], adamw["lr"] * LION_LR_FACTOR)
    assert 3 <= lion["weight_decay"] / adamw["weight_decay"] <= 10
    assert math.isclose(lion["weight_decay"], adamw["weight_decay"] * LION_WD_FACTOR)
    assert resolve({"base": "scratch", "optimizer": "lion", "lr": 0.01})["lr"] == 0.01
    out = tmp_path / "lion"
    assert cli(*train_args(text_file, out, "--optimizer", "lion", "--max-steps", "3", "--eval-interval", "3")) == 0
    meta = json.loads((out / "bardterm.json").read_text())
    assert meta["config"]["optimizer"] == "lion" and math.isfinite(meta["best"]["val_loss"])


def test_recipe_with_flag_override(text_file, tmp_path):
    from bardterm.cli import build_parser
    from bardterm.training.cli import config_from_args

    recipe = tmp_path / "r.toml"
    recipe.write_text('base = "scratch"\nlr = 0.002\n[model]\nn_layer = 3\n[schedule]\nmax_steps = 9\n')
    args = build_parser().parse_args(["train", "--recipe", str(recipe), "--lr", "0.003"])
    config = config_from_args(args)
    assert (config["lr"], config["n_layer"], config["max_steps"], config["base"]) == (0.003, 3, 9, "scratch")
    (tmp_path / "bad.toml").write_text("learning_rate = 1\n")
    with pytest.raises(BardtermError, match="unknown key"):
        config_from_args(build_parser().parse_args(["train", "--recipe", str(tmp_path / "bad.toml")]))
    for shipped in sorted((REPO / "train").rglob("*.toml")):  # the recipes to start from, and trials/
        config_from_args(build_parser().parse_args(["train", "--recipe", str(shipped)]))


def test_lr_schedule_and_data_order():
    import torch

    from bardterm.training.batches import BlockStream
    from bardterm.training.loop import lr_at

    lrs = [lr_at(s, 100, 1.0, 10, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] == pytest.approx(0.1, abs=1e-3)

    ids = torch.arange(1000)
    s1, s2 = BlockStream(ids, 16, 3), BlockStream(ids, 16, 3)
    assert s1.starts(5, 20) == s2.starts(5, 20)
    epoch0 = s1.starts(0, s1.n_blocks)
    assert len(set(epoch0)) == s1.n_blocks  # every block once per epoch
    x, y = s1.batch(0, 4)
    assert torch.equal(x[:, 1:], y[:, :-1]) and x.shape == (4, 16)
    assert BlockStream(ids, 16, 4).starts(0, 10) != epoch0[:10]


# -------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("flags, message", [
    (["--lr", "-1"], "invalid --lr"),
    (["--dropout", "1.5"], "invalid --dropout"),
    (["--batch-size", "0"], "invalid --batch-size"),
    (["--n-embd", "33"], "divisible by --n-head"),
    (["--max-steps", "0"], "invalid --max-steps"),
    (["--epochs", "-2"], "invalid --epochs"),
    (["--vocab-size", "100"], "invalid --vocab-size"),
    (["--warmup-steps", "-1"], "invalid --warmup-steps"),
    (["--ema", "1"], "invalid --ema"),
    (["--bpe-dropout", "1"], "invalid --bpe-dropout"),
    (["--attn-dropout", "-0.1"], "invalid --attn-dropout"),
    (["--rename-speakers", "0.5", "--rename-epochs", "-1"], "invalid --rename-epochs"),
])
def test_invalid_hyperparameters(text_file, tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    assert cli(*train_args(text_file, out, *flags)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_bad_datasets_write_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    cases = {
        "tiny_shakespear": "unknown dataset",
        str(tmp_path / "missing.txt"): "does not exist",
        str(tmp_path / "empty.txt"): "is empty",
        str(tmp_path / "latin1.txt"): "not UTF-8",
        str(tmp_path / "short.txt"): "too short",
    }
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("Ça va? Très bien.\n".encode("latin-1") * 20)
    (tmp_path / "short.txt").write_text("To be, or not to be, that is the question.\n" * 3)
    for spec, message in cases.items():
        args = train_args(spec, out)
        args[args.index("--block-size") + 1] = "64"
        assert cli(*args) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (spec, err)
        assert not out.exists(), spec


def test_existing_output_refused_unless_overwrite(text_file, tmp_path, capsys):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli(*train_args(text_file, out, "--max-steps", "2")) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert cli(*train_args(text_file, out, "--max-steps", "2", "--eval-interval", "2", "--overwrite")) == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_unwritable_output_is_one_line(text_file, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    out = blocker / "run"
    assert cli(*train_args(text_file, out, "--max-steps", "2")) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot write to output directory" in err or "not a directory" in err
    assert len(err.splitlines()) == 1
    if os.geteuid() != 0:  # root writes anywhere; the file-as-parent case above covers it
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            assert cli(*train_args(text_file, ro / "run", "--max-steps", "2")) == 2
            assert "cannot write" in capsys.readouterr().err
        finally:
            ro.chmod(0o700)


def test_unreachable_base_names_the_fix(text_file, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    result = subprocess.run(
        [sys.executable, "-m", "bardterm", "train", "--dataset", str(text_file), "--base",
         "no-such-owner/no-such-model", "--output", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 2
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and "--base scratch" in err and "no-such-owner/no-such-model" in err
    assert not (tmp_path / "out").exists()


def test_fine_tune_a_local_base_directory(trained, text_file, tmp_path):
    """--base DIR fine-tunes an existing checkpoint with its own tokenizer (here: the tiny scratch run)."""
    out = tmp_path / "ft"
    assert cli("train", "--dataset", text_file, "--base", trained, "--output", out, "--max-steps", "3",
               "--eval-interval", "3", "--batch-size", "4", "--block-size", "32", "--no-progress") == 0
    meta = json.loads((out / "bardterm.json").read_text())
    assert meta["base"] == str(trained) and meta["derived"]["vocab_size"] == 300
    assert (out / "tokenizer.json").read_text() == (trained / "tokenizer.json").read_text()
    assert cli("train", "--dataset", text_file, "--base", tmp_path / "missing-dir", "--output", tmp_path / "x") == 2
    assert not (tmp_path / "x").exists()


def test_bf16_mixed_precision_on_cpu(text_file, tmp_path):
    out = tmp_path / "bf16"
    assert cli(*train_args(text_file, out, "--mixed-precision", "bf16", "--max-steps", "2",
                           "--eval-interval", "2")) == 0
    meta = json.loads((out / "bardterm.json").read_text())
    assert meta["derived"]["mixed_precision"] == "bf16" and math.isfinite(meta["best"]["val_loss"])


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_native_bf16_says_how_to_avoid_it(text_file, tmp_path, capsys, monkeypatch, native):
    import torch

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert cli(*train_args(text_file, tmp_path / "run", "--mixed-precision", "bf16", "--max-steps", "1",
                           "--eval-interval", "1")) == 0
    said = capsys.readouterr().out
    assert ("no native bf16" in said and "--mixed-precision no" in said) is not native


def test_attention_dropout_and_activation_reach_the_model(trained, text_file, tmp_path):
    import torch
    from transformers.activations import ACT2FN

    # By default attention dropout is --dropout and the activation GPT-2's, as every run before the flags.
    default = json.loads((trained / "config.json").read_text())
    assert default["attn_pdrop"] == default["resid_pdrop"] and default["activation_function"] == "gelu_new"

    out = tmp_path / "fast"
    assert cli(*train_args(text_file, out, "--dropout", "0.3", "--attn-dropout", "0",
                           "--activation", "gelu_pytorch_tanh", "--max-steps", "2", "--eval-interval", "2")) == 0
    fast = json.loads((out / "config.json").read_text())
    assert (fast["attn_pdrop"], fast["resid_pdrop"], fast["embd_pdrop"]) == (0.0, 0.3, 0.3)
    assert fast["activation_function"] == "gelu_pytorch_tanh"
    assert json.loads((out / "bardterm.json").read_text())["config"]["attn_dropout"] == 0.0
    # The fused activation is the same function as gelu_new, in one kernel.
    x = torch.linspace(-6, 6, 10_001)
    torch.testing.assert_close(ACT2FN["gelu_pytorch_tanh"](x), ACT2FN["gelu_new"](x), atol=1e-6, rtol=1e-5)


def test_a_run_saved_before_attn_dropout_resumes_with_its_dropout(text_file, tmp_path):
    from bardterm.training.build import attn_dropout

    out = tmp_path / "run"
    assert cli(*train_args(text_file, out, "--dropout", "0.25", "--max-steps", "2", "--eval-interval", "2")) == 0
    state_file = out / "resume" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["config"]["attn_dropout"], state["config"]["activation"]  # as saved before the flags existed
    state_file.write_text(json.dumps(state))
    assert attn_dropout(state["config"]) == 0.25
    assert cli(*train_args(text_file, out, "--resume", "--max-steps", "4")) == 0
    config = json.loads((out / "last" / "config.json").read_text())
    assert config["attn_pdrop"] == 0.25 and config["activation_function"] == "gelu_new"


def test_resume_refuses_a_different_dataset(text_file, tmp_path, capsys):
    data = tmp_path / "data.txt"
    data.write_text(text_file.read_text())
    out = tmp_path / "run"
    assert cli(*train_args(data, out, "--max-steps", "2", "--eval-interval", "2")) == 0
    data.write_text(text_file.read_text().replace("e", "a"))  # same path, different text
    capsys.readouterr()
    assert cli(*train_args(data, out, "--resume", "--max-steps", "4")) == 2
    assert "cannot resume exactly" in capsys.readouterr().err
    assert cli(*train_args(text_file, out, "--resume", "--max-steps", "4")) == 2
    assert "--dataset differ" in capsys.readouterr().err


def load_train_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "train" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_card_reports_the_eval_figures_and_every_built_in_decoder(trained, text_file, tmp_path, monkeypatch):
    """train/model_card.py, with its `bardterm` subprocesses run in-process so it takes seconds, not minutes."""
    import contextlib
    import io
    import shutil

    from bardterm.registry import get_registry

    model_card = load_train_script("model_card")

    def in_process(*args: str) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert cli(*args) == 0
        return out.getvalue()

    monkeypatch.setattr(model_card, "bardterm", in_process)
    trained = shutil.copytree(trained, tmp_path / "run")  # the card is written into the folder; keep the fixture's clean
    command = f"bardterm train --dataset {text_file} --output {trained}"
    monkeypatch.setattr(sys, "argv", ["model_card.py", str(trained), "--recipe", "train/smoke.toml", "--command",
                                      command, "--notes", "**Reproducibility.** Twin."])
    model_card.main()

    card = (trained / "README.md").read_text()
    figures = json.loads(in_process("eval", "--checkpoint", trained, "--dataset", text_file, "--split", "all",
                                    "--json"))["splits"]
    assert set(figures) == {"validation", "test", "valtest"}
    for split, m in figures.items():
        row = f"| {split} | {m['chars']:,} | {m['tokens']:,} | {m['loss']:.4f} |"
        assert row in card and f"{m['nats_per_char']:.4f} | {m['bits_per_char']:.4f} |" in card
    assert f"    {command}\n" in card and "`train/smoke.toml`" in card and "**Reproducibility.** Twin." in card
    assert re.search(r"Weights: `model.safetensors`, \d+\.\d MB \(float32\)\.", card)
    meta = json.loads((trained / "bardterm.json").read_text())
    tied = "tied" if meta["config"]["tie_weights"] else "untied"
    assert f"{tied} embeddings) with a" in card and f"training split of {meta['dataset']['name']} (sha256" in card
    assert "tiny_shakespeare" not in meta["dataset"]["name"]  # the fixture trains on a file: the card names it
    assert f"step {meta['best']['step']} of 40" in card
    decoders = get_registry().built_ins()
    assert len(decoders) >= 6
    for decoder in decoders:
        assert re.search(rf"^\| {decoder} \| `[^`]+` \| \d\.\d\d \| (yes|no) \|$", card, re.M), decoder
        assert card.count(f"**{decoder}** (`") == 2  # one sample per prompt
    assert card.count("```\nTo be, or not to be") == len(decoders) and card.count("```\nROMEO:") == len(decoders)
    assert not list(trained.glob("*.tmp"))  # written to a temporary file, then renamed


def test_half_precision_copy_loads_in_float32_with_the_rounded_weights(trained, text_file, tmp_path, capsys):
    import hashlib
    import shutil

    import torch

    from bardterm.models import load_checkpoint

    half_precision = load_train_script("half_precision")
    trained = shutil.copytree(trained, tmp_path / "run")
    (trained / "README.md").write_text("the fp32 model's card")  # stale beside the copy: left behind
    before = hashlib.sha256((trained / "model.safetensors").read_bytes()).hexdigest()
    target = tmp_path / "ship" / "half"
    assert half_precision.main([str(trained), str(target)]) == 0
    assert hashlib.sha256((trained / "model.safetensors").read_bytes()).hexdigest() == before  # source untouched
    ratio = (target / "model.safetensors").stat().st_size / (trained / "model.safetensors").stat().st_size
    assert 0.49 < ratio < 0.51
    assert json.loads((target / "config.json").read_text())["dtype"] == "float16"
    assert {p.name for p in target.iterdir()} >= {"tokenizer.json", "bardterm.json", "generation_config.json"}
    assert not (target / "README.md").exists()
    assert [p.name for p in target.parent.iterdir()] == ["half"]  # no staging folder left behind

    full, half = load_checkpoint(trained, device="cpu"), load_checkpoint(target, device="cpu")
    full_params, half_params = dict(full.model.named_parameters()), dict(half.model.named_parameters())
    assert full_params.keys() == half_params.keys()
    for name, weight in full_params.items():
        assert half_params[name].dtype == torch.float32
        assert torch.equal(half_params[name], weight.detach().half().float()), name
    figures = []
    for checkpoint in (trained, target):
        capsys.readouterr()
        assert cli("eval", "--checkpoint", checkpoint, "--dataset", text_file, "--json") == 0
        figures.append(json.loads(capsys.readouterr().out)["splits"]["validation"]["nats_per_char"])
    assert figures[0] != figures[1] and abs(figures[0] - figures[1]) < 0.005


def test_half_precision_refuses_bad_input_and_writes_nothing(trained, tmp_path, capsys):
    half_precision = load_train_script("half_precision")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert half_precision.main([str(trained), str(existing)]) == 2
    assert "already exists" in capsys.readouterr().err and [p.name for p in existing.iterdir()] == ["keep.txt"]
    assert half_precision.main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err and not (tmp_path / "out").exists()
    with pytest.raises(BardtermError, match="use float16 or bfloat16"):
        half_precision.store(trained, tmp_path / "out", "int8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]
