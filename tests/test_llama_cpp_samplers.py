"""top_n_sigma, xtc and dry against llama.cpp's definitions: hand-made cases whose result is worked out here,
and random cases against the plain Python rendering of llama.cpp's C++ in `llama_cpp_samplers.py`."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import llama_cpp_samplers as ref
from bardterm.decoders.dry import DEFAULT_BREAKERS, Dry, breaker_sequences, parse_breakers
from bardterm.decoders.top_n_sigma import TopNSigma
from bardterm.decoders.xtc import Xtc, exclude_top_choices
from bardterm.params import InvalidParameter
from conftest import make_tokenizer

INF = math.inf


def kept(scores: torch.Tensor) -> list[int]:
    return torch.isfinite(scores[0]).nonzero().flatten().tolist()


def as_reference(cur: list[list], vocab: int) -> torch.Tensor:
    """A reference candidate array back as a row of scores: tokens not in it are -inf."""
    row = torch.full((vocab,), -INF)
    for token, logit, _ in cur:
        row[token] = logit
    return row


def random_rows(vocab: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(6, vocab, generator=generator) * (1 + 3 * torch.rand(6, 1, generator=generator))
    out = torch.rand(6, vocab, generator=generator) < 0.4
    out[:, 0] = False
    return scores.masked_fill(out, -INF)


# top-n-sigma

def test_top_n_sigma_keeps_what_is_within_n_deviations_of_the_top():
    # Logits 0..4: mean 2, population variance (4+1+0+1+4)/5 = 2, so sigma = 1.414.
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])
    assert kept(TopNSigma(top_n_sigma=1.0)(None, logits)) == [3, 4]  # cut at 4 - 1.414 = 2.59
    assert kept(TopNSigma(top_n_sigma=2.0)(None, logits)) == [2, 3, 4]  # cut at 4 - 2.83 = 1.17


def test_top_n_sigma_leaves_ruled_out_tokens_out_of_the_deviation():
    # Only 0, 2, 4 count: mean 2, variance 8/3, sigma 1.633. n = 1.5 cuts at 4 - 2.449 = 1.55.
    logits = torch.tensor([[-INF, 0.0, 2.0, 4.0, -INF]])
    assert kept(TopNSigma(top_n_sigma=1.5)(None, logits)) == [2, 3]
    assert kept(TopNSigma(top_n_sigma=1.0)(None, logits)) == [3]  # cut at 2.37


def test_top_n_sigma_keeps_the_same_tokens_at_any_temperature():
    logits = random_rows(1000, 3)
    for temperature in (0.3, 1.0, 4.0):
        assert torch.equal(torch.isfinite(TopNSigma(top_n_sigma=1.0)(None, logits / temperature)),
                           torch.isfinite(TopNSigma(top_n_sigma=1.0)(None, logits)))


@pytest.mark.parametrize("vocab", [2, 50, 4096])
@pytest.mark.parametrize("n", [0.5, 1.0, 2.5])
def test_top_n_sigma_matches_llama_cpp(vocab, n):
    scores = random_rows(vocab, int(n * 10) + vocab)
    ours = TopNSigma(top_n_sigma=n)(None, scores)
    for row in range(scores.shape[0]):
        expected = ref.top_n_sigma(ref.candidates(scores[row].tolist()), n)
        assert torch.equal(ours[row], as_reference(expected, vocab))


# XTC

@pytest.mark.parametrize("threshold, expected", [
    (0.25, [1, 2, 3]),  # 0.4 and 0.3 are top choices: 0.4 goes, 0.3 (the least likely of them) stays
    (0.15, [2, 3]),  # 0.4, 0.3 and 0.2 are: only 0.2 stays of them
    (0.35, [0, 1, 2, 3]),  # only 0.4 is: with a single viable token XTC leaves the step alone
    (0.5, [0, 1, 2, 3]),  # none is
])
def test_xtc_removes_every_top_choice_but_the_least_likely(threshold, expected):
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    assert kept(exclude_top_choices(probs.log(), threshold)) == expected
    reference = ref.xtc(ref.candidates(probs.log()[0].tolist()), 1.0, threshold, chance=0.0)
    assert sorted(c[0] for c in reference) == expected


def run_with_seed(seed: int) -> SimpleNamespace:
    return SimpleNamespace(generator=torch.Generator().manual_seed(seed), tokenizer=None)


def test_xtc_acts_with_its_probability_and_the_same_seed_gives_the_same_coins():
    scores = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log().expand(2000, -1)
    acted = {}
    for probability in (0.0, 0.3, 1.0):
        xtc = Xtc(xtc_probability=probability, xtc_threshold=0.25)
        xtc.start_run(run_with_seed(7))
        out = xtc(None, scores)
        acted[probability] = torch.isinf(out[:, 0])
        assert torch.equal(out[~acted[probability]], scores[~acted[probability]])  # otherwise untouched
    assert acted[0.0].sum() == 0 and acted[1.0].all()
    assert 0.25 < acted[0.3].float().mean() < 0.35
    again = Xtc(xtc_probability=0.3, xtc_threshold=0.25)
    again.start_run(run_with_seed(7))
    assert torch.equal(torch.isinf(again(None, scores)[:, 0]), acted[0.3])


@pytest.mark.parametrize("threshold", [0.01, 0.05, 0.1, 0.3])
def test_xtc_matches_llama_cpp(threshold):
    scores = random_rows(40, int(threshold * 100)) * 0.5
    ours = exclude_top_choices(scores, threshold)
    for row in range(scores.shape[0]):
        expected = ref.xtc(ref.candidates(scores[row].tolist()), 1.0, threshold, chance=0.0)
        assert torch.equal(ours[row], as_reference(expected, 40))


# DRY

# The example in llama.cpp's comments: in "a b c c b c y a b c" the end "a b c" also ends at the first "c"
# (3 tokens; the next token there was "c") and "b c" ends at the third "c" (2 tokens; next "y").
A, B, C, Y = 1, 2, 3, 9
EXAMPLE = [A, B, C, C, B, C, Y, A, B, C]


def dry_penalties(tokens, breakers=None, **settings) -> dict[int, float]:
    dry = Dry(**{"dry_multiplier": 1.0, "dry_base": 2.0, **settings})
    dry.breakers = breakers or {}
    scores = torch.zeros(1, 16)
    out = dry(torch.tensor([tokens]), scores)
    return {token: -float(out[0, token]) for token in range(16) if out[0, token] != 0}


def test_dry_penalises_the_token_that_would_extend_a_repeat_exponentially_in_its_length():
    # c would make a repeat of 4 (3 past the allowed 2: 1 * 2 ** (3 - 2)); y one of 3 (2 ** 0).
    assert dry_penalties(EXAMPLE) == {C: 2.0, Y: 1.0}
    assert dry_penalties(EXAMPLE, dry_multiplier=0.5, dry_base=3.0) == {C: 1.5, Y: 0.5}


def test_dry_allowed_length_lets_short_repeats_go():
    assert dry_penalties(EXAMPLE, dry_allowed_length=3) == {C: 1.0}
    assert dry_penalties(EXAMPLE, dry_allowed_length=4) == {}
    assert dry_penalties([A, B, C, A, B]) == {C: 1.0}
    assert dry_penalties([A, B, C, A, B], dry_allowed_length=3) == {}


def test_dry_looks_only_at_the_last_n_tokens():
    assert dry_penalties(EXAMPLE, dry_penalty_last_n=4) == {}  # "y a b c": nothing repeats
    assert dry_penalties(EXAMPLE, dry_penalty_last_n=7) == {Y: 1.0}  # "c b c y a b c": only "b c" repeats
    assert dry_penalties(EXAMPLE, dry_penalty_last_n=0) == {}  # off


def test_a_sequence_breaker_ends_a_repeat_and_is_never_penalised_itself():
    # "b" as a breaker: its latest occurrence is 1 token from the end, so no repeat can be longer than 1.
    assert dry_penalties(EXAMPLE, breakers={B: [()]}) == {}
    # "y" as a breaker: repeats may be 3 long (after the y), so c is penalised as before, but y itself is not.
    assert dry_penalties(EXAMPLE, breakers={Y: [()]}) == {C: 2.0}


def test_a_breaker_spelled_by_two_tokens_ends_a_repeat_only_when_both_are_there():
    # "x h t a b" repeats, followed by c the first time: 5 tokens, penalty 2 ** 3. With "h t" as a breaker the
    # repeat is cut after it: "a b", 2 tokens, penalty 2 ** 0. "h u" is not in the text: no effect.
    X, H, T, U = 4, 5, 6, 7
    tokens = [X, H, T, A, B, C, 8, X, H, T, A, B]
    assert dry_penalties(tokens) == {C: 8.0}
    assert dry_penalties(tokens, breakers={H: [(T,)]}) == {C: 1.0}
    assert dry_penalties(tokens, breakers={H: [(U,)]}) == {C: 8.0}


def test_dry_penalty_is_clamped_before_it_overflows():
    penalties = dry_penalties([A, B] * 100, dry_base=10.0)
    assert math.isfinite(penalties[A]) and penalties[A] == pytest.approx(1e38, rel=1e-6)  # 10 ** 38, not 10 ** 196


def fake_encode(pieces):
    """Greedy longest-match tokenization over `pieces`, enough for hand-made vocabularies."""
    def encode(text):
        ids = []
        while text:
            token = max((i for i, p in enumerate(pieces) if p and text.startswith(p)), key=lambda i: len(pieces[i]))
            ids.append(token)
            text = text[len(pieces[token]):]
        return ids
    return encode


def test_breaker_sequences_finds_every_way_the_tokens_spell_a_breaker():
    pieces = ["ROM", "EO", "EO:", ":", "O", "x", "ROMEO", "ROMEO:\n", "R", "M", "E"]
    found = breaker_sequences(pieces, fake_encode(pieces), ["ROMEO:"])
    assert found == {
        0: [(2,)],  # "ROM", then "EO:" (the rest, tokenized)
        6: [(3,)],  # "ROMEO", then ":"
        7: [()],  # "ROMEO:\n" holds the whole breaker: a breaker on its own
        8: [(4, 9, 2)],  # "R", then "O", "M", "EO:"
    }
    expected = {(head, tail) for head, tails in found.items() for tail in tails}
    assert set(ref.dry_breakers(pieces, fake_encode(pieces), ["ROMEO:"])) == expected


def test_breakers_are_json_strings_and_a_bad_list_is_refused_with_a_hint():
    assert parse_breakers(DEFAULT_BREAKERS) == ["\n", ":", '"', "*"]
    assert parse_breakers('"\\nJULIET:", "ROMEO"') == ["\nJULIET:", "ROMEO"]
    for bad in ("\\n, :", '"a", 3', '"unclosed'):
        with pytest.raises(InvalidParameter, match="dry_sequence_breakers.*JSON strings"):
            Dry(dry_sequence_breakers=bad)


def test_dry_finds_the_breakers_in_a_real_tokenizer_as_llama_cpp_does():
    tokenizer = make_tokenizer()
    dry = Dry()
    dry.start_run(SimpleNamespace(tokenizer=tokenizer))
    newline = tokenizer.encode("\n", add_special_tokens=False)
    assert newline and () in dry.breakers[newline[0]]
    pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], clean_up_tokenization_spaces=False)
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    breakers = parse_breakers(DEFAULT_BREAKERS + ', "ROMEO:", "wherefore art"')
    ours = breaker_sequences(pieces, encode, breakers)
    assert {(h, t) for h, tails in ours.items() for t in tails} == set(ref.dry_breakers(pieces, encode, breakers))
    assert any(len(t) > 0 for tails in ours.values() for t in tails)  # some breakers span several tokens


def random_text(seed: int) -> torch.Tensor:
    """Tokens from a small alphabet (many repeats), token 0 rare (it is a breaker in some cases); now and then
    a loop back to the start."""
    generator = torch.Generator().manual_seed(seed)
    alphabet = 3 + seed % 5
    weights = torch.ones(alphabet)
    weights[0] = 0.1
    length = int(torch.randint(3, 80, (1,), generator=generator))
    tokens = torch.multinomial(weights, length, replacement=True, generator=generator)
    return torch.cat([tokens, tokens[:20]]) if seed % 3 == 0 else tokens


@pytest.mark.parametrize("seed", range(16))
def test_dry_matches_llama_cpp_on_random_texts(seed):
    tokens = random_text(seed)
    vocab = int(tokens.max()) + 2
    breakers = {0: [()], 1: [(2,), (2, 2)]} if seed % 2 else {}
    settings = dict(dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=1 + seed % 3,
                    dry_penalty_last_n=[-1, 16, 40][seed % 3])
    scores = random_rows(vocab, seed)[:1]
    dry = Dry(**settings)
    dry.breakers = breakers
    ours = dry(tokens[None], scores)
    sequences = [(head, tail) for head, tails in breakers.items() for tail in tails]
    expected = ref.dry(ref.candidates(scores[0].tolist()), tokens.tolist(), sequences, 0.8, 1.75,
                       settings["dry_allowed_length"], settings["dry_penalty_last_n"], context_size=4096)
    assert torch.equal(ours[0], as_reference(expected, vocab))


def test_the_random_texts_give_dry_something_to_do():
    penalised = 0
    for seed in range(16):
        dry = Dry(dry_allowed_length=1 + seed % 3, dry_penalty_last_n=[-1, 16, 40][seed % 3])
        dry.breakers = {0: [()], 1: [(2,), (2, 2)]} if seed % 2 else {}
        penalised += bool(dry.penalties(random_text(seed)))
    assert penalised >= 10
