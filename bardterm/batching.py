"""Lockstep: several generations of one prompt through the model as one batch, one model pass per step.

Compare mode (F4) runs 2 to 4 decoder setups on the same prompt. Run apart, each setup makes its own model pass
for every token. Here the prompt runs once, its cache rows are repeated, and each step feeds every row's last
token as one (rows, 1) batch. Everything else stays each generation's own: it is a `Generation` as before (chain,
selector, seeded generator, stop strings, text, stats), whose `run.forward` is answered from the shared pass. A
row that ends (EOS, length, a stop string, cancel, a fault) leaves the batch, and the others go on.

    rows = lockstep([Generation(model, tokenizer, prompt, setup, seed=1) for setup in setups])
    # iterate each row in a thread of its own (as `Stream` does), or: results = run_all(generations)

The rows wait for each other at every step, so each must be iterated, each in its own thread. Only the standard
token-by-token search shares a pass: a selector with its own `search` (beam, contrastive) runs apart, as do
generations whose prompt ids differ and models without a row-selectable cache (`decode_step.new_cache`).
"""

from __future__ import annotations

import functools
import threading

import torch

from bardterm.engine import Cancelled, DecodeRun, Generation, Result
from bardterm.interface import Selector, Step
from bardterm.decode_step import new_cache

WAIT_S = 0.5  # how often a waiting row looks for rows held by a stuck processor (which then leave the batch)


def lockstep(generations: list[Generation]) -> list:
    """The generations in the same order, those that can share a model pass each wrapped as a row of a batch
    (`BatchedGeneration`); the others are handed back as they are and run apart."""
    groups: dict[tuple, list[int]] = {}
    for index, generation in enumerate(generations):
        if _can_batch(generation):
            groups.setdefault(tuple(generation.run.prompt_ids[0].tolist()), []).append(index)
    rows = list(generations)
    for indices in groups.values():
        if len(indices) > 1:
            batch = Lockstep([generations[i] for i in indices])
            for row, index in enumerate(indices):
                rows[index] = BatchedGeneration(generations[index], batch, row)
    return rows


def run_all(generations: list[Generation]) -> list[Result]:
    """Run the generations to the end, batched where they can be, each in a thread; their results in order."""
    threads = [threading.Thread(target=_drain, args=(row,)) for row in lockstep(generations)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [generation.result for generation in generations]


def _drain(generation) -> None:
    for _ in generation:
        pass


def _can_batch(generation: Generation) -> bool:
    # A whole search of its own (beam, contrastive) makes its own passes with its own rows; the standard search
    # makes one pass per token with one row, which is what a batch row is.
    model = generation.model
    return type(generation.setup.selector).search is Selector.search and new_cache(model, 1) is not None


class BatchedGeneration:
    """One row of a `Lockstep`: iterate it as the `Generation` it wraps (which it is in every other way), in a
    thread of its own; it leaves the batch when its iteration ends, however it ends."""

    def __init__(self, generation: Generation, batch: "Lockstep", row: int):
        self.generation, self.batch, self.row = generation, batch, row

    def __iter__(self):
        try:
            yield from self.generation
        finally:
            self.batch.leave(self.row)

    def __getattr__(self, name):  # result, cancel, stuck, notices, run: the generation's own
        return getattr(self.generation, name)


class Lockstep:
    """The shared model passes of generations with the same prompt ids; row i is generations[i].

    The cache a row's search holds is this object: `forward(token, batch)` hands the row's token to the next
    shared pass and returns the row's logits from it. The last row to hand in its token runs the pass.
    """

    def __init__(self, generations: list[Generation]):
        first = generations[0].run
        self.generations = generations
        self.passes = 0  # model passes made, the prompt's included
        # A run of the engine's own, so that the shared pass takes the path one generation takes (the preallocated
        # cache, sized for the longest row; the lean decode step), only with more rows.
        self._engine = DecodeRun(first.model, first.prompt_ids, [], torch.Generator(first.prompt_ids.device),
                                 max(g.run.max_new_tokens for g in generations), 0, set())
        self._turn = threading.Condition()
        self._live = set(range(len(generations)))  # rows still generating
        self._prompted: set[int] = set()  # rows that have had the prompt's logits
        self._prompt_logits: torch.Tensor | None = None
        self._cache = None
        self._order: list[int] = []  # the rows the cache holds, in its order
        self._tokens: dict[int, torch.Tensor] = {}  # each waiting row's token for the next pass
        self._logits: dict[int, torch.Tensor] = {}  # each row's logits from the last pass, until it takes them
        self._error: Exception | None = None
        for row, generation in enumerate(generations):
            generation.run.forward = functools.partial(self._forward, row, generation.run.forward)

    def leave(self, row: int) -> None:
        with self._turn:
            self._live.discard(row)
            self._tokens.pop(row, None)
            self._turn.notify_all()  # the rows waiting may be all there is now

    def _forward(self, row: int, own_forward, input_ids, cache=None, *, hidden=False, layer: int = -1) -> Step:
        """Row `row`'s `run.forward`: the search's prompt and decode steps from the shared passes; anything else
        (a decoder that runs the model itself) by the generation's own forward, apart."""
        run = self.generations[row].run
        if cache is self:
            if run.cancelled:
                raise Cancelled
            return Step(self._next(row, input_ids), self)
        if cache is None and not hidden and row not in self._prompted and torch.equal(input_ids, run.prompt_ids):
            if run.cancelled:
                raise Cancelled
            self._prompted.add(row)
            return Step(self._prompt().clone(), self)
        return own_forward(input_ids, cache, hidden=hidden, layer=layer)

    def _prompt(self) -> torch.Tensor:
        """The prompt's next-token logits, from one pass the first row to ask makes for all."""
        with self._turn:
            if self._prompt_logits is None:
                step = self._engine.forward(self._engine.prompt_ids)
                self.passes += 1
                self._order = sorted(self._live)
                step.cache.repeat_rows(len(self._order))
                self._prompt_logits, self._cache = step.logits, step.cache
            return self._prompt_logits

    def _next(self, row: int, token: torch.Tensor) -> torch.Tensor:
        """Hand in `row`'s token (1, 1) and wait for the pass with every live row's token in it."""
        with self._turn:
            self._tokens[row] = token
            while row not in self._logits:
                if self._error is not None:
                    raise RuntimeError(f"the shared model pass failed: {self._error}") from self._error
                if self._tokens.keys() >= self._live:
                    self._pass()
                else:
                    self._turn.wait(WAIT_S)
                    self._drop_stuck()
            return self._logits.pop(row)

    def _pass(self) -> None:
        try:
            keep = [index for index, row in enumerate(self._order) if row in self._live]
            if len(keep) < len(self._order):  # rows that ended drop out of the cache
                self._cache.select_rows(keep)
                self._order = [self._order[index] for index in keep]
            step = self._engine.forward(torch.cat([self._tokens.pop(row) for row in self._order]), self._cache)
            self.passes += 1
            self._cache = step.cache
            self._logits.update({row: step.logits[index:index + 1] for index, row in enumerate(self._order)})
        except Exception as error:
            self._error = error
        self._turn.notify_all()

    def _drop_stuck(self) -> None:
        """Rows held past the engine's limit by a processor that may never return: the others go on without them."""
        for row in self._live - self._tokens.keys():
            if self.generations[row].stuck() is not None:
                self._live.discard(row)
