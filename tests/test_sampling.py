"""Sampling: seeded, reproducible, and drawing from exactly the distribution the processor chain leaves."""

import math
from types import SimpleNamespace

import pytest
import torch

from bardterm.engine import generate
from bardterm.registry import build


PROMPT = "To be, or not"


@pytest.fixture(params=["gpt2", "llama"])
def model(request):
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("settings", [{"top_k": 1}, {"top_p": 1e-6}, {"temperature": 1.5, "top_k": 1}])
def test_sampling_that_keeps_one_token_is_greedy(model, tokenizer, seed, settings):
    plain_greedy = build("greedy", chain=[])
    greedy = generate(model, tokenizer, PROMPT, plain_greedy, max_new_tokens=30).token_ids
    sampled = generate(model, tokenizer, PROMPT, build("sample", **settings), max_new_tokens=30, seed=seed)
    assert sampled.token_ids == greedy


def test_same_seed_same_text_different_seeds_differ(gpt2, tokenizer):
    runs = {seed: [generate(gpt2, tokenizer, PROMPT, build("sample"), max_new_tokens=30, seed=seed)
                   for _ in range(2)] for seed in (1, 2, 3)}
    for first, second in runs.values():
        assert first.token_ids == second.token_ids and first.text == second.text
    assert len({tuple(first.token_ids) for first, _ in runs.values()}) == 3


def test_sampling_is_not_greedy_without_a_seed_either(gpt2, tokenizer):
    greedy = generate(gpt2, tokenizer, PROMPT, build("greedy"), max_new_tokens=30).token_ids
    unseeded = [generate(gpt2, tokenizer, PROMPT, build("sample"), max_new_tokens=30).token_ids for _ in range(3)]
    assert any(ids != greedy for ids in unseeded)


class FixedLogitsModel(torch.nn.Module):
    """A toy causal LM whose next-token logits are always the same: every token is an independent draw."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.config = SimpleNamespace()  # no context limit
        self.generation_config = SimpleNamespace(eos_token_id=[])  # never stops early
        self.device = torch.device("cpu")

    def forward(self, input_ids, past_key_values=None, **options):
        seen = (past_key_values or 0) + input_ids.shape[1]
        logits = self.logits.expand(input_ids.shape[0], input_ids.shape[1], -1)
        return SimpleNamespace(logits=logits, past_key_values=seen, hidden_states=None)


def chi_square_p_value(statistic: float, dof: int) -> float:
    """Upper tail of the chi-square distribution (Wilson-Hilferty approximation; no scipy needed)."""
    z = ((statistic / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))


@pytest.mark.parametrize("settings", [{}, {"temperature": 0.6}, {"temperature": 1.8}, {"top_k": 4},
                                      {"top_p": 0.7}, {"temperature": 1.4, "top_k": 6, "top_p": 0.9}])
def test_sampled_frequencies_match_the_processed_softmax(tokenizer, settings):
    torch.manual_seed(1234)
    logits = torch.full((len(tokenizer),), -float("inf"))
    logits[1:9] = torch.randn(8) * 1.5  # eight possible tokens, uneven odds
    setup = build("sample", **settings) if settings else build("sample")
    expected = logits[None]
    for processor in setup.chain:
        expected = processor(torch.zeros((1, 1), dtype=torch.long), expected)
    expected = torch.softmax(expected[0], dim=-1)

    draws = 6000
    result = generate(FixedLogitsModel(logits), tokenizer, "x", setup, max_new_tokens=draws, seed=99)
    counts = torch.bincount(torch.tensor(result.token_ids), minlength=len(tokenizer)).double()
    assert counts.sum() == draws
    possible = expected > 0
    assert counts[~possible].sum() == 0  # tokens the chain ruled out are never drawn
    if possible.sum() > 1:
        expected_counts = expected[possible].double() * draws
        statistic = float(((counts[possible] - expected_counts) ** 2 / expected_counts).sum())
        assert chi_square_p_value(statistic, int(possible.sum()) - 1) > 1e-4, (statistic, settings)


def test_the_frequency_check_catches_a_wrong_distribution(tokenizer):
    """The same check on draws from one distribution against another must fail: the test has power."""
    torch.manual_seed(1234)
    logits = torch.full((len(tokenizer),), -float("inf"))
    logits[1:9] = torch.randn(8) * 1.5
    result = generate(FixedLogitsModel(logits), tokenizer, "x", build("sample"), max_new_tokens=6000, seed=99)
    counts = torch.bincount(torch.tensor(result.token_ids), minlength=len(tokenizer))[1:9].double()
    wrong = torch.softmax(logits[1:9] / 0.8, dim=-1).double() * 6000  # temperature 0.8 not applied by the run
    statistic = float(((counts - wrong) ** 2 / wrong).sum())
    assert chi_square_p_value(statistic, 7) < 1e-4


@pytest.mark.parametrize("uniform, expected", [(0.0, 1), (0.49, 1), (0.51, 2), (0.99, 4), (1.0, 4)])
def test_a_draw_at_either_end_lands_on_a_possible_token(monkeypatch, uniform, expected):
    """Inverse-CDF sampling: a uniform number at 0, or rounded up to the total, never picks a ruled-out token."""
    from bardterm.decoders import sample

    monkeypatch.setattr(sample.torch, "rand", lambda shape, **options: torch.full(shape, uniform))
    probs = torch.tensor([[0.0, 0.5, 0.25, 0.0, 0.25, 0.0, 0.0]])  # tokens 0, 3, 5 and 6 are ruled out
    assert int(sample.draw(probs, torch.Generator())[0]) == expected


@pytest.mark.parametrize("name, settings, reference", [
    ("temperature", {"temperature": 0.7}, lambda lp: lp.TemperatureLogitsWarper(0.7)),
    ("top_k", {"top_k": 5}, lambda lp: lp.TopKLogitsWarper(top_k=5)),
    ("top_p", {"top_p": 0.8}, lambda lp: lp.TopPLogitsWarper(top_p=0.8)),
    ("top_p", {"top_p": 1.0}, lambda lp: lp.TopPLogitsWarper(top_p=1.0)),
    ("repetition_penalty", {"repetition_penalty": 1.3}, lambda lp: lp.RepetitionPenaltyLogitsProcessor(penalty=1.3)),
])
def test_the_processors_written_out_equal_transformers_own(name, settings, reference):
    """temperature, top_k, top_p and repetition_penalty are written out (importing transformers' versions costs
    half a second of start-up): bit for bit theirs, ties and -inf included."""
    from transformers.generation import logits_process

    from bardterm.registry import get_registry

    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 50, generator=generator).round(decimals=1)  # rounding makes ties
    scores[0, :4] = -float("inf")
    input_ids = torch.randint(0, 50, (3, 9), generator=generator)
    ours = get_registry().decoders[name].create(**settings)
    expected = reference(logits_process)(input_ids, scores.clone())
    assert torch.equal(ours(input_ids, scores.clone()), expected)
