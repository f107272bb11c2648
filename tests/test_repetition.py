"""The degenerate-repetition measure, and the shipped checkpoint judged by it with every built-in decoder."""

from __future__ import annotations

import pytest

from bardterm.repetition import DEGENERATE, is_degenerate, tail_repetition
from conftest import REPO

SHIPPED = REPO / "checkpoints" / "shakespeare"


def built_in_decoders() -> list[str]:
    from bardterm.registry import get_registry

    return get_registry().built_ins()


FRESH = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer the slings "
         "and arrows of outrageous fortune, or to take arms against a sea of troubles and by opposing end them.")


@pytest.mark.parametrize("text, expected", [
    ("beananananan " * 40, 1.0),  # the study notes' failure
    (FRESH, 0.0),
    ("my lord, " * 60, 1.0),
    ("", 0.0),
    ("one two", 0.0),
])
def test_tail_repetition(text, expected):
    assert tail_repetition(text) == pytest.approx(expected)


def test_a_text_that_falls_into_a_loop_halfway_is_degenerate_and_one_that_quotes_itself_once_is_not():
    looping = FRESH + " " + "And I will not, my lord. " * 12
    assert tail_repetition(looping) > DEGENERATE and is_degenerate(looping)
    quoting = FRESH + " " + " ".join(FRESH.split()[:6]) + " but then it went on to say something else entirely."
    assert 0 < tail_repetition(quoting) < DEGENERATE and not is_degenerate(quoting)


@pytest.fixture(scope="module")
def shipped():
    from bardterm.models import load_checkpoint

    return load_checkpoint(SHIPPED, device="cpu")


def test_the_built_ins_are_all_judged():
    assert {"greedy", "beam", "contrastive", "sample", "temperature", "top_k", "top_p", "repetition_penalty", "no_repeat_ngram",
            "creative"} <= set(built_in_decoders())


@pytest.mark.parametrize("decoder", built_in_decoders())
def test_no_built_in_decoder_falls_into_a_loop_on_the_study_notes_prompt(shipped, decoder):
    from bardterm.engine import Generation
    from bardterm.registry import build

    generation = Generation(shipped.model, shipped.tokenizer, "To be, or not to be", build(decoder),
                            max_new_tokens=200, seed=1)
    for _ in generation:
        pass
    text = generation.result.text
    assert len(text.split()) > 30, text
    assert not is_degenerate(text), f"{decoder} loops (tail repetition {tail_repetition(text):.2f}):\n{text}"


def test_dry_and_xtc_break_the_loop_plain_greedy_falls_into(shipped):
    """What DRY and XTC exist for: plain greedy decoding repeats "CORIOLANUS:\\nI am a word." until the end;
    with either of them in the chain the same greedy search writes on (tail repetition 0.08 with DRY)."""
    from bardterm.engine import generate
    from bardterm.registry import build

    def greedy_through(*chain: str) -> str:
        setup = build("greedy", chain=list(chain))
        return generate(shipped.model, shipped.tokenizer, "To be, or not to be", setup, max_new_tokens=200,
                        seed=1).text

    assert is_degenerate(greedy_through())
    for chain in (["dry"], ["xtc"]):
        text = greedy_through(*chain)
        assert len(text.split()) > 30 and not is_degenerate(text), f"{chain}: {text}"
