"""BPE-dropout (Provilkov, Emelianenko and Voita, 2020, "BPE-Dropout: Simple and Effective Subword Regularization").

While training, each merge that BPE could apply is skipped with probability `p`, at every merge step, so a
word is segmented into smaller pieces now and then. The model learns how the pieces of its vocabulary spell
words, not only the whole words of the training text, which is what an unseen play (the test split) needs.
Evaluation and generation use the tokenizer as it is (no dropout).

`tokenizers` has a BPE dropout of its own, but its random generator cannot be seeded. Here the segmentation of
epoch `e` is a pure function of (seed, e), so a run and its resume see the same tokens.
"""

from __future__ import annotations

import json
import random
import re


class BPEDropout:
    def __init__(self, tokenizer, p: float):
        if not 0 <= p < 1:
            raise ValueError(f"BPE-dropout p must be in [0, 1), not {p}")
        backend = tokenizer.backend_tokenizer
        model = json.loads(backend.to_str())["model"]
        if model.get("type") != "BPE" or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
            raise ValueError("BPE-dropout needs a plain byte-level BPE tokenizer")
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.vocab = model["vocab"]
        self.pre_tokenizer = backend.pre_tokenizer
        self.p = p
        # Special tokens in the text (`<|endoftext|>`) are one token each, as the tokenizer itself makes them.
        self.specials = {token.content: token_id for token_id, token in tokenizer.added_tokens_decoder.items()}
        self.special_pattern = (re.compile("(" + "|".join(map(re.escape, sorted(self.specials, key=len, reverse=True)))
                                           + ")") if self.specials else None)

    def encode(self, text: str, seed: int) -> list[int]:
        """Token ids of `text` with merges dropped at random; the same seed gives the same ids."""
        rng = random.Random(seed) if self.p else None
        ids: list[int] = []
        parts = self.special_pattern.split(text) if self.special_pattern else [text]
        for part in parts:
            if part in self.specials:
                ids.append(self.specials[part])
                continue
            for word, _ in self.pre_tokenizer.pre_tokenize_str(part):
                ids.extend(self._word(word, rng))
        return ids

    def _word(self, word: str, rng) -> list[int]:
        # Textbook BPE: apply the highest-priority merge among adjacent pairs until none applies; with dropout,
        # each candidate is skipped with probability p at this step (the paper's Algorithm 1).
        pieces = list(word)
        ranks, p = self.ranks, self.p
        while len(pieces) > 1:
            best, at = None, -1
            for i in range(len(pieces) - 1):
                rank = ranks.get((pieces[i], pieces[i + 1]))
                if rank is not None and (best is None or rank < best) and (rng is None or rng.random() >= p):
                    best, at = rank, i
            if best is None:
                break
            pieces[at:at + 2] = [pieces[at] + pieces[at + 1]]
        return [self.vocab[piece] for piece in pieces]
