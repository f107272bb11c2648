"""DRY, "don't repeat yourself" (p-e-w, text-generation-webui pull request #5677, 2024), as llama.cpp defines it
(`llama_sampler_dry_apply` in src/llama-sampling.cpp, ported there from koboldcpp): penalise every token that
would extend a run of tokens already in the text, more the longer the run.

If the text ends with tokens that also occur earlier, the token that followed them back then would repeat the
run. A run of n tokens (n >= dry_allowed_length) costs that token dry_multiplier * dry_base ** (n -
dry_allowed_length) off its logit: the penalty grows exponentially, so a loop is broken within a few tokens
while short stock phrases go free. Sequence breakers (a newline, a colon, a quote, an asterisk by default)
end a run: whatever came before the latest breaker is not counted, so a play's "ROMEO:" lines and the
speaker names after each newline are not penalised. A breaker string may be split into several tokens, or
sit inside a longer one; `breaker_sequences` finds every token sequence that spells it, as llama.cpp does.

The runs are looked for in the whole text the model sees (prompt and generated tokens), or in its last
dry_penalty_last_n tokens.
"""

from __future__ import annotations

import json
import math

import torch

from bardterm import InvalidParameter, Param, Processor, hookimpl

DEFAULT_BREAKERS = '"\\n", ":", "\\"", "*"'  # text-generation-webui's and llama.cpp's defaults
MAX_BREAKER_CHARS = 40  # llama.cpp cuts longer breakers to this many characters
MAX_BREAKER_TAIL = 20  # ... and a breaker's tokens after its first to this many

Breakers = dict[int, list[tuple[int, ...]]]
"""A breaker's first token -> the token sequences that must follow it to spell a breaker (often just ())."""


def parse_breakers(text: str) -> list[str]:
    """`"\\n", ":", "\\""`: the breakers as JSON strings separated by commas, as text-generation-webui takes them."""
    try:
        breakers = json.loads(f"[{text}]")
    except json.JSONDecodeError as error:
        breakers, problem = None, error.msg
    else:
        problem = "each breaker must be a string in double quotes"
    if not isinstance(breakers, list) or not all(isinstance(b, str) for b in breakers):
        raise InvalidParameter(f"invalid dry_sequence_breakers={text!r}: {problem} "
                               f"(write them as JSON strings separated by commas, e.g. {DEFAULT_BREAKERS})")
    return [b[:MAX_BREAKER_CHARS] for b in breakers if b]


def breaker_sequences(pieces: list[str], encode, breakers: list[str]) -> Breakers:
    """Every token sequence that spells a breaker (llama.cpp's `get_overlapping_token_sequences`).

    `pieces[i]` is token i's text and `encode(text)` tokenizes text (llama.cpp compares bytes, this compares
    characters: the same for the usual one-byte breakers). A token that contains a whole breaker is
    a breaker on its own. A token that ends with the start of a breaker is the first of a sequence: it must be
    followed by the tokens of the breaker's rest.
    """
    found: Breakers = {}
    for breaker in breakers:
        for token, piece in enumerate(pieces):
            if breaker in piece:
                tails = [()]
            else:
                starts = (at for at in range(len(piece)) if breaker.startswith(piece[at:]))
                tails = [tuple(encode(breaker[len(piece) - at:])[:MAX_BREAKER_TAIL]) for at in starts]
            for tail in tails:
                if tail not in found.setdefault(token, []):
                    found[token].append(tail)
    return found


def run_limit(window: list[int], breakers: Breakers) -> int:
    """How many tokens at the end of `window` come after its latest breaker (all of them if there is none)."""
    for back in range(len(window)):  # back = how far from the end the breaker's first token is
        tails = breakers.get(window[-1 - back])
        if not tails:
            continue
        after = window[len(window) - back:]
        spelled = [len(tail) for tail in tails if len(tail) <= back and tuple(after[:len(tail)]) == tail]
        if spelled:
            return back - max(spelled)
    return len(window)


def run_lengths(window: torch.Tensor, limit: int, chunk: int = 32) -> torch.Tensor:
    """For each position p before the last: how many tokens ending at p equal the tokens that end the window,
    at most `limit`. Compares `chunk` tokens back at a time, for the positions whose run is still going: in
    ordinary text nearly every run ends at once (0.6 ms for 256 tokens, 2 ms for 2048, on one CPU thread); a
    text that loops takes limit / chunk passes (17 ms for 2048 tokens of loop)."""
    last = window.shape[0] - 1
    lengths = torch.zeros(last, dtype=torch.long, device=window.device)
    going = torch.arange(last, device=window.device)  # the positions whose run has not ended yet
    for first in range(0, min(limit, last), chunk):
        back = torch.arange(first, min(first + chunk, limit, last), device=window.device)
        earlier = going[:, None] - back  # (positions, chunk): the token `back` before each position
        same = (earlier >= 0) & (window[earlier.clamp(min=0)] == window[last - back])
        run = same.long().cumprod(dim=1)  # 1 while every token so far has matched
        lengths[going] += run.sum(dim=1)
        going = going[run[:, -1].bool()]
        if len(going) == 0:
            break
    return lengths


class Dry(Processor):
    name = "dry"
    help = "DRY: penalise tokens that would repeat a run already in the text, more the longer (p-e-w 2024)."
    order = 12  # after the repetition penalty, as llama.cpp orders its penalties and DRY
    params = (
        Param("dry_multiplier", float, 0.8, "The penalty for a run just past the allowed length (0: off).",
              min=0, max=100),
        Param("dry_base", float, 1.75, "How much the penalty grows with each further token of the run.",
              min=1, max=10),
        Param("dry_allowed_length", int, 2, "The longest run that goes unpenalised.", min=1, max=100),
        Param("dry_penalty_last_n", int, -1, "How many of the last tokens to look for runs in (-1: all).",
              min=-1, hint="-1 means the whole text"),
        Param("dry_sequence_breakers", str, DEFAULT_BREAKERS,
              "Strings that end a run, as JSON strings separated by commas.", check=parse_breakers),
    )

    def __init__(self, **values):
        super().__init__(**values)
        self.breaker_strings = parse_breakers(self.dry_sequence_breakers)
        self.breakers: Breakers = {}
        self._tokenizer = None
        # The penalty as llama.cpp computes it: from float32 settings, clamped so that it cannot overflow.
        self._multiplier, self._base = _float32(self.dry_multiplier), _float32(self.dry_base)
        self._max_exponent = int(88.7228391 / math.log(self._base)) if self._base > 1.000001 else 0

    def start_run(self, run):
        tokenizer = run.tokenizer
        if tokenizer is not self._tokenizer:  # a vocabulary scan (~0.1 s for 50k tokens): once per tokenizer
            pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], clean_up_tokenization_spaces=False)
            encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
            self.breakers = breaker_sequences(pieces, encode, self.breaker_strings)
            self._tokenizer = tokenizer

    def __call__(self, input_ids, scores):
        if self.dry_multiplier == 0 or self.dry_penalty_last_n == 0:
            return scores
        penalties = torch.zeros_like(scores)
        for row, ids in enumerate(input_ids):
            for token, penalty in self.penalties(ids).items():
                penalties[row, token] = penalty
        return scores - penalties

    def penalties(self, ids: torch.Tensor) -> dict[int, float]:
        """The penalty for each token that would extend a run at the end of `ids`."""
        window = ids if self.dry_penalty_last_n < 0 else ids[-self.dry_penalty_last_n:]
        if len(window) <= self.dry_allowed_length:
            return {}
        limit = run_limit(window.tolist(), self.breakers)
        if limit < self.dry_allowed_length:
            return {}
        lengths = run_lengths(window, limit)
        repeats = lengths >= self.dry_allowed_length
        longest: dict[int, int] = {}
        for token, length in zip(window[1:][repeats].tolist(), lengths[repeats].tolist()):
            longest[token] = max(length, longest.get(token, 0))
        penalties = {}
        for token, length in longest.items():
            if () in self.breakers.get(token, ()):
                continue  # a breaker token itself is never penalised
            exponent = length - self.dry_allowed_length
            if self._max_exponent:
                exponent = min(exponent, self._max_exponent)
            penalties[token] = self._multiplier * self._base ** exponent
        return penalties


def _float32(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float32))


@hookimpl
def register_decoders(register):
    register(Dry)
