"""`bardterm train --lora R`: a standard PEFT adapter folder that plain peft loads, in which only the adapter
changed; --merge; bardterm, generate and eval take the folder directly; resume; bad input."""

from __future__ import annotations

import json
import signal

import pytest

from conftest import make_gpt2, make_tokenizer

LORA = ["--lora", "4", "--lora-dropout", "0", "--lr", "3e-2", "--warmup-steps", "0", "--block-size", "32",
        "--batch-size", "8", "--max-steps", "12", "--eval-interval", "6", "--log-interval", "1", "--no-progress"]


def cli(*argv) -> int:
    from bardterm.cli import main

    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "tiny-base"
    import torch

    tokenizer = make_tokenizer()
    model = make_gpt2(tokenizer)
    with torch.no_grad():  # GPT-2's 0.02 init keeps a random model's logits near uniform whatever its hidden states
        model.transformer.wte.weight.mul_(25)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "mine.txt"
    path.write_text("The quick brown fox jumps over the lazy dog, and the dog sleeps on.\n" * 300)
    return path


def lora_args(base, text, out, *extra):
    return ["train", "--base", base, "--dataset", text, "--output", out, *LORA, *extra]


@pytest.fixture(scope="module")
def adapter(base, text, tmp_path_factory):
    """An adapter trained for 12 steps, with --merge; and its log lines."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("lora") / "run"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert cli(*lora_args(base, text, out, "--merge")) == 0
    return out, stdout.getvalue()


def test_the_output_is_a_standard_peft_adapter_naming_its_base(adapter, base):
    out, _ = adapter
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "bardterm.json"} <= names
    assert not {"config.json", "model.safetensors"} & names  # not a full model: the base is not copied
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8  # 2 x R by default
    assert config["base_model_name_or_path"] == str(base.resolve())
    assert {"c_attn", "c_proj", "c_fc"} <= {name.rsplit(".", 1)[-1] for name in config["target_modules"]}  # every linear layer (GPT-2's Conv1D)
    meta = json.loads((out / "bardterm.json").read_text())
    assert meta["derived"]["trainable_parameters"] < meta["derived"]["parameters"] / 5


def test_only_the_adapter_changes_and_the_loss_goes_down(adapter, base):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, log = adapter
    original = dict(AutoModelForCausalLM.from_pretrained(base).named_parameters())
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out)  # plain peft loads it
    lora_b = 0
    for name, param in model.named_parameters():
        if "lora_" in name:
            lora_b += "lora_B" in name and bool(param.abs().sum() > 0)  # B starts at zero: it was trained
        else:
            key = name.removeprefix("base_model.model.").replace(".base_layer", "")
            assert torch.equal(param, original[key]), name
    assert lora_b > 0
    losses = [float(line.split(" loss ")[1].split()[0]) for line in log.splitlines() if line.startswith("step ")]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    metrics = json.loads((out / "bardterm.json").read_text())["metrics"]
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"]


def test_merged_and_unmerged_give_the_same_logits(adapter, base):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from bardterm.models import load_checkpoint

    out, _ = adapter
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 64]])
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out).eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()  # --merge: a full model in safetensors
    assert (out / "merged" / "model.safetensors").is_file()
    loaded = load_checkpoint(out, device="cpu", dtype="float32").model  # what bardterm, generate and eval load
    with torch.no_grad():
        reference = unmerged(input_ids=ids).logits
        torch.testing.assert_close(merged(input_ids=ids).logits, reference, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(loaded(input_ids=ids).logits, reference, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(AutoModelForCausalLM.from_pretrained(base)(input_ids=ids).logits, reference)


def test_generate_and_eval_take_the_adapter_folder(adapter, text, capsys):
    out, _ = adapter
    capsys.readouterr()
    assert cli("generate", "ROMEO:", "--checkpoint", out, "--decoder", "greedy", "--max-new-tokens", "8") == 0
    from_adapter = capsys.readouterr().out
    assert cli("generate", "ROMEO:", "--checkpoint", out / "merged", "--decoder", "greedy",
               "--max-new-tokens", "8") == 0
    assert capsys.readouterr().out == from_adapter
    assert cli("eval", "--checkpoint", out, "--dataset", text, "--json") == 0
    measured = json.loads(capsys.readouterr().out)["splits"]["validation"]["loss"]
    assert measured == pytest.approx(json.loads((out / "bardterm.json").read_text())["best"]["val_loss"], rel=1e-5)


def test_a_lora_run_resumes_exactly(adapter, base, text, tmp_path):
    import torch
    from safetensors.torch import load_file

    from bardterm.cli import build_parser
    from bardterm.training import loop
    from bardterm.training.cli import config_from_args

    out = tmp_path / "run"
    config = config_from_args(build_parser().parse_args([str(a) for a in lora_args(base, text, out)]))

    def ctrl_c(step):
        if step == 5:
            signal.raise_signal(signal.SIGINT)

    assert loop.train(config, show_progress=False, on_step=ctrl_c) == 130
    assert json.loads((out / "resume" / "trainer_state.json").read_text())["step"] == 5
    assert cli(*lora_args(base, text, out, "--resume")) == 0
    uninterrupted, _ = adapter
    for saved in ("adapter_model.safetensors", "last/adapter_model.safetensors", "resume/model.safetensors"):
        a, b = load_file(str(uninterrupted / saved)), load_file(str(out / saved))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), saved


@pytest.mark.parametrize("extra, message", [
    (["--base", "scratch"], "--lora adapts a pretrained model"),
    (["--lora", "0", "--merge"], "--merge merges a LoRA adapter"),
    (["--lora", "-1"], "invalid --lora -1"),
    (["--lora-targets", "no_such_module"], "--lora-targets no_such_module"),
])
def test_bad_lora_settings_are_one_line_and_write_nothing(base, text, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert cli(*lora_args(base, text, out, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_an_adapter_on_a_hub_model_names_it_by_id_and_loads_it_on_another_machine(base, text, tmp_path, monkeypatch,
                                                                                   capsys):
    """The base fetched by Hub id (from a Hub-like server on 127.0.0.1); the adapter folder records the id, and
    generate, given only the adapter folder on a machine with an empty cache, fetches the base again."""
    from hub_server import HubServer

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-trainer"))
    import peft.utils.save_and_load

    def no_hub_lookup(*args, **kwargs):  # peft's own check would go to huggingface.co, past the local server
        raise AssertionError("saving the adapter asked the Hub whether the base's config.json exists")

    monkeypatch.setattr(peft.utils.save_and_load, "check_file_exists_on_hf_hub", no_hub_lookup)
    out = tmp_path / "adapter"
    with HubServer() as server:
        server.add_repo("tiny-org/tiny-base", base)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        assert cli("train", "--base", "tiny-org/tiny-base", "--dataset", text, "--output", out, *LORA,
                   "--max-steps", "2", "--eval-interval", "2") == 0
        assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-org/tiny-base"
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-elsewhere"))
        server.requests.clear()
        capsys.readouterr()
        assert cli("generate", "ROMEO:", "--checkpoint", out, "--decoder", "greedy", "--max-new-tokens", "4") == 0
        assert capsys.readouterr().out
        assert any("model.safetensors" in path for _, path, _ in server.requests)  # the base, fetched by its id
