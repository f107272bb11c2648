"""Lockstep: several generations of one prompt through the model as one batch, one model pass per step.

Compare mode (F4) runs 2 to 4 decoder setups on the same prompt. Run apart, each setup makes its own model pass
for every token. Here the prompt runs once, its cache rows are repeated, and each step feeds every row's last
token as one (rows, 1) batch. Everything else stays each generation's own: it is a `Generation` as before (chain,
selector, seeded generator, stop strings, text, stats), whose `run.forward` is answered from the shared pass. A
row that ends (EOS, length, a stop string, cancel, a fault) leaves the batch, and the others go on.

    rows = lockstep([Generation(model, tokenizer, prompt, setup, seed=1) for setup in setups])
    for update in rows[0]: ...         # each row iterates as its Generation would; or: run_all(generations)

One thread drives every row of a batch in turn, a step each: the first row to ask for the next step's logits
runs the pass for all, with each row's token from its latest update. Each row's updates reach whoever iterates it
through a queue, so a slow reader never holds up the model. (A thread per row meeting at every step was the first
design: on 2 busy cores each step then waited for three threads to be scheduled, and batching was slower than
separate passes.)

Only the standard token-by-token search shares a pass: a selector with its own `search` (beam, contrastive) runs
apart, as do generations whose prompt ids differ and models without a row-selectable cache
(`decode_step.new_cache`).
"""

from __future__ import annotations

import functools
import queue
import threading
import time

import torch

from bardterm.decode_step import new_cache
from bardterm.engine import Cancelled, DecodeRun, Generation, Result
from bardterm.interface import Selector, Step


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
    """Run the generations to the end, batched where they can be; their results in order."""
    for row in lockstep(generations):
        for _ in row:
            pass
    return [generation.result for generation in generations]


def _can_batch(generation: Generation) -> bool:
    # A whole search of its own (beam, contrastive) makes its own passes with its own rows; the standard search
    # makes one pass per token with one row, which is what a batch row is.
    return (type(generation.setup.selector).search is Selector.search
            and new_cache(generation.model, 1) is not None)


class BatchedGeneration:
    """One row of a `Lockstep`: iterate it as the `Generation` it wraps (which it is in every other way). The
    batch's thread makes its updates; iterating the first row of a batch starts that thread."""

    def __init__(self, generation: Generation, batch: "Lockstep", row: int):
        self.generation, self.batch, self.row = generation, batch, row

    def __iter__(self):
        self.batch.start()
        while True:
            update = self.batch.queues[self.row].get()
            if update is None:
                return
            if isinstance(update, BaseException):
                raise update
            yield update

    def stuck(self) -> str | None:
        """As `Generation.stuck`, for any row: a processor that never returns holds the batch's one thread."""
        return next(filter(None, (generation.stuck() for generation in self.batch.generations)), None)

    def __getattr__(self, name):  # result, cancel, notices, run: the generation's own
        return getattr(self.generation, name)


class Lockstep:
    """The shared model passes of generations with the same prompt ids; row i is generations[i].

    The cache a row's search holds is this object: `forward(token, batch)` returns the row's logits from this
    step's shared pass, which the first row to ask runs for every row that will ask.
    """

    def __init__(self, generations: list[Generation]):
        first = generations[0].run
        self.generations = generations
        self.queues = [queue.SimpleQueue() for _ in generations]  # each row's updates; None once it has ended
        self.passes = 0  # model passes made, the prompt's included
        # A run of the engine's own, so that the shared pass takes the path one generation takes (the preallocated
        # cache, sized for the longest row; the lean decode step), only with more rows.
        self._engine = DecodeRun(first.model, first.prompt_ids, [], torch.Generator(first.prompt_ids.device),
                                 max(g.run.max_new_tokens for g in generations), 0, set())
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._latest: list[list[int]] = [[] for _ in generations]  # each row's token ids, as of its latest update
        self._prompted: set[int] = set()  # rows that have had the prompt's logits
        self._prompt_logits: torch.Tensor | None = None
        self._cache = None
        self._order: list[int] = []  # the rows the cache holds, in its order
        self._logits: dict[int, torch.Tensor] = {}  # this step's logits for the rows that have not taken them yet
        for row, generation in enumerate(generations):
            generation.run.forward = functools.partial(self._forward, row, generation.run.forward)

    def start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._drive, name="lockstep batch", daemon=True)
                self._thread.start()

    def _drive(self) -> None:
        """Every row a step in turn, until all have ended; each update, end or fault to that row's queue."""
        rows = {row: iter(generation) for row, generation in enumerate(self.generations)}
        begun, late = time.perf_counter(), {}
        while rows:
            for row, updates in list(rows.items()):
                late.setdefault(row, time.perf_counter() - begun)  # a row's clock starts when the batch's does
                try:
                    update = next(updates)
                except StopIteration:
                    update = None
                except BaseException as error:  # this row's fault ends this row (the reader raises it)
                    update = error
                if update is None or isinstance(update, BaseException):
                    del rows[row]
                else:
                    self._latest[row] = update.token_ids
                    stats = update.stats  # each update's own (the last one's: the result's)
                    stats.total_s += late[row]
                    stats.ttft_s = None if stats.ttft_s is None else stats.ttft_s + late[row]
                self.queues[row].put(update)
        # (no row is left, and so is no cache: the batch ends with its last row)

    def _asks_next(self, row: int) -> bool:
        """Whether `row`'s search will ask for the next step's logits, which the standard search does unless
        its latest token was EOS or its last; the generation ends a row that is cancelled or has a result."""
        generation, tokens = self.generations[row], self._latest[row]
        run = generation.run
        return (generation.result is None and not run.cancelled and bool(tokens)
                and len(tokens) < run.max_new_tokens and tokens[-1] not in run.eos_token_ids)

    def _forward(self, row: int, own_forward, input_ids, cache=None, *, hidden=False, layer: int = -1) -> Step:
        """Row `row`'s `run.forward`: the search's prompt and decode steps from the shared passes; anything else
        (a decoder that runs the model itself) by the generation's own forward, apart."""
        run = self.generations[row].run
        prompt = cache is None and not hidden and row not in self._prompted and torch.equal(input_ids, run.prompt_ids)
        if cache is self or prompt:
            if run.cancelled:
                raise Cancelled
            self._prompted.add(row)
            return Step(self._prompt().clone() if prompt else self._step_logits(row), self)
        return own_forward(input_ids, cache, hidden=hidden, layer=layer)

    def _prompt(self) -> torch.Tensor:
        """The prompt's next-token logits, from one pass the first row to ask makes for all."""
        if self._prompt_logits is None:
            step = self._engine.forward(self._engine.prompt_ids)
            self.passes += 1
            self._order = list(range(len(self.generations)))
            step.cache.repeat_rows(len(self._order))
            self._prompt_logits, self._cache = step.logits, step.cache
        return self._prompt_logits

    def _step_logits(self, row: int) -> torch.Tensor:
        if row not in self._logits:  # the first row to ask this step: one pass for every row that will ask
            rows = [r for r in self._order if self._asks_next(r)]
            if row not in rows:
                raise RuntimeError(f"row {row} of a lockstep batch asked for a step it was not expected to take")
            if len(rows) < len(self._order):  # rows that ended drop out of the cache
                self._cache.select_rows([self._order.index(r) for r in rows])
                self._order = rows
            tokens = torch.tensor([[self._latest[r][-1]] for r in rows], device=self._engine.prompt_ids.device)
            step = self._engine.forward(tokens, self._cache)
            self.passes += 1
            self._cache = step.cache
            self._logits = {r: step.logits[index:index + 1] for index, r in enumerate(rows)}
        return self._logits.pop(row)
