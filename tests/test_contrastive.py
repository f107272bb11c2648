"""Contrastive search against transformers 4.x's own.

transformers 5 no longer has contrastive search, so the expected ids come from transformers 4.55 in a separate
environment: tests/reference/contrastive_reference.py builds the model (weights from a seeded generator, the
same in both versions: the checksum below says so), ran `generate(penalty_alpha=..., top_k=...)`, and printed
what is pasted here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from bardterm.engine import Generation
from bardterm.registry import build

REPO = Path(__file__).resolve().parent.parent

# From `python tests/reference/contrastive_reference.py` under transformers 4.55.4 and torch 2.13.0.
CHECKSUM = 12368.048333
EXPECTED = {  # (prompt index, top_k, penalty_alpha, repetition_penalty, max_new_tokens): generated ids
    (0, 4, 0.6, 1.0, 24): [53, 53, 53, 83, 33, 53, 53, 53, 53, 53, 6, 77, 53, 85, 6, 34, 33, 51, 56, 53, 21, 90, 90,
                           90],
    (1, 3, 0.3, 1.0, 24): [15, 56, 56, 56, 53, 64, 56, 64, 30, 30, 53, 30, 30, 53, 53, 30, 33, 30, 53, 53, 53, 53, 53,
                           53],
    (2, 6, 0.9, 1.0, 24): [15, 53, 87, 88, 33, 90, 0],  # ends at the end-of-text token, 0
    (0, 5, 0.5, 1.3, 24): [53, 51, 85, 56, 64, 46, 83, 90, 53, 64, 30, 79, 82, 56, 90, 56, 15, 90, 90, 76, 90, 6, 21,
                           53],
}


def reference_script():
    spec = importlib.util.spec_from_file_location("contrastive_reference",
                                                  REPO / "tests" / "reference" / "contrastive_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class IdTokenizer:
    """Token ids in, text out: enough of a tokenizer for the engine to run the reference model on given ids."""

    eos_token_id = bos_token_id = 0

    def __init__(self, prompt: list[int]):
        self.prompt = prompt

    def __call__(self, text, return_tensors="pt"):
        return {"input_ids": torch.tensor([self.prompt])}

    def decode(self, ids, **kwargs):
        return "".join(chr(0x100 + i) for i in ids)

    def convert_ids_to_tokens(self, ids):
        return [chr(0x100 + i) for i in ids]


@pytest.fixture(scope="module")
def reference():
    script = reference_script()
    model = script.build_model()
    assert script.checksum(model) == CHECKSUM  # the same weights transformers 4.55 ran
    return script, model


@pytest.mark.parametrize("case", EXPECTED)
def test_token_ids_match_transformers_4(reference, case):
    script, model = reference
    prompt, top_k, alpha, penalty, new = case
    chain = "repetition_penalty" if penalty != 1.0 else ""
    settings = {"repetition_penalty": penalty} if penalty != 1.0 else {}
    setup = build("contrastive", chain=chain, top_k=top_k, penalty_alpha=alpha, **settings)
    generation = Generation(model, IdTokenizer(script.PROMPTS[prompt][0]), "", setup, max_new_tokens=new)
    for _ in generation:
        pass
    assert generation.result.token_ids == EXPECTED[case]


def test_penalty_alpha_0_is_greedy_search(tiny_gpt2, tiny_tokenizer):
    def ids(decoder, **settings):
        generation = Generation(tiny_gpt2, tiny_tokenizer, "ROMEO:", build(decoder, chain="", **settings),
                                max_new_tokens=16)
        for _ in generation:
            pass
        return generation.result.token_ids

    assert ids("contrastive", penalty_alpha=0.0, top_k=5) == ids("greedy")
    assert ids("contrastive", top_k=1) == ids("greedy")


def test_it_is_written_only_against_the_public_api():
    source = (REPO / "bardterm" / "decoders" / "contrastive.py").read_text()
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert imports == ["import torch", "from bardterm import Hypothesis, Param, Selector, hookimpl"]


def test_top_k_is_its_own_and_the_top_k_processor_keeps_working():
    assert build("contrastive", top_k=8).selector.top_k == 8
    assert build("contrastive", top_k=8).chain == []
    assert build("focused").chain[1].settings() == {"top_k": 40}


# On the shipped checkpoint it does not loop on the study notes' prompt: test_repetition.py judges every built-in.
