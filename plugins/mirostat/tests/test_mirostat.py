"""Tests for the mirostat plugin: truncation at mu, the feedback on mu, seeds, and end to end."""

import pytest
import torch

import bardterm_mirostat
from bardterm.engine import Generation
from bardterm.params import InvalidParameter
from bardterm.plugins import pm
from bardterm.registry import build


@pytest.fixture
def registry(register_plugin):
    """The registry with this plugin in it, installed or not (`register_plugin` is one of the fixtures that
    `bardterm.testing` gives every test: the plugin is registered for this test only)."""
    return register_plugin(bardterm_mirostat, "mirostat")


def selector(mu=None, **values):
    chosen = bardterm_mirostat.Mirostat.create(**values)
    chosen.mu = None if mu is None else torch.tensor([[mu]])
    return chosen


def zipf(vocab=1000):
    return (1.0 / torch.arange(1, vocab + 1)).log().unsqueeze(0)  # scores whose softmax is Zipf's law


def test_only_tokens_within_mu_bits_of_surprise_are_drawn():
    probs = torch.tensor([[0.6, 0.25, 0.1, 0.05]])  # surprise: 0.74, 2, 3.3, 4.3 bits
    generator = torch.Generator().manual_seed(0)
    drawn = set()
    for _ in range(200):
        mirostat = selector(mu=2.5)
        drawn.add(int(mirostat.choose(probs.log(), generator)))
    assert drawn == {0, 1}


def test_the_most_likely_token_stays_when_mu_is_below_every_surprise():
    mirostat = selector(mu=0.01, tau=3.0, eta=0.2)
    token = mirostat.choose(torch.tensor([[0.4, 0.35, 0.25]]).log(), torch.Generator().manual_seed(0))
    assert int(token) == 0
    # alone after truncation, it had probability 1: zero surprise, so mu rises by eta * tau
    assert mirostat.mu.item() == pytest.approx(0.01 + 0.2 * 3.0)


def test_mu_moves_by_eta_times_the_surprise_error():
    probs = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]])
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        mirostat = selector(mu=3.0, tau=2.0, eta=0.3)
        token = int(mirostat.choose(probs.log(), generator))
        kept = probs[0][-probs[0].log2() <= 3.0]
        observed = -torch.log2(probs[0, token] / kept.sum())
        assert mirostat.mu.item() == pytest.approx(3.0 - 0.3 * (observed.item() - 2.0), abs=1e-5)


@pytest.mark.parametrize("tau", [3.0, 6.0])
def test_average_surprise_settles_at_tau(tau):
    mirostat = selector(tau=tau, eta=0.1)
    generator = torch.Generator().manual_seed(2)
    scores = zipf()
    observed = []
    for _ in range(3000):
        before = mirostat.mu.item() if mirostat.mu is not None else 2 * tau
        mirostat.choose(scores, generator)
        observed.append(tau - (mirostat.mu.item() - before) / mirostat.eta)  # invert mu's update
    assert sum(observed[1000:]) / 2000 == pytest.approx(tau, abs=0.25)


def test_draws_only_from_the_generator_it_is_given():
    scores = zipf()
    global_state = torch.get_rng_state()
    first = [int(selector(tau=5.0).choose(scores, torch.Generator().manual_seed(9))) for _ in range(5)]
    again = [int(selector(tau=5.0).choose(scores, torch.Generator().manual_seed(9))) for _ in range(5)]
    assert first == again
    assert torch.equal(torch.get_rng_state(), global_state)


def test_found_by_the_registry_with_its_plugin_name(registry):
    assert registry.decoders["mirostat"] is bardterm_mirostat.Mirostat
    assert registry.plugin_of["mirostat"] == pm.get_name(bardterm_mirostat)


@pytest.mark.parametrize("setting", [{"tau": 0}, {"tau": -1}, {"eta": 0}, {"eta": 1.5}, {"tau": "high"}])
def test_refuses_invalid_parameters(registry, setting):
    with pytest.raises(InvalidParameter, match=next(iter(setting))):
        build("mirostat", registry=registry, **setting)


def test_selects_from_what_the_processor_chain_leaves(registry):
    setup = build("mirostat", registry=registry, tau=4.0, top_k=1)
    assert (setup.selector.name, setup.selector.tau, [p.name for p in setup.chain]) == ("mirostat", 4.0, ["top_k"])


def test_generation_repeats_with_a_seed_and_starts_each_run_afresh(registry, tiny_gpt2, tiny_tokenizer):
    setup = build("mirostat", registry=registry, tau=3.0)

    first, second, other = (_run(tiny_gpt2, tiny_tokenizer, setup, seed) for seed in (5, 5, 6))
    assert first == second  # the same setup again: mu starts from 2 * tau, not where the last run left it
    assert first != other
    assert len(first) == 12


def test_generation_with_top_k_1_is_greedy(registry, tiny_gpt2, tiny_tokenizer):
    greedy = _run(tiny_gpt2, tiny_tokenizer, build("greedy", registry=registry), seed=0)
    assert _run(tiny_gpt2, tiny_tokenizer, build("mirostat", registry=registry, top_k=1), seed=0) == greedy


def _run(model, tiny_tokenizer, setup, seed):
    generation = Generation(model, tiny_tokenizer, "JULIET:", setup, max_new_tokens=12, seed=seed)
    for _ in generation:
        pass
    return generation.result.token_ids
