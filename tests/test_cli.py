"""`bardterm generate`, `decoders` and `plugins` as a user runs them: output, errors, and plugin flags."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from bardterm import plugins
from bardterm.cli import main
from bardterm.decoders.base import Processor
from bardterm.engine import generate
from bardterm.hookspecs import hookimpl
from bardterm.params import Param
from bardterm.registry import build


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("bardterm: error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0]


class ForceToken(Processor):
    """A test processor: every token but `token_id` is ruled out."""

    name = "force_token"
    help = "Force one token id."
    params = (Param("token_id", int, 0, "The token to force.", min=0),)

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, -float("inf"))
        forced[:, self.token_id] = 0.0
        return forced


class Explodes(Processor):
    name = "explodes"
    help = "Raises on its first step."

    def __call__(self, input_ids, scores):
        raise RuntimeError("kaboom")


@pytest.fixture
def test_plugin(register_plugin):
    """A plugin module registered the way an installed one would be, for the length of one test."""
    module = types.ModuleType("test_plugin")

    @hookimpl
    def register_decoders(register):
        register(ForceToken)
        register(Explodes)

    module.register_decoders = register_decoders
    register_plugin(module, "test_plugin")
    return module


def test_generate_streams_text_and_reports_stats(capsys, tiny_checkpoint, tokenizer, gpt2):
    code, out, err = run(capsys, "generate", "To be, or not to be", "--checkpoint", str(tiny_checkpoint),
                         "--decoder", "greedy", "--max-new-tokens", "12")
    assert code == 0
    expected = generate(gpt2, tokenizer, "To be, or not to be", build("greedy"), max_new_tokens=12)
    assert out == expected.text + "\n"
    assert "12 tokens" in err and "tokens/s" in err and "first after" in err


def test_generate_json_has_text_tokens_and_stats(capsys, tiny_checkpoint):
    code, out, _ = run(capsys, "generate", "ROMEO:", "--checkpoint", str(tiny_checkpoint), "--json",
                       "--decoder", "sample", "--seed", "7", "--top-k", "5", "--max-new-tokens", "9")
    assert code == 0
    data = json.loads(out)
    assert len(data["token_ids"]) == data["stats"]["tokens"] == 9
    assert data["decoder"] == "top_k=5 → sample"
    assert data["stats"]["tokens_per_s"] > 0 and data["stats"]["ttft_s"] is not None
    again = json.loads(run(capsys, "generate", "ROMEO:", "--checkpoint", str(tiny_checkpoint), "--json",
                           "--decoder", "sample", "--seed", "7", "--top-k", "5", "--max-new-tokens", "9")[1])
    assert again["token_ids"] == data["token_ids"]  # same seed, same text


def test_generate_logprobs_match_a_forward_pass(capsys, tiny_checkpoint, tokenizer, gpt2):
    """--logprobs N: each token's log-probability after the chain (here temperature 0.5, top_k 6) and its top N
    alternatives, checked against the model's logits for the same text, scaled and filtered by hand."""
    argv = ["generate", "ROMEO:", "--checkpoint", str(tiny_checkpoint), "--json", "--decoder", "sample", "--seed",
            "3", "--temperature", "0.5", "--top-k", "6", "--max-new-tokens", "6"]
    code, out, _ = run(capsys, *argv, "--logprobs", "3")
    data = json.loads(out)
    assert code == 0 and len(data["logprobs"]) == 6
    assert [t["id"] for t in data["logprobs"]] == data["token_ids"]
    prompt = tokenizer("ROMEO:")["input_ids"]
    with torch.no_grad():
        logits = gpt2(torch.tensor([prompt + data["token_ids"]])).logits[0, len(prompt) - 1:-1]
    scaled = logits / 0.5
    kth = scaled.topk(6, dim=-1).values[:, -1:]
    expected = torch.log_softmax(scaled.masked_fill(scaled < kth, -float("inf")), dim=-1)
    for step, token in enumerate(data["logprobs"]):
        assert token["logprob"] == pytest.approx(float(expected[step, token["id"]]), abs=1e-4)
        assert token["text"] == tokenizer.decode([token["id"]])
        best = expected[step].topk(3)
        assert [alt["id"] for alt in token["top"]] == best.indices.tolist()
        assert [alt["logprob"] for alt in token["top"]] == pytest.approx(best.values.tolist(), abs=1e-4)
    plain = json.loads(run(capsys, *argv)[1])
    assert "logprobs" not in plain and plain["token_ids"] == data["token_ids"]  # without the flag: as before
    code, _, err = run(capsys, *argv, "--logprobs", "0")
    assert_one_line_error(code, err, "--logprobs")


def test_generate_reads_prompt_from_stdin(capsys, monkeypatch, tiny_checkpoint, tokenizer, gpt2):
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(read=lambda: "JULIET:"))
    code, out, _ = run(capsys, "generate", "-", "--checkpoint", str(tiny_checkpoint), "--decoder", "greedy",
                       "--max-new-tokens", "5", "--json")
    assert code == 0
    assert json.loads(out)["prompt"] == "JULIET:"
    assert json.loads(out)["text"] == generate(gpt2, tokenizer, "JULIET:", build("greedy"), max_new_tokens=5).text


def test_generate_cuts_at_stop_string(capsys, tiny_checkpoint, tokenizer, test_plugin):
    token = tokenizer.encode("ROMEO")
    assert len(token) == 1
    # "ROMEOROMEO...": the stop string "EOR" spans two tokens; output stops right before it.
    code, out, err = run(capsys, "generate", "x", "--checkpoint", str(tiny_checkpoint), "--decoder", "greedy",
                         "--token-id", str(token[0]), "--stop", "EOR", "--max-new-tokens", "20")
    assert code == 0
    assert out == "ROM\n"
    assert "2 tokens" in err and "stopped: stop" in err


def test_generate_neutralises_escape_sequences(capsys, tiny_checkpoint, tokenizer, test_plugin):
    escape = tokenizer.encode("\x1b")
    assert len(escape) == 1
    code, out, _ = run(capsys, "generate", "x", "--checkpoint", str(tiny_checkpoint), "--decoder", "greedy",
                       "--token-id", str(escape[0]), "--max-new-tokens", "3")
    assert code == 0
    assert "\x1b" not in out
    assert out == "\\x1b" * 3 + "\n"


def test_plugin_parameters_are_flags_and_listed(capsys, test_plugin):
    code, out, _ = run(capsys, "decoders")
    assert code == 0
    for name in ("greedy", "sample", "beam", "temperature", "top_k", "top_p", "repetition_penalty",
                 "force_token", "creative", "--token-id", "test_plugin"):
        assert name in out
    assert out.count("runs with") == 2  # greedy's and beam's default repetition penalty
    code, out, _ = run(capsys, "plugins")
    assert code == 0
    assert "test_plugin" in out and "register_decoders" in out


def test_missing_checkpoint_is_one_clear_line(capsys, tmp_path):
    code, _, err = run(capsys, "generate", "hi", "--checkpoint", str(tmp_path / "nope"))
    assert_one_line_error(code, err, "does not exist", "--checkpoint")


def test_directory_that_is_not_a_model(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    code, _, err = run(capsys, "generate", "hi", "--checkpoint", str(tmp_path))
    assert_one_line_error(code, err, "not a model directory")


def test_corrupt_safetensors(capsys, tmp_path, tiny_checkpoint):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, _, err = run(capsys, "generate", "hi", "--checkpoint", str(broken))
    assert_one_line_error(code, err, "corrupt", "model.safetensors")


def test_corrupt_config(capsys, tmp_path, tiny_checkpoint):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "config.json").write_text('{"model_type": "gpt2", ')
    code, _, err = run(capsys, "generate", "hi", "--checkpoint", str(broken))
    assert_one_line_error(code, err, "config.json", "corrupt")


def test_pickled_weights_are_refused_naming_the_flag(capsys, tmp_path, tiny_checkpoint):
    import shutil

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_checkpoint, pickled)
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    code, _, err = run(capsys, "generate", "hi", "--checkpoint", str(pickled))
    assert_one_line_error(code, err, "pickled", "--allow-pickle")


def test_remote_code_is_refused_naming_the_flag(capsys, tmp_path, tiny_checkpoint):
    import shutil

    remote = tmp_path / "remote"
    shutil.copytree(tiny_checkpoint, remote)
    config = json.loads((remote / "config.json").read_text())
    config.update(model_type="mystery", auto_map={"AutoModelForCausalLM": "modeling_mystery.MysteryModel"})
    (remote / "config.json").write_text(json.dumps(config))
    code, _, err = run(capsys, "generate", "hi", "--checkpoint", str(remote))
    assert_one_line_error(code, err, "--trust-remote-code")


@pytest.mark.parametrize(("flags", "fragments"), [
    (["--decoder", "nonsense"], ["unknown decoder 'nonsense'", "bardterm decoders"]),
    (["--temperature", "0"], ["temperature=0", "greedy"]),
    (["--top-p", "1.5"], ["top_p=1.5", "<= 1"]),
    (["--top-k", "many"], ["top_k=many", "integer"]),
    (["--num-beams", "1"], ["num_beams=1", ">= 2"]),
    (["--max-new-tokens", "0"], ["invalid max_new_tokens=0: must be an integer >= 1"]),
    (["--min-new-tokens", "5", "--max-new-tokens", "4"], ["min_new_tokens=5", "at most max_new_tokens (4)"]),
    (["--frobnicate", "3"], ["--frobnicate"]),
    (["--chain", "greedy"], ["not a processor"]),
])
def test_invalid_parameters_are_refused_before_loading(capsys, tmp_path, flags, fragments):
    # The checkpoint does not exist: a parameter error must come first, before any model work.
    code, _, err = run(capsys, "generate", "hi", "--checkpoint", str(tmp_path / "absent"), *flags)
    assert_one_line_error(code, err, *fragments)


def test_plugin_file_that_fails_to_import(capsys, tmp_path):
    broken = tmp_path / "broken_plugin.py"
    broken.write_text("import no_such_module_anywhere\n")
    code, _, err = run(capsys, "generate", "hi", "--plugin", str(broken))
    assert_one_line_error(code, err, "broken_plugin.py", "failed to import", "no_such_module_anywhere")


def test_plugin_that_raises_mid_generation(capsys, tiny_checkpoint, test_plugin):
    code, _, err = run(capsys, "generate", "hi", "--checkpoint", str(tiny_checkpoint), "--chain", "explodes",
                       "--decoder", "greedy")
    assert_one_line_error(code, err, "explodes", "kaboom")


@pytest.mark.parametrize("before_subcommand", [False, True])
def test_plugin_loaded_from_file_is_usable(capsys, tmp_path, tiny_checkpoint, tokenizer, before_subcommand):
    plugin = tmp_path / "shout.py"
    plugin.write_text(
        "import torch\n"
        "from bardterm.decoders.base import Processor\n"
        "from bardterm.hookspecs import hookimpl\n"
        "class OnlyE(Processor):\n"
        "    name = 'only_e'\n"
        "    help = 'Only the letter e.'\n"
        f"    def __call__(self, input_ids, scores):\n"
        f"        out = torch.full_like(scores, -float('inf')); out[:, {tokenizer.encode('e')[0]}] = 0; return out\n"
        "@hookimpl\n"
        "def register_decoders(register):\n"
        "    register(OnlyE)\n")
    try:
        flags = ["--plugin", str(plugin)]
        argv = [*flags, "generate", "x"] if before_subcommand else ["generate", "x", *flags]
        code, out, _ = run(capsys, *argv, "--checkpoint", str(tiny_checkpoint), "--decoder", "only_e",
                           "--max-new-tokens", "4")
    finally:
        plugins.pm.unregister(name="shout")
    assert code == 0
    assert out == "eeee\n"
