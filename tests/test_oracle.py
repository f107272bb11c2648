"""transformers' own generate() is the oracle: same model, same prompt, same token ids."""

import contextlib

import pytest
import torch

from bardterm.engine import generate
from bardterm.decoders.base import Selector
from bardterm.registry import DecoderSetup, build


PROMPTS = ["To be, or not", "ROMEO:", "O Romeo, Romeo! wherefore"]


@pytest.fixture(params=["gpt2", "llama"])
def model(request):
    return request.getfixturevalue(request.param)


def reference(model, tokenizer, prompt, **options):
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=tokenizer.eos_token_id,
                             **options)
    return out[0, ids.shape[1]:].tolist()


def ours(model, tokenizer, prompt, decoder, max_new_tokens, seed=None, min_new_tokens=0, **settings):
    if decoder in ("greedy", "beam"):  # the plain algorithms, as generate() runs them: no anti-loop defaults
        settings.setdefault("repetition_penalty", 1.0)
        if decoder == "beam":
            settings.setdefault("no_repeat_ngram_size", 0)
    return generate(model, tokenizer, prompt, build(decoder, **settings), max_new_tokens=max_new_tokens,
                    min_new_tokens=min_new_tokens, seed=seed)


@contextlib.contextmanager
def eos_bias(model, tokenizer, bias):
    """Raise the EOS logit (a hook on the LM head) so that generations end early, for both engines alike."""
    eos = tokenizer.eos_token_id

    def add_bias(module, inputs, logits):
        logits = logits.clone()
        logits[..., eos] += bias
        return logits

    handle = model.get_output_embeddings().register_forward_hook(add_bias)
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("max_new_tokens", [1, 7, 40])
def test_greedy_matches_generate(model, tokenizer, prompt, max_new_tokens):
    expected = reference(model, tokenizer, prompt, do_sample=False, max_new_tokens=max_new_tokens)
    result = ours(model, tokenizer, prompt, "greedy", max_new_tokens)
    assert result.token_ids == expected
    assert result.stop_reason == "length"


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("num_beams, length_penalty, early_stopping, max_new_tokens", [
    (2, 1.0, False, 1), (2, 1.0, False, 8), (4, 1.0, False, 25), (3, 0.5, True, 15), (5, 2.0, False, 20), (4, -1.0, True, 12)])
def test_beam_matches_generate(model, tokenizer, prompt, num_beams, length_penalty, early_stopping, max_new_tokens):
    expected = reference(model, tokenizer, prompt, do_sample=False, num_beams=num_beams,
                         length_penalty=length_penalty, early_stopping=early_stopping, max_new_tokens=max_new_tokens)
    result = ours(model, tokenizer, prompt, "beam", max_new_tokens, num_beams=num_beams,
                  length_penalty=length_penalty, early_stopping=early_stopping)
    assert result.token_ids == expected


# (model, options, bias on the EOS logit, prompt): cases where generate() ends on EOS before the limit.
EOS_CASES = [
    ("gpt2", {"num_beams": 1}, 0.4, "O Romeo"),
    ("gpt2", {"num_beams": 3}, 0.5, "ROMEO:"),
    ("gpt2", {"num_beams": 4, "early_stopping": True}, 0.2, "Whether"),
    ("gpt2", {"num_beams": 4, "early_stopping": True}, 0.3, "ROMEO:"),
    ("gpt2", {"num_beams": 2, "length_penalty": 2.0}, 0.4, "Whether"),
    ("llama", {"num_beams": 1}, 0.2, "O Romeo"),
    ("llama", {"num_beams": 3}, 0.2, "To be, or not"),
    ("llama", {"num_beams": 3}, 0.3, "ROMEO:"),
    ("llama", {"num_beams": 4, "early_stopping": True}, 0.2, "To be, or not"),
    ("llama", {"num_beams": 2, "length_penalty": 2.0}, 0.3, "ROMEO:"),
    ("llama", {"num_beams": 2, "length_penalty": 2.0}, 0.2, "O Romeo"),
]


@pytest.mark.parametrize("name, options, bias, prompt", EOS_CASES)
def test_eos_terminated_generations_match(request, tokenizer, name, options, bias, prompt):
    model = request.getfixturevalue(name)
    decoder = "greedy" if options["num_beams"] == 1 else "beam"
    settings = {k: v for k, v in options.items() if decoder == "beam"}
    with eos_bias(model, tokenizer, bias):
        expected = reference(model, tokenizer, prompt, do_sample=False, max_new_tokens=20, **options)
        result = ours(model, tokenizer, prompt, decoder, 20, **settings)
    assert expected[-1] == tokenizer.eos_token_id and len(expected) < 20  # the case exercises the EOS path
    assert result.token_ids == expected
    assert result.stop_reason == "eos"


def test_min_new_tokens_matches_generate(llama, tokenizer):
    with eos_bias(llama, tokenizer, 0.3):
        unconstrained = reference(llama, tokenizer, "O Romeo", do_sample=False, max_new_tokens=20)
        expected = reference(llama, tokenizer, "O Romeo", do_sample=False, max_new_tokens=20, min_new_tokens=12)
        result = ours(llama, tokenizer, "O Romeo", "greedy", 20, min_new_tokens=12)
        beam_expected = reference(llama, tokenizer, "O Romeo", do_sample=False, num_beams=3, max_new_tokens=20,
                                  min_new_tokens=10)
        beam_result = ours(llama, tokenizer, "O Romeo", "beam", 20, min_new_tokens=10, num_beams=3)
    assert len(unconstrained) < 12  # without the minimum it would have stopped earlier
    assert result.token_ids == expected
    assert tokenizer.eos_token_id not in result.token_ids[:12]
    assert beam_result.token_ids == beam_expected


@pytest.mark.parametrize("penalty", [1.3, 2.0, 0.8])
def test_repetition_penalty_matches_generate(model, tokenizer, penalty):
    for prompt in PROMPTS[:2]:
        expected = reference(model, tokenizer, prompt, do_sample=False, max_new_tokens=30, repetition_penalty=penalty)
        assert ours(model, tokenizer, prompt, "greedy", 30, repetition_penalty=penalty).token_ids == expected
        beam_expected = reference(model, tokenizer, prompt, do_sample=False, num_beams=3, max_new_tokens=15,
                                  repetition_penalty=penalty)
        beam = ours(model, tokenizer, prompt, "beam", 15, num_beams=3, repetition_penalty=penalty)
        assert beam.token_ids == beam_expected


@pytest.mark.parametrize("decoder, options", [("greedy", {}), ("beam", {"num_beams": 4, "no_repeat_ngram_size": 6})])
def test_greedy_and_beam_by_name_are_generate_with_their_anti_loop_defaults(model, tokenizer, decoder, options):
    expected = reference(model, tokenizer, PROMPTS[0], do_sample=False, max_new_tokens=25, repetition_penalty=1.2,
                         **options)
    setup = build(decoder)
    assert [p.name for p in setup.chain] == ["repetition_penalty"] + ["no_repeat_ngram"] * (decoder == "beam")
    assert generate(model, tokenizer, PROMPTS[0], setup, max_new_tokens=25).token_ids == expected


def test_no_repeat_ngram_size_changes_beam_search(gpt2, tokenizer):
    plain = ours(gpt2, tokenizer, "To be", "beam", 40, num_beams=3).token_ids
    blocked = ours(gpt2, tokenizer, "To be", "beam", 40, num_beams=3, no_repeat_ngram_size=2).token_ids
    assert plain != blocked  # so the equality above is not vacuous
    pairs = list(zip(blocked, blocked[1:]))
    assert len(pairs) == len(set(pairs))


def test_repetition_penalty_changes_the_output(gpt2, tokenizer):
    plain = ours(gpt2, tokenizer, "To be", "greedy", 40).token_ids
    penalised = ours(gpt2, tokenizer, "To be", "greedy", 40, repetition_penalty=3.0).token_ids
    assert plain != penalised  # so the equality above is not vacuous


@pytest.mark.parametrize("settings", [{"temperature": 0.5}, {"top_k": 5}, {"top_p": 0.5},
                                      {"temperature": 2.0, "top_k": 3, "top_p": 0.7}])
def test_warpers_keep_the_greedy_choice(model, tokenizer, settings):
    """Temperature, top-k and top-p never change which token is most likely: greedy through them is greedy."""
    expected = reference(model, tokenizer, PROMPTS[0], do_sample=False, max_new_tokens=20)
    setup = build("greedy", chain=list(settings), **settings)
    assert [p.name for p in setup.chain] == list(settings)
    assert generate(model, tokenizer, PROMPTS[0], setup, max_new_tokens=20).token_ids == expected


class Replay(Selector):
    """Picks the tokens it is given, and keeps the processed scores the engine handed it at each step."""

    name = "replay"

    def __init__(self, tokens):
        super().__init__()
        self.tokens, self.seen = tokens, []

    def choose(self, scores, generator):
        self.seen.append(scores.clone())
        return torch.tensor([self.tokens[len(self.seen) - 1]])


@pytest.mark.parametrize("settings", [{"temperature": 0.7}, {"top_k": 20}, {"top_p": 0.8},
                                      {"repetition_penalty": 1.2, "temperature": 1.3, "top_k": 40, "top_p": 0.9}])
def test_sampling_draws_from_the_distribution_generate_samples_from(model, tokenizer, settings):
    """Along generate(do_sample=True)'s own tokens, our chain gives exactly the scores its processors gave, so both
    sample from one distribution. (The draws differ: ours is inverse-CDF; test_sampling.py checks its frequencies.)"""
    torch.manual_seed(0)
    options = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, **settings}
    ids = tokenizer(PROMPTS[1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=tokenizer.eos_token_id,
                             do_sample=True, max_new_tokens=30, min_new_tokens=30, output_scores=True, return_dict_in_generate=True,
                             **options)
    tokens = out.sequences[0, ids.shape[1]:].tolist()
    replay = Replay(tokens)
    result = generate(model, tokenizer, PROMPTS[1], DecoderSetup(replay, build("sample", **settings).chain),
                      max_new_tokens=30, min_new_tokens=30)
    assert result.token_ids == tokens
    assert len(replay.seen) == len(out.scores) == 30
    for ours_scores, theirs in zip(replay.seen, out.scores):
        assert torch.equal(ours_scores, theirs)
