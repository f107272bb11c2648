"""How repetitive a generated text is: the check for degenerate loops ("beananananan…", "my lord, my lord, …").

A text *falls into* a loop when its later part only repeats what it already said. So the measure looks at the
second half of the words: the share of its word n-grams that already appeared earlier in the text. Fresh text
scores near 0 (a play's speaker names repeat, so about 0.1 is normal); a text stuck in a loop scores near 1.
"""

from __future__ import annotations

DEGENERATE = 0.5
"""A tail repetition at or above this is a degenerate loop: most of the second half is said for the second time."""


def tail_repetition(text: str, n: int = 4) -> float:
    """Share of word n-grams starting in the second half of `text` that already occurred before them."""
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if len(grams) < 2:
        return 0.0
    seen = set(grams[:len(grams) // 2])
    repeats = 0
    for gram in grams[len(grams) // 2:]:
        repeats += gram in seen
        seen.add(gram)
    return repeats / (len(grams) - len(grams) // 2)


def is_degenerate(text: str) -> bool:
    return tail_repetition(text) >= DEGENERATE
