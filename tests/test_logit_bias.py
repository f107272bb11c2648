"""logit_bias: parsing what users write, biases and bans by token id and by text, and end to end."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from bardterm.decoders.logit_bias import LogitBias, parse_logit_bias, token_biases
from bardterm.engine import generate
from bardterm.params import InvalidParameter
from bardterm.registry import build

INF = math.inf


@pytest.mark.parametrize("text, expected", [
    ("", []),
    (" Romeo=-5", [(" Romeo", -5.0)]),  # the leading space is part of the text
    (" Romeo=-5, 17=2.5,JULIET=-inf", [(" Romeo", -5.0), (17, 2.5), ("JULIET", -INF)]),
    (' 42 =1', [(42, 1.0)]),  # digits are a token id, spaces around them aside
    ('"42"=1', [("42", 1.0)]),  # ... unless quoted: then it is the text "42"
    ('","=-inf, "a=b"=3, "\\"" = -1', [(",", -INF), ("a=b", 3.0), ('"', -1.0)]),
])
def test_parses_ids_text_quoted_text_and_bans(text, expected):
    assert parse_logit_bias(text) == expected


@pytest.mark.parametrize("text, problem", [
    ("Romeo", "expected KEY=BIAS"),
    ("Romeo=lots", "'lots' is not a number"),
    ("Romeo=inf", "not allowed"),
    ("Romeo=nan", "not allowed"),
    ("=3", "expected KEY=BIAS"),
    ("a=b=3", "'b=3' is not a number"),  # text with "=" must be quoted
    ("Romeo=-5 Juliet=3", "'-5 Juliet=3' is not a number"),  # a comma left out
])
def test_a_bad_bias_is_refused_when_the_setup_is_built_with_one_line_and_an_example(text, problem):
    with pytest.raises(InvalidParameter, match=problem) as refused:
        build("logit_bias", logit_bias=text)
    assert "e.g." in str(refused.value) and "\n" not in str(refused.value)


def started(tokenizer, text: str) -> LogitBias:
    processor = LogitBias(logit_bias=text)
    processor.start_run(SimpleNamespace(tokenizer=tokenizer))
    return processor


def test_bias_by_id_adds_to_that_token_and_a_ban_rules_it_out(tokenizer):
    scores = torch.randn(2, len(tokenizer), generator=torch.Generator().manual_seed(0))
    out = started(tokenizer, "5=2.5, 7=-inf, 9=-1, 9=-1")(None, scores)
    expected = scores.clone()
    expected[:, 5] += 2.5
    expected[:, 7] = -INF
    expected[:, 9] -= 2  # two entries for one token add up, as in llama.cpp
    assert torch.equal(out, expected)


def test_bias_by_text_goes_to_every_token_of_its_tokenization(tokenizer):
    ids = tokenizer.encode(" Romeo!", add_special_tokens=False)
    assert len(ids) >= 2  # " Romeo" and "!": two tokens at least
    biases = token_biases(parse_logit_bias(" Romeo!=-3"), tokenizer)
    assert biases == {token: -3.0 * ids.count(token) for token in ids}


def test_unknown_ids_and_empty_texts_are_refused_when_the_generation_starts(tokenizer):
    with pytest.raises(InvalidParameter, match="token id 99999 is not in the vocabulary"):
        started(tokenizer, "99999=1")
    with pytest.raises(InvalidParameter, match="gives no tokens"):
        started(tokenizer, '""=1')


def test_a_banned_word_never_appears_and_a_favoured_one_does(gpt2, tokenizer):
    plain = generate(gpt2, tokenizer, "ROMEO:", build("greedy", chain=[]), max_new_tokens=12)
    first = plain.token_ids[0]
    word = tokenizer.decode([first])
    banned = generate(gpt2, tokenizer, "ROMEO:", build("greedy", chain=["logit_bias"], logit_bias=f"{first}=-inf"),
                      max_new_tokens=12)
    assert first not in banned.token_ids
    assert tokenizer.encode(word, add_special_tokens=False) == [first]
    by_text = build("greedy", chain=["logit_bias"], logit_bias=f"{json.dumps(word)}=-inf")  # quoted: any text
    assert generate(gpt2, tokenizer, "ROMEO:", by_text, max_new_tokens=12).token_ids == banned.token_ids
    favoured = tokenizer.encode(" Juliet", add_special_tokens=False)[-1]
    forced = generate(gpt2, tokenizer, "ROMEO:", build("greedy", chain=["logit_bias"], logit_bias=f"{favoured}=100"),
                      max_new_tokens=5)
    assert forced.token_ids == [favoured] * 5


def test_the_declared_parameter_refuses_bad_text_wherever_it_is_set():
    """The check is part of the Param, so the F2 panel's field, /set and the flags all refuse alike."""
    from bardterm.decoders.dry import Dry

    declared = {p.name: p for p in (*LogitBias.params, *Dry.params)}
    assert declared["logit_bias"].validate(" Romeo=-5") == " Romeo=-5"
    with pytest.raises(InvalidParameter, match="expected KEY=BIAS"):
        declared["logit_bias"].validate("Romeo")
    with pytest.raises(InvalidParameter, match="JSON strings"):
        declared["dry_sequence_breakers"].validate("\\n, :")
