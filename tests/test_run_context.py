"""The run context every decoder gets (`decoder.run`, `start_run(run)`): prompt length, step number, a reset per
generation, input ids for `choose`, the `cancelled` flag, and hidden states from `run.forward`."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from bardterm import DecoderSetup, Hypothesis, Processor, Selector
from bardterm.engine import Generation
from bardterm.registry import build


def run_all(generation):
    for _ in generation:
        pass
    return generation.result


class Recorder(Processor):
    """Records what the run context says at every step."""

    name = "recorder"

    def __init__(self, **values):
        super().__init__(**values)
        self.starts, self.seen = 0, []

    def start_run(self, run):
        self.starts += 1
        self.seen = []  # per-generation state, reset here

    def __call__(self, input_ids, scores):
        run = self.run
        self.seen.append((run.prompt_length, run.step, input_ids.shape[1], run.input_ids is input_ids))
        return scores


class WithIds(Selector):
    """Greedy, recording the input ids `choose` is handed."""

    name = "with_ids"

    def __init__(self, **values):
        super().__init__(**values)
        self.ids = []

    def choose(self, scores, generator, input_ids):
        self.ids.append(input_ids[0].tolist())
        return scores.argmax(dim=-1)


def test_prompt_length_step_and_a_reset_per_generation(tiny_gpt2, tiny_tokenizer):
    recorder = Recorder()
    setup = DecoderSetup(build("greedy").selector, [recorder])
    prompt_length = len(tiny_tokenizer("ROMEO:")["input_ids"])
    for _ in range(2):  # the same setup twice, as a TUI turn or /compare reuses it
        run_all(Generation(tiny_gpt2, tiny_tokenizer, "ROMEO:", setup, max_new_tokens=4))
        assert recorder.seen == [(prompt_length, step, prompt_length + step, True) for step in range(4)]
    assert recorder.starts == 2


def test_choose_gets_the_input_ids_its_scores_follow(tiny_gpt2, tiny_tokenizer):
    selector = WithIds()
    result = run_all(Generation(tiny_gpt2, tiny_tokenizer, "ROMEO:", DecoderSetup(selector, []), max_new_tokens=3))
    prompt = tiny_tokenizer("ROMEO:")["input_ids"]
    assert selector.ids == [prompt + result.token_ids[:step] for step in range(3)]


def test_a_choose_without_input_ids_still_works(tiny_gpt2, tiny_tokenizer):
    class OldStyle(Selector):  # plugin API 1
        name = "old_style"

        def choose(self, scores, generator):
            return scores.argmax(dim=-1)

    old = run_all(Generation(tiny_gpt2, tiny_tokenizer, "ROMEO:", DecoderSetup(OldStyle(), []), max_new_tokens=5))
    new = run_all(Generation(tiny_gpt2, tiny_tokenizer, "ROMEO:", DecoderSetup(WithIds(), []), max_new_tokens=5))
    assert old.token_ids == new.token_ids


class Polling(Processor):
    """A long step that polls the cancelled flag: without it, it would run for a minute."""

    name = "polling"

    def __call__(self, input_ids, scores):
        if self.run.step == 2:
            self.entered.set()
            deadline = time.monotonic() + 60
            while not self.run.cancelled and time.monotonic() < deadline:
                time.sleep(0.01)
        return scores


def test_a_long_step_that_polls_the_flag_ends_soon_after_a_cancel(tiny_gpt2, tiny_tokenizer):
    polling = Polling()
    polling.entered = threading.Event()
    generation = Generation(tiny_gpt2, tiny_tokenizer, "ROMEO:", DecoderSetup(build("greedy").selector, [polling]),
                            max_new_tokens=50)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (run_all(generation), done.set()))
    worker.start()
    assert polling.entered.wait(30)
    started = time.monotonic()
    generation.cancel()
    assert done.wait(10), "the step did not return after the cancel"
    worker.join()
    assert time.monotonic() - started < 5
    assert generation.result.stop_reason == "cancelled" and len(generation.result.token_ids) == 3


class Searching(Selector):
    """A search that runs the model many times between yields (as a lookahead would)."""

    name = "searching"

    def search(self, run):
        step = run.forward(run.prompt_ids)
        self.passes = 0
        while True:
            self.passes += 1
            if self.passes == 3:
                self.generation.cancel()
            step = run.forward(step.logits.argmax(dim=-1, keepdim=True), step.cache)
            if self.passes > 100:
                yield Hypothesis([0])
                return


def test_a_cancel_stops_a_search_at_its_next_model_pass(tiny_gpt2, tiny_tokenizer):
    selector = Searching()
    generation = Generation(tiny_gpt2, tiny_tokenizer, "ROMEO:", DecoderSetup(selector, []), max_new_tokens=120)
    selector.generation = generation
    result = run_all(generation)
    assert result.stop_reason == "cancelled" and selector.passes == 3


class Hidden(Selector):
    """Greedy, asking `run.forward` for hidden states and keeping them."""

    name = "hidden"

    def __init__(self, hidden, layer=-1):
        super().__init__()
        self.hidden, self.layer, self.states = hidden, layer, []

    def search(self, run):
        step = run.forward(run.prompt_ids, hidden=self.hidden, layer=self.layer)
        self.states.append(step.hidden)
        token = step.logits.argmax(dim=-1, keepdim=True)
        step = run.forward(token, step.cache, hidden=self.hidden, layer=self.layer)
        self.states.append(step.hidden)
        yield Hypothesis([int(token)])


@pytest.mark.parametrize("layer", [-1, 0, 1])
@pytest.mark.parametrize("hidden", ["last", "all", True])
def test_hidden_states_are_the_models_at_that_layer(tiny_gpt2, tiny_tokenizer, hidden, layer):
    selector = Hidden(hidden, layer)
    result = run_all(Generation(tiny_gpt2, tiny_tokenizer, "ROMEO:", DecoderSetup(selector, []), max_new_tokens=1))
    ids = torch.tensor([tiny_tokenizer("ROMEO:")["input_ids"] + result.token_ids])
    with torch.no_grad():
        states = tiny_gpt2(ids, output_hidden_states=True).hidden_states[layer]  # (1, length, hidden)
    prompt_states, next_states = selector.states
    if hidden == "all":
        assert prompt_states.shape == (1, ids.shape[1] - 1, 32) and next_states.shape == (1, 1, 32)
        got = torch.cat([prompt_states, next_states], dim=1)
    else:
        assert prompt_states.shape == next_states.shape == (1, 32)
        got = torch.stack([prompt_states[0], next_states[0]])[None]
        states = states[:, -2:]
    assert torch.allclose(got, states, atol=1e-5)


def test_the_last_layer_is_after_the_final_layer_norm(tiny_gpt2, tiny_tokenizer):
    selector = Hidden("last")
    run_all(Generation(tiny_gpt2, tiny_tokenizer, "ROMEO:", DecoderSetup(selector, []), max_new_tokens=1))
    ids = torch.tensor([tiny_tokenizer("ROMEO:")["input_ids"]])
    with torch.no_grad():
        normed = tiny_gpt2.transformer(ids).last_hidden_state[:, -1]  # what the LM head reads
        logits = tiny_gpt2.lm_head(selector.states[0])
    assert torch.allclose(selector.states[0], normed, atol=1e-5)
    assert torch.allclose(logits, tiny_gpt2(ids).logits[:, -1], atol=1e-4)


def test_the_engine_run_has_everything_the_run_protocol_promises(tiny_gpt2, tiny_tokenizer):
    from bardterm import Run

    generation = Generation(tiny_gpt2, tiny_tokenizer, "ROMEO:", build("greedy"), max_new_tokens=2)
    promised = set(Run.__annotations__) | {name for name in vars(Run) if not name.startswith("_")}
    assert promised >= {"prompt_length", "step", "input_ids", "cancelled", "forward", "process", "generator"}
    assert not [name for name in promised if not hasattr(generation.run, name)]


def test_a_search_that_catches_every_exception_still_stops_at_a_cancel(tiny_gpt2, tiny_tokenizer):
    class Stubborn(Searching):
        def search(self, run):
            try:
                yield from super().search(run)
            except Exception:  # a plugin's catch-all must not swallow the cancel
                yield Hypothesis([1, 2, 3])

    selector = Stubborn()
    generation = Generation(tiny_gpt2, tiny_tokenizer, "ROMEO:", DecoderSetup(selector, []), max_new_tokens=120)
    selector.generation = generation
    result = run_all(generation)
    assert result.stop_reason == "cancelled" and result.token_ids == []
