"""Logit bias: add a fixed amount to chosen tokens' logits, or ban them, as OpenAI's API (`logit_bias`) and
llama.cpp (`--logit-bias`, and the server's `logit_bias` with strings) take it.

    --logit-bias " Romeo=-5, 50256=-inf, JULIET=3"

Entries are separated by commas; each is KEY=BIAS. A KEY of digits is a token id (spaces around it do not count); any other KEY is text, taken
exactly as written (spaces included: " Romeo" is the word after a space, as GPT-2-style tokenizers split it),
and its bias goes to every token of its tokenization, as llama.cpp's server does. Write a KEY in double quotes
(JSON) for text with a comma or an equals sign, or of digits: `","=-inf` bans the comma. A BIAS of -inf bans.
"""

from __future__ import annotations

import json
import math
import re

import torch

from bardterm import InvalidParameter, Param, Processor, hookimpl

_ENTRY = re.compile(r'(\s*"(?:[^"\\]|\\.)*"\s*|[^,="]*)=([^,]*)(?:,|$)')  # KEY=BIAS, KEY maybe quoted
_EXAMPLE = '" Romeo=-5, 50256=-inf"'


def parse_logit_bias(text: str) -> list[tuple[int | str, float]]:
    """`" Romeo=-5, 50256=-inf"` -> [(" Romeo", -5.0), (50256, -inf)]: token ids as ints, text as str."""
    entries, at = [], 0
    while at < len(text):
        match = _ENTRY.match(text, at)
        if match is None or not match.group(1):
            raise _invalid(text, f"expected KEY=BIAS at {text[at:at + 20]!r}")
        key, bias = match.group(1), match.group(2).strip()
        try:
            value = float(bias)
        except ValueError:
            raise _invalid(text, f"{bias!r} is not a number (-inf bans)") from None
        if math.isnan(value) or value == math.inf:
            raise _invalid(text, f"bias {bias} is not allowed: give a number, or -inf to ban")
        if key.strip().startswith('"'):
            key = json.loads(key)
        elif key.strip().isdigit():
            key = int(key)
        entries.append((key, value))
        at = match.end()
    return entries


def _invalid(text: str, problem: str) -> InvalidParameter:
    return InvalidParameter(f"invalid logit_bias={text!r}: {problem} (write KEY=BIAS, separated by commas, "
                            f"e.g. {_EXAMPLE})")


class LogitBias(Processor):
    name = "logit_bias"
    help = "Add a bias to chosen tokens' logits, or ban them (-inf), by token id or by text."
    order = 5  # first, as in llama.cpp: the samplers after it see the biased distribution
    params = (
        Param("logit_bias", str, "", f"KEY=BIAS pairs separated by commas; a KEY is a token id or text, e.g. "
              f"{_EXAMPLE}.", check=parse_logit_bias),
    )

    def __init__(self, **values):
        super().__init__(**values)
        self.entries = parse_logit_bias(self.logit_bias)
        self.biases: dict[int, float] = {}
        self._tokenizer = None

    def start_run(self, run):
        if run.tokenizer is not self._tokenizer:
            self.biases = token_biases(self.entries, run.tokenizer)
            self._tokenizer = run.tokenizer

    def __call__(self, input_ids, scores):
        if not self.biases:
            return scores
        ids = torch.tensor(list(self.biases), device=scores.device)
        bias = torch.tensor(list(self.biases.values()), dtype=scores.dtype, device=scores.device)
        return scores.index_add(-1, ids, bias.expand(scores.shape[0], -1))


def token_biases(entries: list[tuple[int | str, float]], tokenizer) -> dict[int, float]:
    """The bias of each token id: a text's bias goes to each of its tokens; two entries for a token add up."""
    biases: dict[int, float] = {}
    for key, bias in entries:
        if isinstance(key, int):
            if key >= len(tokenizer):
                raise InvalidParameter(f"invalid logit_bias: token id {key} is not in the vocabulary "
                                       f"(0 to {len(tokenizer) - 1})")
            ids = [key]
        else:
            ids = tokenizer.encode(key, add_special_tokens=False)
            if not ids:
                raise InvalidParameter(f"invalid logit_bias: {key!r} gives no tokens")
        for token in ids:
            biases[token] = biases.get(token, 0.0) + bias
    return biases


@hookimpl
def register_decoders(register):
    register(LogitBias)
