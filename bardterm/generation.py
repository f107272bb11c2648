"""Generation settings that are not decoder parameters, declared once: the command line (`generate`,
`bardterm`), `/set` in the app, the settings file and the engine all check them through these declarations,
so a bad value is refused with the same line everywhere."""

from __future__ import annotations

from bardterm.errors import BardtermError
from bardterm.params import Param

MAX_NEW_TOKENS = Param("max_new_tokens", int, 200, "the longest reply or continuation, in tokens", min=1)
MIN_NEW_TOKENS = Param("min_new_tokens", int, 0, "tokens to generate before the end of text may stop it", min=0)


def check_lengths(max_new_tokens, min_new_tokens=0) -> tuple[int, int]:
    """Both lengths converted and checked, and min <= max (the one check that spans both)."""
    longest, shortest = MAX_NEW_TOKENS.validate(max_new_tokens), MIN_NEW_TOKENS.validate(min_new_tokens)
    if shortest > longest:
        raise BardtermError(f"invalid min_new_tokens={shortest}: must be at most max_new_tokens ({longest})")
    return longest, shortest
