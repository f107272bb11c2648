"""Tests for the min-p plugin: the rule itself, against transformers' reference, and end to end."""

import pytest
import torch
from transformers import MinPLogitsWarper

import bardterm_min_p
from bardterm.engine import Generation
from bardterm.params import InvalidParameter
from bardterm.plugins import pm
from bardterm.registry import build


@pytest.fixture
def registry(register_plugin):
    """The registry with this plugin in it, installed or not (`register_plugin` is one of the fixtures that
    `bardterm.testing` gives every test: the plugin is registered for this test only)."""
    return register_plugin(bardterm_min_p, "min_p")


def test_keeps_exactly_the_tokens_at_least_min_p_times_the_top_probability():
    probs = torch.tensor([[0.5, 0.3, 0.1, 0.06, 0.04]])
    scores = probs.log()
    out = bardterm_min_p.MinP(min_p=0.25)(None, scores)  # threshold 0.125: the first two stay
    kept = torch.isfinite(out)
    assert kept.tolist() == (probs >= 0.25 * probs.max()).tolist()
    assert torch.equal(out[kept], scores[kept])  # survivors keep their scores


def test_cuts_hard_when_confident_and_keeps_many_when_unsure():
    confident = torch.tensor([[8.0] + [0.0] * 99])
    unsure = torch.zeros(1, 100) + torch.linspace(0, 0.5, 100)
    processor = bardterm_min_p.MinP(min_p=0.1)
    assert torch.isfinite(processor(None, confident)).sum() == 1
    assert torch.isfinite(processor(None, unsure)).sum() == 100


@pytest.mark.parametrize("min_p, keep", [(0.05, 1), (0.3, 1), (0.9, 3), (1.0, 5)])
def test_matches_the_transformers_reference(min_p, keep):
    scores = torch.randn(4, 300, generator=torch.Generator().manual_seed(7)) * 3
    ours = bardterm_min_p.MinP(min_p=min_p, min_tokens_to_keep=keep)(None, scores)
    reference = MinPLogitsWarper(min_p=min_p, min_tokens_to_keep=keep)(None, scores)
    assert torch.equal(ours, reference)


def test_min_tokens_to_keep_wins_over_the_threshold():
    scores = torch.tensor([[10.0, 0.0, -1.0, -2.0, -3.0]])
    out = bardterm_min_p.MinP(min_p=1.0, min_tokens_to_keep=3)(None, scores)
    assert torch.isfinite(out).tolist() == [[True, True, True, False, False]]


def test_found_by_the_registry_with_its_plugin_name(registry):
    assert registry.decoders["min_p"] is bardterm_min_p.MinP
    assert registry.plugin_of["min_p"] == pm.get_name(bardterm_min_p)
    assert registry.presets["min_p_hot"].plugin == pm.get_name(bardterm_min_p)


def test_decoder_min_p_builds_sampling_after_min_p(registry):
    setup = build("min_p", registry=registry, min_p=0.2)
    assert setup.selector.name == "sample"
    assert [(p.name, p.min_p) for p in setup.chain] == [("min_p", 0.2)]


def test_preset_applies_temperature_then_min_p(registry):
    setup = build("min_p_hot", registry=registry)
    assert [p.name for p in setup.chain] == ["temperature", "min_p"]
    assert (setup.chain[0].temperature, setup.chain[1].min_p) == (1.5, 0.1)


@pytest.mark.parametrize("value", [-0.1, 1.5, "lots", float("nan")])
def test_refuses_an_invalid_min_p(registry, value):
    with pytest.raises(InvalidParameter, match="min_p"):
        build("min_p", registry=registry, min_p=value)


def test_generation_only_picks_tokens_min_p_allows_and_repeats_with_a_seed(registry, tiny_gpt2, tiny_tokenizer):
    setup = build("min_p", registry=registry, min_p=0.9)
    runs = [Generation(tiny_gpt2, tiny_tokenizer, "ROMEO:", setup, max_new_tokens=8, seed=3) for _ in range(2)]
    for run in runs:
        list(run)
    tokens = runs[0].result.token_ids
    assert tokens == runs[1].result.token_ids
    prompt = tiny_tokenizer("ROMEO:", return_tensors="pt")["input_ids"][0].tolist()
    with torch.no_grad():
        for step, token in enumerate(tokens):
            logits = tiny_gpt2(torch.tensor([prompt + tokens[:step]])).logits[0, -1]
            probs = torch.softmax(logits.float(), dim=-1)
            assert probs[token] >= 0.9 * probs.max() * (1 - 1e-5), f"step {step} picked a token min-p removes"
