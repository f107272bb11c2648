"""Tests for the grammar plugin: a tiny random-weight model held to a JSON schema and to a regular expression."""

import json
import re

import pytest
import torch

import bardterm_grammar
from bardterm.engine import generate
from bardterm.errors import BardtermError
from bardterm.params import InvalidParameter
from bardterm.registry import build
from bardterm.testing import make_gpt2

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "mood": {"enum": ["merry", "sad"]},
        "friends": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 2},
    },
    "required": ["name", "age", "mood"],
    "additionalProperties": False,
}


def assert_is_a_person(text: str) -> None:
    """The schema above, checked by hand on the parsed JSON."""
    person = json.loads(text)
    assert set(person) <= set(PERSON["properties"]) and {"name", "age", "mood"} <= set(person), person
    assert isinstance(person["name"], str) and len(person["name"]) <= 12
    assert type(person["age"]) is int and 0 <= person["age"] <= 120
    assert person["mood"] in ("merry", "sad")
    friends = person.get("friends", [])
    assert isinstance(friends, list) and len(friends) <= 2 and all(isinstance(f, str) and len(f) <= 8 for f in friends)


@pytest.fixture
def registry(register_plugin):
    """The registry with this plugin in it, installed or not (`register_plugin` comes from `bardterm.testing`)."""
    return register_plugin(bardterm_grammar, "grammar")


@pytest.fixture(scope="module")
def gpt2(tiny_tokenizer):
    """bardterm.testing's tiny random GPT-2, with 8 more vocabulary rows than the tokenizer has tokens, as models
    padded to a round size have: the grammar must never allow those."""
    model = make_gpt2(tiny_tokenizer, n_positions=256)
    model.resize_token_embeddings(len(tiny_tokenizer) + 8)
    return model


@pytest.fixture
def tokenizer(tiny_tokenizer):
    return tiny_tokenizer


@pytest.mark.parametrize("seed", range(4))
def test_a_random_model_writes_valid_json_for_the_schema(registry, gpt2, tokenizer, seed):
    setup = build("grammar", registry=registry, json_schema=json.dumps(PERSON))
    result = generate(gpt2, tokenizer, "Person:", setup, max_new_tokens=120, seed=seed)
    assert result.stop_reason == "eos", result.text  # complete: then only the end of text was allowed
    assert_is_a_person(result.text)


def test_the_same_seed_gives_the_same_text_and_another_seed_another(registry, gpt2, tokenizer):
    setup = build("grammar", registry=registry, json_schema=json.dumps(PERSON), temperature=1.5)
    texts = [generate(gpt2, tokenizer, "Person:", setup, max_new_tokens=120, seed=seed).text for seed in (5, 5, 6, 7)]
    assert texts[0] == texts[1]
    assert len(set(texts[1:])) > 1
    for text in texts:
        assert_is_a_person(text)


def test_without_the_grammar_the_random_model_writes_no_json(gpt2, tokenizer):
    text = generate(gpt2, tokenizer, "Person:", build("sample"), max_new_tokens=40, seed=0).text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_greedy_with_a_regular_expression_and_a_schema_from_a_file(registry, gpt2, tokenizer, tmp_path):
    pattern = r"(ROMEO|JULIET): [a-z]{3,8}( [a-z]{2,8}){0,3}[.!?]"
    text = generate(gpt2, tokenizer, "Line:", build("greedy", registry=registry, chain=["grammar"], regex=pattern),
                    max_new_tokens=60).text
    assert re.fullmatch(pattern, text), text
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(PERSON))
    setup = build("greedy", registry=registry, chain=["grammar"], json_schema=f"@{schema}")
    assert_is_a_person(generate(gpt2, tokenizer, "Person:", setup, max_new_tokens=120).text)


def test_one_setup_serves_one_generation_after_another(registry, gpt2, tokenizer):
    setup = build("grammar", registry=registry, regex="[0-9]{2,4}")
    first = generate(gpt2, tokenizer, "Number:", setup, max_new_tokens=10, seed=1).text
    assert re.fullmatch("[0-9]{2,4}", first)
    assert generate(gpt2, tokenizer, "Number:", setup, max_new_tokens=10, seed=1).text == first


@pytest.mark.parametrize("settings, message", [
    ({}, "exactly one of json_schema and regex"),
    ({"json_schema": '{"type": "string"}', "regex": "a+"}, "exactly one of json_schema and regex"),
    ({"json_schema": "{not json"}, "is not JSON"),
    ({"json_schema": "[1, 2]"}, "must be a JSON object"),
    ({"json_schema": "@/no/such/schema.json"}, "cannot read it"),
    ({"regex": "(unclosed"}, "invalid regex"),
])
def test_a_bad_grammar_is_refused_before_any_token_with_one_line(registry, settings, message):
    with pytest.raises(InvalidParameter, match=re.escape(message)) as refused:
        build("grammar", registry=registry, **settings)
    assert "\n" not in str(refused.value)


def test_the_json_preset_samples_any_json_object(registry, gpt2, tokenizer):
    setup = build("json", registry=registry)
    assert setup.selector.name == "sample" and [p.name for p in setup.chain] == ["grammar"]
    results = [generate(gpt2, tokenizer, "Person:", setup, max_new_tokens=60, seed=seed) for seed in range(5)]
    ended = [result.text for result in results if result.stop_reason == "eos"]  # the others ran out of tokens
    assert ended and all(isinstance(json.loads(text), dict) for text in ended)


def test_beam_search_is_refused_with_a_clear_error(registry, gpt2, tokenizer):
    setup = build("beam", registry=registry, chain=["grammar"], regex="[a-z]+")
    with pytest.raises(BardtermError, match="one text at a time"):
        generate(gpt2, tokenizer, "Word:", setup, max_new_tokens=5)
