"""min_p, typical, epsilon and eta: the same scores as transformers' warpers, bit for bit, on random logits of
several vocabulary sizes and scales, with some tokens already ruled out (-inf) by an earlier processor."""

from __future__ import annotations

import pytest
import torch
from transformers import EpsilonLogitsWarper, EtaLogitsWarper, MinPLogitsWarper, TypicalLogitsWarper

from bardterm.decoders.epsilon import Epsilon
from bardterm.decoders.eta import Eta
from bardterm.decoders.min_p import MinP
from bardterm.decoders.typical import Typical

VOCABULARIES = [2, 7, 300, 4096, 50257]


def random_scores(vocab: int, seed: int, ruled_out: float) -> torch.Tensor:
    """Four rows of logits: two scales of noise, one peaked row, one flat; a share of tokens set to -inf,
    never all of a row."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(4, vocab, generator=generator)
    scores[0] *= 3
    scores[2, int(torch.randint(vocab, (1,), generator=generator))] += 12  # one token holds nearly all the mass
    scores[3] *= 0.01
    out = torch.rand(4, vocab, generator=generator) < ruled_out
    out[torch.arange(4), scores.argmax(dim=-1)] = False
    return scores.masked_fill(out, -float("inf"))


CASES = [
    (MinP, "min_p", MinPLogitsWarper, "min_p", [0.0, 0.05, 0.3, 0.9, 1.0]),
    (Typical, "typical_p", TypicalLogitsWarper, "mass", [0.05, 0.2, 0.9, 0.99]),
    (Epsilon, "epsilon_cutoff", EpsilonLogitsWarper, "epsilon", [1e-5, 3e-4, 0.01, 0.2]),
    (Eta, "eta_cutoff", EtaLogitsWarper, "epsilon", [1e-5, 3e-4, 2e-3, 0.2]),
]


@pytest.mark.parametrize("ours, param, reference, reference_param, values", CASES, ids=[c[1] for c in CASES])
@pytest.mark.parametrize("vocab", VOCABULARIES)
@pytest.mark.parametrize("ruled_out", [0.0, 0.5])
def test_identical_to_the_transformers_warper(ours, param, reference, reference_param, values, vocab, ruled_out):
    for seed, value in enumerate(values):
        scores = random_scores(vocab, seed, ruled_out)
        expected = reference(**{reference_param: value})(None, scores.clone())
        got = ours(**{param: value})(None, scores.clone())
        assert torch.equal(got, expected), f"{param}={value}, vocabulary {vocab}"
        assert torch.isfinite(got).any(dim=-1).all()  # never rules out a whole row


@pytest.mark.parametrize("keep", [1, 3, 5])
def test_min_p_keeps_min_tokens_to_keep_as_transformers_does(keep):
    scores = random_scores(300, 1, 0.5)
    expected = MinPLogitsWarper(min_p=0.9, min_tokens_to_keep=keep)(None, scores)
    assert torch.equal(MinP(min_p=0.9, min_tokens_to_keep=keep)(None, scores), expected)


def test_min_p_keeps_exactly_the_tokens_at_least_min_p_times_the_top_probability():
    probs = torch.tensor([[0.5, 0.3, 0.1, 0.06, 0.04]])
    out = MinP(min_p=0.25)(None, probs.log())  # threshold 0.125: the first two stay
    assert torch.isfinite(out).tolist() == [[True, True, False, False, False]]
    assert torch.equal(out[:, :2], probs.log()[:, :2])  # survivors keep their scores


def test_typical_keeps_the_tokens_nearest_the_entropy_not_the_likeliest():
    # Entropy of [0.5, 0.2, 0.2, 0.1] is 1.22 nats; surprises are 0.69, 1.61, 1.61, 2.30. The two 0.2 tokens
    # are nearest (0.39), then the top token (0.53): typical_p 0.3 keeps only the two 0.2 tokens.
    out = Typical(typical_p=0.3)(None, torch.tensor([[0.5, 0.2, 0.2, 0.1]]).log())
    assert torch.isfinite(out).tolist() == [[False, True, True, False]]


def test_eta_cuts_less_when_the_distribution_is_flat():
    peaked = torch.tensor([[12.0] + [0.0] * 999])  # the top token holds 0.994, each other 6e-6
    flat = torch.linspace(0, 3, 1000)[None]
    eta = Eta(eta_cutoff=0.002)
    assert torch.isfinite(eta(None, peaked)).sum() == 1  # the floor is the full 0.002
    assert torch.isfinite(eta(None, flat)).sum() > 900  # exp(-entropy) is tiny: nearly nothing goes
