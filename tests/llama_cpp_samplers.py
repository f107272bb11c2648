"""llama.cpp's top-n-sigma, XTC and DRY samplers (src/llama-sampling.cpp), rendered line by line in plain
Python: the reference bardterm's tensor versions are checked against.

llama.cpp keeps the candidates as an array of (token, logit, p); a sampler that truncates shrinks the array.
Here the array is a list of [token, logit, p] lists, and tokens ruled out in bardterm (-inf) are simply not in
it. Python's floats are doubles; where the C++ rounds to float and that can change a result (probabilities,
DRY's penalties) `f32` rounds the same way.
"""

from __future__ import annotations

import math
import struct

FLOAT_MAX_LOG = 88.7228391


def f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def candidates(logits: list[float]) -> list[list]:
    """The candidate array for a row of logits, leaving out -inf ones (ruled out earlier in the chain)."""
    return [[token, logit, 0.0] for token, logit in enumerate(logits) if logit != -math.inf]


def softmax(cur: list[list]) -> None:
    """llama_sampler_softmax_impl: sort by logit, descending, and fill in p."""
    cur.sort(key=lambda c: -c[1])
    max_l = cur[0][1]
    total = 0.0
    for c in cur:
        c[2] = f32(math.exp(c[1] - max_l))
        total = f32(total + c[2])
    for c in cur:
        c[2] = f32(c[2] / total)


def top_n_sigma(cur: list[list], n: float) -> list[list]:
    """llama_sampler_top_n_sigma_apply: mask logits below max - n * std (std over the candidates)."""
    if n <= 0 or len(cur) <= 1:
        return cur
    max_l = cur[0][1]
    logits_sum = 0.0
    valid = 0
    for c in cur:
        if c[1] != -math.inf:
            max_l = max(max_l, c[1])
            logits_sum += c[1]
            valid += 1
    mean = logits_sum / valid if valid else 0.0
    acc = 0.0
    for c in cur:
        if c[1] != -math.inf:
            acc += (c[1] - mean) ** 2
    std = math.sqrt(acc / valid) if valid else 0.0
    for c in cur:
        if c[1] < max_l - n * std:
            c[1] = -math.inf
    return [c for c in cur if c[1] != -math.inf]


def xtc(cur: list[list], probability: float, threshold: float, chance: float, min_keep: int = 1) -> list[list]:
    """llama_sample_xtc_apply, with the uniform draw `chance` passed in."""
    if probability <= 0 or threshold > 0.5 or len(cur) < 2:
        return cur
    if chance > probability:
        return cur
    softmax(cur)
    pos_last = 0
    for i, c in enumerate(cur):
        if c[2] >= threshold:
            pos_last = i
        else:
            break
    if len(cur) - pos_last >= min_keep and pos_last > 0:
        return cur[pos_last:]
    return cur


def dry_breakers(pieces: list[str], tokenize, breakers: list[str], max_tail_len: int = 20) -> list[tuple]:
    """get_overlapping_token_sequences, over every breaker: (head token, tail tokens) pairs, a multimap."""
    sequences = []
    for breaker in breakers:
        breaker = breaker[:40]
        for token_id, word in enumerate(pieces):
            if breaker in word:
                sequences.append((token_id, ()))
                continue
            pos = word.find(breaker[0])
            while pos != -1:
                match = True
                i = 1
                while i < len(breaker) and i + pos < len(word):
                    if word[pos + i] != breaker[i]:
                        match = False
                        break
                    i += 1
                if match:
                    tail = tuple(tokenize(breaker[i:])[:max_tail_len])
                    if (token_id, tail) not in sequences:
                        sequences.append((token_id, tail))
                pos = word.find(breaker[0], pos + 1)
    return sequences


def dry(cur: list[list], last_tokens: list[int], breakers: list[tuple], multiplier: float, base: float,
        allowed_length: int, penalty_last_n: int, context_size: int) -> list[list]:
    """llama_sampler_dry_apply. `last_tokens` are the accepted tokens, oldest first; rat(i) is i from the end."""
    multiplier, base = f32(multiplier), f32(base)
    if multiplier == 0 or base < 1 or penalty_last_n == 0:
        return cur
    effective_last_n = context_size if penalty_last_n == -1 else max(penalty_last_n, 0)
    last_tokens = last_tokens[-effective_last_n:]  # the ring buffer holds this many

    def rat(i):
        return last_tokens[len(last_tokens) - i - 1]

    last_n_repeat = min(len(last_tokens), effective_last_n, context_size)
    if last_n_repeat <= allowed_length:
        return cur
    repeat_count = [0] * last_n_repeat
    max_token_repeat: dict[int, int] = {}

    # Step 1: the latest sequence breaker limits how long a repeat may be.
    rep_limit = last_n_repeat
    for i in range(last_n_repeat):
        token = rat(i)
        tails = [tail for head, tail in breakers if head == token]
        if not tails:
            continue
        longest_match = -1
        for tail in tails:
            seq_len = len(tail)
            if longest_match < seq_len <= i:
                if all(tail[offset] == rat(i - offset - 1) for offset in range(seq_len)):
                    longest_match = seq_len
        if longest_match >= 0:
            rep_limit = i - longest_match
            break
    if rep_limit < allowed_length:
        return cur

    # Step 2: the Z-algorithm, backwards: repeat_count[last - k] is how many tokens ending k before the end
    # equal the tokens at the end.
    last = last_n_repeat - 1
    rt = lt = 0
    for k in range(1, last_n_repeat):
        if k > rt:
            n = 0
            while n + k < last_n_repeat and rat(n) == rat(n + k):
                n += 1
            repeat_count[last - k] = min(n, rep_limit)
            if n > 0:
                lt, rt = k, k + n - 1
        else:
            p = k - lt
            right_part_len = rt - k + 1
            if repeat_count[last - p] < right_part_len:
                repeat_count[last - k] = min(repeat_count[last - p], rep_limit)
            else:
                i = rt + 1
                while i < last_n_repeat and rat(i) == rat(i - k):
                    i += 1
                repeat_count[last - k] = min(i - k, rep_limit)
                lt, rt = k, i - 1

    # Step 3: the token after each repeat would extend it.
    for i in range(last_n_repeat - 1):
        repeat_len = repeat_count[i]
        if repeat_len >= allowed_length:
            token = rat(last_n_repeat - 2 - i)
            if token not in max_token_repeat or max_token_repeat[token] < repeat_len:
                max_token_repeat[token] = repeat_len

    # Step 4: the penalties; a single-token breaker is never penalised.
    max_exponent = 0
    if base > 1.000001:
        max_exponent = int(f32(f32(FLOAT_MAX_LOG) / f32(math.log(base))))
    for c in cur:
        if c[0] in max_token_repeat:
            if any(head == c[0] and tail == () for head, tail in breakers):
                continue
            repeat_exp = max_token_repeat[c[0]] - allowed_length
            if max_exponent > 0 and repeat_exp > max_exponent:
                repeat_exp = max_exponent
            penalty = f32(multiplier * base ** repeat_exp)
            c[1] = f32(c[1] - penalty)
    return cur
