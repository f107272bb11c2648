"""A plugin's decoder misbehaving in the middle of a generation, seen from the user's side.

The user gets one line naming the decoder and the fault, the generation stops at that step (what streamed
before stays), and every other decoder keeps working. Faults while loading are in `test_plugins.py`.
"""

from __future__ import annotations

import time
import types

import pytest
import torch

from bardterm import engine
from bardterm.cli import main
from bardterm.decoders.base import Processor, Selector
from bardterm.engine import DecoderFault, Generation, generate
from bardterm.hookspecs import hookimpl
from bardterm.registry import build, get_registry

PLUGIN = "faulty_decoders"


def faulty(name: str, fault):
    """A processor that behaves for `fine_steps` steps, then returns `fault(scores)`."""

    def call(self, input_ids, scores):
        self.steps += 1
        return scores if self.steps <= self.fine_steps else fault(scores)

    return type(name.title().replace("_", ""), (Processor,), {
        "name": name, "help": f"Test processor: {name}.", "__call__": call, "steps": 0, "fine_steps": 0})


def _raise(scores):
    raise ValueError("bad lookup table")


def _slow(scores):
    time.sleep(0.3)
    return scores


def _with(value):
    def fault(scores):
        out = scores.clone()
        out[:, 3] = value
        return out
    return fault


FAULTS = {  # decoder name -> (what it does, the fault the user is told about)
    "wrong_shape": (lambda scores: scores[:, :-1], "returned scores of shape (1, 319), expected (1, 320)"),
    "not_a_tensor": (lambda scores: scores.tolist(), "returned scores of shape list"),
    "returns_nan": (_with(float("nan")), "returned NaN or +inf scores"),
    "returns_inf": (_with(float("inf")), "returned NaN or +inf scores"),
    "rules_out_all": (lambda scores: torch.full_like(scores, -float("inf")), "ruled out every token"),
    "raises": (_raise, "raised ValueError: bad lookup table"),
    "too_slow": (_slow, "for one step (limit 0.1 s)"),
}


class RaisingSelector(Selector):
    name = "raising_selector"
    help = "Test selector: raises when asked to choose."

    def choose(self, scores, generator):
        raise RuntimeError("selector bug")


class OutOfVocabulary(Selector):
    name = "out_of_vocabulary"
    help = "Test selector: picks a token the model does not have."

    def choose(self, scores, generator):
        return torch.tensor([scores.shape[-1] + 10])


@pytest.fixture
def faulty_plugin(monkeypatch, register_plugin):
    """A plugin of faulty decoders, registered for one test (`register_plugin`, from `bardterm.testing`)."""
    monkeypatch.setattr(engine, "SLOW_STEP_S", 0.1)  # ample for a step on a tiny model
    module = types.ModuleType(PLUGIN)
    classes = {name: faulty(name, fault) for name, (fault, _) in FAULTS.items()}

    @hookimpl
    def register_decoders(register):
        for cls in [*classes.values(), RaisingSelector, OutOfVocabulary]:
            register(cls)

    module.register_decoders = register_decoders
    register_plugin(module, PLUGIN)
    return classes


def run_cli(capsys, *argv):
    code = main([str(arg) for arg in argv])
    return code, *capsys.readouterr()


@pytest.mark.parametrize("name", FAULTS)
def test_a_faulty_processor_stops_generation_with_one_line(faulty_plugin, capsys, tiny_checkpoint, tokenizer,
                                                           gpt2, name):
    code, out, err = run_cli(capsys, "generate", "ROMEO:", "--checkpoint", tiny_checkpoint, "--decoder", name,
                             "--max-new-tokens", 5)
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err
    assert lines[-1].startswith(f"bardterm: error: decoder '{name}' ") and FAULTS[name][1] in lines[-1]
    assert len([line for line in lines if line.startswith("bardterm: error:")]) == 1
    # every other decoder still works, in the same process, with the same model
    result = generate(gpt2, tokenizer, "ROMEO:", build("creative"), max_new_tokens=5, seed=0)
    assert len(result.token_ids) == 5


def test_the_error_line_starts_on_a_line_of_its_own_after_streamed_text(faulty_plugin, capsys, tiny_checkpoint):
    faulty_plugin["raises"].fine_steps = 3
    code, out, err = run_cli(capsys, "generate", "ROMEO:", "--checkpoint", tiny_checkpoint, "--decoder", "raises",
                             "--max-new-tokens", 8, "--seed", 1)
    assert code == 2 and out.strip() and out.endswith("\n")  # "…sweet" then a newline, not "…sweetbardterm: error"
    assert err.startswith("bardterm: error: decoder 'raises'")


@pytest.mark.parametrize("name", FAULTS)
def test_what_streamed_before_the_fault_stays(faulty_plugin, tokenizer, gpt2, name):
    setup = build("greedy", chain=[name])
    setup.chain[0].fine_steps = 3
    generation = Generation(gpt2, tokenizer, "ROMEO:", setup, max_new_tokens=8)
    updates = []
    with pytest.raises(DecoderFault, match=f"decoder '{name}'"):
        for update in generation:
            updates.append(update)
    clean = generate(gpt2, tokenizer, "ROMEO:", build("greedy"), max_new_tokens=3)
    assert updates[-1].token_ids == clean.token_ids  # three good steps, then the fault, nothing garbled after


def test_the_example_plugins_keep_working_after_a_fault(faulty_plugin, tokenizer, gpt2):
    with pytest.raises(DecoderFault):
        generate(gpt2, tokenizer, "ROMEO:", build("raises"), max_new_tokens=3)
    found = get_registry()
    for decoder in ("json", "mirostat"):
        if decoder in found.decoders:  # installed (the suite installs them: see test_plugins.py)
            assert len(generate(gpt2, tokenizer, "ROMEO:", build(decoder), max_new_tokens=4).token_ids) == 4


def test_a_processor_just_under_the_time_limit_is_fine(faulty_plugin, monkeypatch, tokenizer, gpt2):
    monkeypatch.setattr(engine, "SLOW_STEP_S", 5.0)
    result = generate(gpt2, tokenizer, "ROMEO:", build("greedy", chain=["too_slow"]), max_new_tokens=2)
    assert result.token_ids == generate(gpt2, tokenizer, "ROMEO:", build("greedy"), max_new_tokens=2).token_ids


@pytest.mark.parametrize("name", ["wrong_shape", "returns_nan", "raises"])
def test_the_fault_names_the_plugin(faulty_plugin, tokenizer, gpt2, name):
    with pytest.raises(DecoderFault, match=f"plugin '{PLUGIN}'"):
        generate(gpt2, tokenizer, "ROMEO:", build(name), max_new_tokens=3)


@pytest.mark.parametrize("name, fault", [("raising_selector", "selector bug"), ("out_of_vocabulary", "")])
def test_a_faulty_selector_is_a_decoder_fault(faulty_plugin, capsys, tiny_checkpoint, name, fault):
    code, _, err = run_cli(capsys, "generate", "ROMEO:", "--checkpoint", tiny_checkpoint, "--decoder", name,
                           "--max-new-tokens", 3)
    assert code == 2 and err.strip().splitlines()[-1].startswith(f"bardterm: error: decoder '{name}' ")
    assert fault in err
