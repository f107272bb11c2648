"""The streaming engine: KV cache, whole characters, every way to stop, limits, stats, inspector, faults."""

import re
import threading
import time

import pytest
import torch
from conftest import TEXT, make_gpt2, make_llama

from bardterm.decoders.base import Hypothesis, Processor, Selector
from bardterm.engine import DecodeRun, DecoderFault, Generation, cache_argument, generate
from bardterm.errors import BardtermError
from bardterm.registry import DecoderSetup, build


class Scripted(Selector):
    """A selector that emits a fixed token sequence, to drive the engine with text we choose."""

    name = "scripted"

    def __init__(self, ids):
        super().__init__()
        self.ids = list(ids)

    def search(self, run):
        for count in range(1, min(len(self.ids), run.max_new_tokens) + 1):
            yield Hypothesis(self.ids[:count])


def scripted(ids):
    return DecoderSetup(Scripted(ids), [])


def run_all(generation):
    updates = list(generation)
    return updates, generation.result


def record_forward_inputs(model):
    shapes = []
    handle = model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    return shapes, handle


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_the_prefix_is_never_recomputed(request, tokenizer, name):
    model = request.getfixturevalue(name)
    shapes, handle = record_forward_inputs(model)
    try:
        result = generate(model, tokenizer, "To be, or not to be", build("greedy"), max_new_tokens=12)
    finally:
        handle.remove()
    prompt = result.stats.prompt_tokens
    assert len(result.token_ids) == 12
    assert shapes == [(1, prompt)] + [(1, 1)] * 11  # the prompt once, then one new token per step


def test_beam_search_feeds_one_token_per_beam_after_the_prompt(gpt2, tokenizer):
    shapes, handle = record_forward_inputs(gpt2)
    try:
        result = generate(gpt2, tokenizer, "ROMEO:", build("beam", num_beams=3), max_new_tokens=10)
    finally:
        handle.remove()
    assert len(result.token_ids) == 10
    assert shapes == [(3, result.stats.prompt_tokens)] + [(3, 1)] * 9


def byte_tokens(tokenizer, text):
    """One token per UTF-8 byte: every multi-byte character is split across tokens."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    alphabet = bytes_to_unicode()
    return [tokenizer.convert_tokens_to_ids(alphabet[b]) for b in text.encode("utf-8")]


@pytest.mark.parametrize("how", ["bpe", "bytes"])
def test_multi_byte_characters_never_show_broken(gpt2, tokenizer, how):
    text = "Ünïcödé and emoji 🎭 so multi-byte, 🎭🎭 ä"
    ids = tokenizer.encode(text) if how == "bpe" else byte_tokens(tokenizer, text)
    pieces = [tokenizer.decode([i]) for i in ids]
    assert any("\ufffd" in piece for piece in pieces)  # characters really are split across tokens
    updates, result = run_all(Generation(gpt2, tokenizer, "x", scripted(ids), max_new_tokens=len(ids)))
    assert result.text == text
    for update in updates:
        assert "\ufffd" not in update.text
        assert text.startswith(update.text)
    assert len({u.text for u in updates}) > 10  # it streamed, not all at the end


def test_eos_stops_and_is_not_in_the_text(gpt2, tokenizer):
    ids = tokenizer.encode("But, soft!") + [tokenizer.eos_token_id] + tokenizer.encode(" more")
    result = generate(gpt2, tokenizer, "x", scripted(ids), max_new_tokens=30)
    assert result.stop_reason == "eos"
    assert result.text == "But, soft!"
    assert result.token_ids == ids[:ids.index(tokenizer.eos_token_id) + 1]


def test_max_new_tokens_stops(gpt2, tokenizer):
    result = generate(gpt2, tokenizer, "To be", build("sample"), max_new_tokens=9, seed=0)
    assert result.stop_reason == "length"
    assert len(result.token_ids) == result.stats.tokens == 9


def test_min_new_tokens_holds_eos_back(gpt2, tokenizer):
    eos = tokenizer.eos_token_id
    bias = torch.zeros(len(tokenizer))
    bias[eos] = 50.0  # EOS always the most likely token
    handle = gpt2.lm_head.register_forward_hook(lambda module, inputs, logits: logits + bias)
    try:
        early = generate(gpt2, tokenizer, "To be", build("greedy"), max_new_tokens=20)
        held = generate(gpt2, tokenizer, "To be", build("greedy"), max_new_tokens=20, min_new_tokens=6)
    finally:
        handle.remove()
    assert early.token_ids == [eos]
    assert eos not in held.token_ids[:6] and held.token_ids[6] == eos and held.stop_reason == "eos"


@pytest.mark.parametrize("stops, expected", [
    (["soft"], "ROMEO:\nBut, "),
    (["light", "!"], "ROMEO:\nBut, soft"),  # the earliest of several wins
    (["\n"], "ROMEO:"),
    (["yonder win"], "ROMEO:\nBut, soft! what light through "),  # a stop string spanning tokens
])
def test_stop_strings_end_and_are_cut(gpt2, tokenizer, stops, expected):
    text = "ROMEO:\nBut, soft! what light through yonder window breaks?"
    ids = tokenizer.encode(text)
    updates, result = run_all(Generation(gpt2, tokenizer, "x", scripted(ids), max_new_tokens=len(ids), stop=stops))
    assert result.stop_reason == "stop"
    assert result.text == expected
    assert len(result.token_ids) < len(ids)  # it stopped generating, not just trimmed the end
    for update in updates:  # committed text is final: a stop string is never shown, not even its start
        assert expected.startswith(update.text[:update.committed])


def test_a_stop_string_prefix_is_held_back_until_it_resolves(gpt2, tokenizer):
    text = "ROMEO:\nBut, soft! what light"
    ids = tokenizer.encode(text)
    updates, result = run_all(Generation(gpt2, tokenizer, "x", scripted(ids), max_new_tokens=len(ids),
                                         stop=["soft!?"]))
    assert result.stop_reason == "length" and result.text == text
    held = [u for u in updates if u.text.endswith("sof") or u.text.endswith("soft!")]
    assert held and all(u.committed < len(u.text) for u in held)
    assert updates[-1].committed == len(text)


def test_cancel_from_another_thread_takes_effect_within_one_token(gpt2, tokenizer):
    generation = Generation(gpt2, tokenizer, "To be", build("greedy"), max_new_tokens=60)
    calls = []

    def cancel_during_the_fifth_forward(module, args, kwargs):
        calls.append(1)
        if len(calls) == 5:
            canceller = threading.Thread(target=generation.cancel)
            canceller.start()
            canceller.join()

    handle = gpt2.register_forward_pre_hook(cancel_during_the_fifth_forward, with_kwargs=True)
    try:
        updates, result = run_all(generation)
    finally:
        handle.remove()
    assert result.stop_reason == "cancelled"
    assert len(calls) == 5 and len(result.token_ids) == 5  # the token being computed finishes; no more


def test_cancel_while_the_caller_holds_an_update(gpt2, tokenizer):
    generation = Generation(gpt2, tokenizer, "To be", build("greedy"), max_new_tokens=60)
    for update in generation:
        if len(update.token_ids) == 3:
            threading.Thread(target=generation.cancel).start()
            threading.Event().wait(0.05)
    assert generation.result.stop_reason == "cancelled"
    assert len(generation.result.token_ids) == 3


def test_a_prompt_longer_than_the_context_keeps_its_end_with_a_notice(gpt2, tokenizer):
    prompt = TEXT * 3
    prompt_tokens = len(tokenizer.encode(prompt))
    assert prompt_tokens > gpt2.config.n_positions
    shapes, handle = record_forward_inputs(gpt2)
    try:
        result = generate(gpt2, tokenizer, prompt, build("greedy"), max_new_tokens=20)
    finally:
        handle.remove()
    kept = gpt2.config.n_positions - 20
    assert result.stats.prompt_tokens == kept and shapes[0] == (1, kept)
    assert len(result.token_ids) == 20
    assert any(f"kept its last {kept} tokens" in notice for notice in result.notices)
    expected = generate(gpt2, tokenizer, tokenizer.decode(tokenizer.encode(prompt)[-kept:]), build("greedy"),
                        max_new_tokens=20)
    assert result.token_ids == expected.token_ids  # it is the most recent part that was kept


def test_max_new_tokens_beyond_the_context_is_cut_with_a_notice(gpt2, tokenizer):
    result = generate(gpt2, tokenizer, TEXT * 3, build("greedy"), max_new_tokens=100)
    limit = gpt2.config.n_positions
    assert result.stats.prompt_tokens + len(result.token_ids) == limit
    assert any("max new tokens cut" in notice for notice in result.notices)


def test_a_short_prompt_gets_no_notice(gpt2, tokenizer):
    assert generate(gpt2, tokenizer, "To be", build("greedy"), max_new_tokens=5).notices == []


def test_an_empty_prompt_starts_from_the_start_token(gpt2, tokenizer):
    result = generate(gpt2, tokenizer, "", build("greedy"), max_new_tokens=5)
    assert result.stats.prompt_tokens == 1 and len(result.token_ids) == 5


def test_every_run_reports_stats(gpt2, tokenizer):
    updates, result = run_all(Generation(gpt2, tokenizer, "To be", build("greedy"), max_new_tokens=8))
    stats = result.stats
    assert stats.tokens == 8 and stats.prompt_tokens == len(tokenizer.encode("To be"))
    assert 0 < stats.ttft_s <= stats.total_s
    assert stats.tokens_per_s == pytest.approx(8 / stats.total_s)
    assert "8 tokens" in str(stats) and "tokens/s" in str(stats)
    assert set(stats.as_dict()) >= {"tokens", "ttft_s", "tokens_per_s"}
    assert [u.stats.tokens for u in updates[:-1]] == list(range(1, 9))


@pytest.mark.parametrize("settings", [{}, {"top_k": 3}])
def test_the_token_inspector_reports_probabilities_and_alternatives(gpt2, tokenizer, settings):
    setup = build("greedy", chain=list(settings), **settings)
    prompt_ids = tokenizer.encode("To be")
    updates, result = run_all(Generation(gpt2, tokenizer, "To be", setup, max_new_tokens=6, top_alternatives=5))
    assert [t.token_id for t in result.tokens] == result.token_ids
    assert [u.token for u in updates[:-1]] == result.tokens  # each update carries its token
    for position, info in enumerate(result.tokens):
        with torch.no_grad():
            logits = gpt2(torch.tensor([prompt_ids + result.token_ids[:position]])).logits[0, -1]
        if settings:
            logits = setup.chain[0](None, logits[None])[0]
        probs = torch.softmax(logits, dim=-1)
        assert info.prob == pytest.approx(float(probs[info.token_id]), abs=1e-5)
        assert info.text == tokenizer.decode([info.token_id])
        assert len(info.alternatives) == 5
        assert info.alternatives[0] == (info.text, pytest.approx(info.prob, abs=1e-6))  # greedy took the top
        values = [p for _, p in info.alternatives]
        assert values == sorted(values, reverse=True)
        assert values == pytest.approx(torch.topk(probs, 5).values.tolist(), abs=1e-5)
        if settings:
            assert values[3] == values[4] == 0.0


def test_beam_search_gets_inspector_entries_for_its_final_text(gpt2, tokenizer):
    """Beam search revises its text, so its entries come afterwards: the chain on log-probs at each position."""
    setup = build("beam", num_beams=3, repetition_penalty=1.5)
    prompt_ids = tokenizer.encode("To be")
    _, result = run_all(Generation(gpt2, tokenizer, "To be", setup, max_new_tokens=8, top_alternatives=4))
    assert [t.token_id for t in result.tokens] == result.token_ids and len(result.token_ids) == 8
    for position, info in enumerate(result.tokens):
        seen = torch.tensor([prompt_ids + result.token_ids[:position]])
        with torch.no_grad():
            log_probs = torch.log_softmax(gpt2(seen).logits[0, -1], dim=-1)
        probs = torch.softmax(setup.chain[0](seen, log_probs[None])[0], dim=-1)  # the penalty, on log-probs
        assert info.prob == pytest.approx(float(probs[info.token_id]), abs=1e-5)
        assert [p for _, p in info.alternatives] == pytest.approx(torch.topk(probs, 4).values.tolist(), abs=1e-5)


def test_no_inspector_unless_asked(gpt2, tokenizer):
    assert generate(gpt2, tokenizer, "To be", build("greedy"), max_new_tokens=3).tokens == []


class Faulty(Processor):
    name = "faulty"

    def __init__(self, behaviour):
        super().__init__()
        self.behaviour = behaviour

    def __call__(self, input_ids, scores):
        if self.behaviour == "raise":
            raise ValueError("boom")
        if self.behaviour == "shape":
            return scores[:, :-1]
        if self.behaviour == "type":
            return scores.tolist()
        if self.behaviour == "nan":
            return scores * float("nan")
        if self.behaviour in ("one nan", "+inf"):
            scores = scores.clone()
            scores[0, 3] = float("nan") if self.behaviour == "one nan" else float("inf")
            return scores
        if self.behaviour == "all -inf":
            return torch.full_like(scores, -float("inf"))
        return scores


@pytest.mark.parametrize("behaviour, message", [
    ("raise", "raised ValueError: boom"), ("shape", "returned scores of shape"), ("type", "shape list"),
    ("nan", "NaN"), ("one nan", "NaN"), ("+inf", "+inf"), ("all -inf", "ruled out every token")])
def test_a_misbehaving_processor_is_a_decoder_fault_naming_it(gpt2, tokenizer, behaviour, message):
    run = DecodeRun(gpt2, torch.tensor([[1, 2]]), [Faulty(behaviour)], torch.Generator(), 5, 0, {0})
    with pytest.raises(DecoderFault, match="'faulty'") as caught:
        run.process(run.prompt_ids, torch.randn(1, len(tokenizer)))
    assert message in str(caught.value)
    assert isinstance(caught.value, BardtermError)  # shown as one line, never a traceback
    with pytest.raises(DecoderFault, match=re.escape(message)):
        generate(gpt2, tokenizer, "To be", DecoderSetup(build("greedy").selector, [Faulty(behaviour)]),
                 max_new_tokens=3)


class Held(Processor):
    """Holds its first step until the test lets it go: a processor that, for all anyone can tell, never returns."""

    name = "held"

    def __init__(self):
        super().__init__()
        self.entered, self.released = threading.Event(), threading.Event()

    def __call__(self, input_ids, scores):
        self.entered.set()
        self.released.wait(timeout=60.0)
        return scores


def test_a_step_held_past_the_limit_is_reported_while_it_is_still_running(gpt2, tokenizer, monkeypatch):
    import bardterm.engine

    monkeypatch.setattr(bardterm.engine, "SLOW_STEP_S", 0.3)
    held = Held()
    generation = Generation(gpt2, tokenizer, "To be", DecoderSetup(build("greedy").selector, [held]), max_new_tokens=3)
    assert generation.stuck() is None  # not started
    failure = []
    thread = threading.Thread(target=lambda: failure.extend(_fault_of(generation)))
    thread.start()
    try:
        assert held.entered.wait(timeout=60.0)
        assert generation.stuck() is None  # held, but not yet past the limit
        deadline = time.monotonic() + 60.0
        while generation.stuck() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert re.fullmatch(r"decoder 'held' has not returned from one step in \d+ s \(limit 0.3 s\)", generation.stuck())
    finally:
        held.released.set()
        thread.join(timeout=60.0)
    assert "took" in failure[0] and generation.stuck() is None  # when it does return, the step is a fault


def _fault_of(generation) -> list[str]:
    try:
        list(generation)
    except DecoderFault as fault:
        return [str(fault)]
    return []


def test_a_well_behaved_processor_passes_the_checks(gpt2, tokenizer):
    run = DecodeRun(gpt2, torch.tensor([[1, 2]]), [Faulty("fine")], torch.Generator(), 5, 0, {0})
    scores = torch.randn(1, len(tokenizer))
    scores[0, 5:] = -float("inf")  # some tokens ruled out is fine, only all of them is a fault
    assert torch.equal(run.process(run.prompt_ids, scores), scores)


def test_beam_search_streams_its_best_hypothesis_with_a_committed_prefix(gpt2, tokenizer):
    updates, result = run_all(Generation(gpt2, tokenizer, "To be, or not", build("beam", num_beams=4),
                                         max_new_tokens=30))
    final = result.text
    assert len(updates) > 10  # it streamed
    committed = [u.text[:u.committed] for u in updates]
    for earlier, later in zip(committed, committed[1:]):
        assert later.startswith(earlier)  # committed text only grows
    assert all(final.startswith(text) for text in committed)
    assert any(u.committed < len(u.text) for u in updates[:-1])  # some text stayed provisional
    assert updates[-1].committed == len(final) == len(updates[-1].text)


@pytest.mark.parametrize("options, message", [
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": 5, "min_new_tokens": 6}, "min_new_tokens"),
    ({"min_new_tokens": -1}, "min_new_tokens"), ({"stop": [""]}, "stop string")])
def test_invalid_generation_options_are_refused(gpt2, tokenizer, options, message):
    with pytest.raises(BardtermError, match=message):
        Generation(gpt2, tokenizer, "To be", build("greedy"), **options)


@pytest.mark.parametrize("activation", ["gelu_new", "gelu", "relu"])  # gelu_new has its own in-place path
def test_the_lean_gpt2_step_gives_exactly_the_models_logits(tokenizer, activation):
    from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel

    from bardterm.fast_gpt2 import gpt2_decode_step
    from bardterm.kv_cache import preallocated_cache

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                      activation_function=activation)).eval()
    step = gpt2_decode_step(gpt2)
    assert step is not None
    prompt = torch.tensor([tokenizer.encode("To be, or not")]).repeat(3, 1)  # three rows, as in beam search
    # room for 3 new positions: steps 1-3 append in place, steps 4-6 make the cache grow
    ours, theirs = preallocated_cache(gpt2, prompt.shape[1] + 3), DynamicCache(config=gpt2.config)
    with torch.no_grad():
        gpt2(input_ids=prompt, **{cache_argument(gpt2): ours}, use_cache=True)
        gpt2(input_ids=prompt, **{cache_argument(gpt2): theirs}, use_cache=True)
        next_ids = torch.tensor([[5], [17], [42]])
        for _ in range(6):
            fast = step(next_ids, ours)
            reference = gpt2(input_ids=next_ids, **{cache_argument(gpt2): theirs}, use_cache=True).logits[:, -1]
            assert torch.equal(fast, reference)
            next_ids = fast.argmax(dim=-1, keepdim=True)
    assert ours.get_seq_length() == theirs.get_seq_length() == prompt.shape[1] + 6


def test_the_lean_step_survives_a_forward_that_asked_for_hidden_states(tokenizer):
    from bardterm.fast_gpt2 import gpt2_decode_step

    model = make_gpt2(tokenizer, seed=5)
    with torch.no_grad():  # as contrastive search does: transformers leaves its output-capturing hooks on the layers
        model(input_ids=torch.tensor([[3, 9]]), output_hidden_states=True)
    assert gpt2_decode_step(model) is not None


def test_the_lean_step_is_only_used_where_it_is_exact(gpt2, llama):
    from bardterm.fast_gpt2 import gpt2_decode_step

    assert gpt2_decode_step(llama) is None  # another architecture
    handle = gpt2.transformer.h[0].register_forward_hook(lambda *args: None)
    try:
        assert gpt2_decode_step(gpt2) is None  # a hook must see every call
    finally:
        handle.remove()
    gpt2.train()
    try:
        assert gpt2_decode_step(gpt2) is None  # dropout on
    finally:
        gpt2.eval()
    assert gpt2_decode_step(gpt2) is not None


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_the_preallocated_cache_matches_the_dynamic_one_past_capacity_and_reordered(request, name):
    from transformers import DynamicCache

    from bardterm.kv_cache import preallocated_cache

    model = request.getfixturevalue(name)
    ours, theirs = preallocated_cache(model, 4), DynamicCache(config=model.config)  # capacity 4: it must grow
    ids = torch.tensor([[3, 9, 27], [8, 1, 64]])
    with torch.no_grad():
        for step in range(6):
            if step == 3:  # as beam search does: the rows swap
                ours.reorder_cache(torch.tensor([1, 0]))
                theirs.reorder_cache(torch.tensor([1, 0]))
            mine = model(input_ids=ids, **{cache_argument(model): ours}, use_cache=True).logits[:, -1]
            reference = model(input_ids=ids, **{cache_argument(model): theirs}, use_cache=True).logits[:, -1]
            assert torch.equal(mine, reference)
            ids = mine.argmax(dim=-1, keepdim=True)
    assert ours.get_seq_length() == 3 + 5


def test_generation_takes_the_lean_step_where_there_is_one(gpt2, llama, tokenizer):
    scaled = make_llama(tokenizer, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    on_gpt2, on_llama, on_scaled = (Generation(model, tokenizer, "To be", build("greedy"), max_new_tokens=3)
                                    for model in (gpt2, llama, scaled))
    run_all(on_gpt2), run_all(on_llama), run_all(on_scaled)
    assert on_gpt2.run._fast_step is not None and on_llama.run._fast_step is not None
    assert on_scaled.run._fast_step is None  # scaled rotary positions: the model itself
