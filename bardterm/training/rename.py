"""Speaker renaming: each epoch, a share of the training text's characters get invented names.

Why: a play the model never saw (tiny_shakespeare's test split, mostly *The Tempest*) has speakers it never
saw. A model that has met only the training plays' names gives a new one almost no probability, and pays for
that again at every speech: on trial 14 the pieces of "PROSPERO" cost ~18 nats each at every one of its 63
speeches, and all-caps tokens carry 12% of the test loss against 2% of validation's. Renaming characters
afresh each epoch makes new names common in training, and copying a name from the context the way to predict
it (entity replacement as data augmentation).

A name is an all-caps word of a speaker tag (a line after a blank line that ends with ':') that the text never
uses in lower case, so titles and words ("KING", "ALL", "GREEN") keep their meaning. Each epoch each name is
renamed with probability `p`, consistently for the whole epoch, in capitals ("PROSPERO") and in dialogue
("Prospero"). Invented names come from a letter model of the real ones, so they look like names and split
into the same kind of pieces. Everything is a pure function of (seed, epoch), so resume stays exact.
`--rename-epochs N` renames in the first N epochs only (training/loop.py), so that the rest of the run
learns the real names again.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict

_TAG = re.compile(r"(?:^|(?<=\n\n))([A-Z][A-Za-z' ]{1,40}):\n")
_CAPS_WORD = re.compile(r"[A-Z][A-Z']{2,}")
_ROMAN = re.compile(r"[IVXL]+")


def speaker_names(text: str) -> list[str]:
    """All-caps names of the speakers in `text`, without titles or words the text also writes in lower case."""
    lower_words = set(re.findall(r"\b[a-z']+\b", text))
    names = set()
    for tag in _TAG.findall(text):
        for word in tag.split():
            if _CAPS_WORD.fullmatch(word) and not _ROMAN.fullmatch(word) and word.lower() not in lower_words:
                names.add(word)
    return sorted(names)


class SpeakerRenamer:
    def __init__(self, text: str, p: float):
        if not 0 <= p <= 1:
            raise ValueError(f"speaker renaming p must be in [0, 1], not {p}")
        self.p = p
        self.names = speaker_names(text)
        if p and not self.names:
            raise ValueError("the text has no speaker tags (NAME: on a line of its own) to rename")
        # Order-2 letter model of the names: which letters follow each pair ("^" starts, "$" ends a name).
        self.follow: dict[str, list[str]] = defaultdict(list)
        for name in self.names:
            padded = "^^" + name + "$"
            for i in range(len(padded) - 2):
                self.follow[padded[i:i + 2]].append(padded[i + 2])
        self.known = set(self.names)

    def invent(self, rng: random.Random) -> str:
        """A new name in capitals, 3-12 letters, drawn from the letter model and not one of the real names."""
        while True:
            name, pair = "", "^^"
            while len(name) < 13:
                letter = rng.choice(self.follow[pair])
                if letter == "$":
                    break
                name += letter
                pair = pair[1] + letter
            if 3 <= len(name) <= 12 and name not in self.known and "'" not in name:
                return name

    def rename(self, text: str, seed: int) -> str:
        """`text` with each name renamed with probability p, one invented name per name, everywhere."""
        if not self.p:
            return text
        rng = random.Random(seed)
        mapping: dict[str, str] = {}
        for name in self.names:
            if rng.random() < self.p:
                new = self.invent(rng)
                mapping[name], mapping[name.capitalize()] = new, new.capitalize()
        if not mapping:
            return text
        pattern = re.compile(r"\b(" + "|".join(sorted(mapping, key=len, reverse=True)) + r")\b")
        return pattern.sub(lambda match: mapping[match.group(1)], text)
