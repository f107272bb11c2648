"""The plugin interface: what a decoder is, and what the engine hands it. Plugin authors import it from
`bardterm` (`from bardterm import hookimpl, Processor, Selector, Param`); `plugins/README.md` is the guide.

Two kinds of decoder, one call signature each:

- A `Processor` reshapes next-token scores: `processor(input_ids, scores) -> scores`, both (batch, vocab).
  Processors form a chain, applied in order (temperature, top-k, ... and any a plugin adds).
- A `Selector` picks the tokens. Token-by-token selectors (greedy, sampling) implement `choose`;
  selectors that need the model in their own loop (beam search, contrastive search) override `search`.

At the start of every generation the engine sets `decoder.run` to the `Run` (the run context) and calls
`decoder.start_run(run)`. A `Run` is described here as a Protocol; `bardterm.engine.DecodeRun` implements it,
and its caches implement `Cache`. This module imports neither the engine, the registry, pluggy nor torch
(torch only for annotations), so the engine, the registry and the decoders can all import it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Literal, Protocol

from bardterm.params import InvalidParameter, Param

if TYPE_CHECKING:
    import torch


class Cache(Protocol):
    """The KV cache a `Step` carries (`bardterm.kv_cache.PreallocatedCache` for transformers models). Rows are
    the batch: one per sequence. Every method changes the cache in place, except `copy`.

    transformers' own `cache.batch_repeat_interleave(n)`, `batch_select_indices(rows)` and `reorder_cache(rows)`
    work on it too and do the same as `repeat_rows`, `select_rows` and `select_rows`.
    """

    def get_seq_length(self) -> int:
        """How many positions it holds."""

    def select_rows(self, rows: "torch.LongTensor | list[int]") -> None:
        """Keep these rows, in this order; a row may appear several times or not at all (beam search's reorder,
        contrastive search's pick of one candidate)."""

    def repeat_rows(self, times: int) -> None:
        """Each row `times` times in a row: rows (a, b) become (a, a, b, b) for 2 (one per candidate token)."""

    def copy(self) -> "Cache":
        """An independent copy: a branch that can go on without changing this one."""

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last `-tokens_to_remove` positions (a negative number, as transformers' `crop` takes it)."""


@dataclass
class Step:
    """One forward pass (`run.forward`): next-token `logits` (batch, vocab) in float32, the updated `cache` to pass
    next time, and `hidden` when asked for: the hidden states of `layer` at the last position (batch, hidden_size)
    or at every position fed in (batch, length, hidden_size)."""

    logits: "torch.Tensor"
    cache: Any
    hidden: "torch.Tensor | None" = None


class Run(Protocol):
    """The run context: one generation, as the engine hands it to every decoder (`decoder.run`, `start_run(run)`)
    and to a selector's `search(run)`."""

    prompt_ids: "torch.LongTensor"
    """(1, prompt_length) token ids, on the model's device."""
    prompt_length: int
    step: int
    """How many tokens had been generated when the chain was last applied: 0 for the first token."""
    input_ids: "torch.LongTensor | None"
    """The sequences (batch, length) the chain was last applied to: prompt and tokens so far. `choose` sees the
    scores that follow them."""
    generator: "torch.Generator"
    """The seeded generator every random draw must use (`--seed`)."""
    tokenizer: Any
    """The model's tokenizer (transformers'), for decoders that work with text: DRY's sequence breakers, a logit
    bias given as words, a grammar."""
    max_new_tokens: int
    min_new_tokens: int
    eos_token_ids: set[int]
    model: Any
    chain: list["Processor"]

    @property
    def cancelled(self) -> bool:
        """True once the user has cancelled: a step that runs long should poll it and return early."""

    def forward(self, input_ids: "torch.LongTensor", cache: Cache | None = None, *,
                hidden: Literal[False, "last", "all"] | bool = False, layer: int = -1) -> Step:
        """Run the model on `input_ids` (batch, new) after `cache` (None: a fresh cache, for the prompt).

        With `hidden`, `Step.hidden` holds the hidden states of `layer` as transformers numbers them: 0 is the
        embeddings, i the output of block i, -1 the last, which for GPT-2 and Llama is after the final layer norm
        (what the LM head reads). "last" (or True) gives the last position, "all" every position fed in.
        """

    def process(self, input_ids: "torch.LongTensor", scores: "torch.FloatTensor") -> "torch.FloatTensor":
        """Apply min-new-tokens and the processor chain to `scores` (batch, vocab) that follow `input_ids`."""


class Decoder:
    """Shared by every decoder: a name, a one-line help, and declared parameters."""

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    plugin: str = ""  # the plugin that registered it, set by `registry.build` for error messages
    run: Run | None = None  # the generation under way, set by the engine before `start_run`

    def __init__(self, **values):
        # Values arrive validated (see `create`); missing ones take their declared default.
        for param in self.params:
            setattr(self, param.name, values.get(param.name, param.default))

    @classmethod
    def create(cls, **values) -> "Decoder":
        """Validate `values` against the declared params, then construct."""
        known = {p.name: p for p in cls.params}
        for key in values:
            if key not in known:
                allowed = ", ".join(known) or "none"
                raise InvalidParameter(f"decoder {cls.name!r} has no parameter {key!r} (its parameters: {allowed})")
        checked = {key: known[key].validate(value, owner=cls.name) for key, value in values.items()}
        return cls(**{p.name: checked.get(p.name, p.default) for p in cls.params})

    def settings(self) -> dict:
        return {p.name: getattr(self, p.name) for p in self.params}

    def describe(self) -> str:
        """`typical(p=0.9, min_tokens_to_keep=1)`: the name and every parameter by name; `top_p=0.9` where the
        one parameter is named as its decoder."""
        settings = self.settings()
        values = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items())
        if list(settings) == [self.name]:
            return values
        return f"{self.name}({values})" if values else self.name

    def start_run(self, run: Run) -> None:
        """A generation begins (`self.run` is already set): reset state kept from one step to the next here,
        because the same decoder object serves every generation of its setup (a TUI turn, a /compare)."""


class Processor(Decoder):
    """A logits processor: one step of the chain."""

    kind = "processor"
    order: ClassVar[int] = 50
    """Place in the default chain, lowest first: repetition penalty 10, no-repeat n-grams 15, temperature 20,
    top-k 30, top-p 40, plugins 50."""

    def __call__(self, input_ids: "torch.LongTensor", scores: "torch.FloatTensor") -> "torch.FloatTensor":
        raise NotImplementedError


class TransformersProcessor(Processor):
    """A processor that is one of transformers' `LogitsProcessor`s: `make()` builds it from the params."""

    def __init__(self, **values):
        super().__init__(**values)
        self._processor = self.make()

    def make(self):
        raise NotImplementedError

    def __call__(self, input_ids, scores):
        return self._processor(input_ids, scores)


@dataclass
class Hypothesis:
    """What a selector yields after each step: the best continuation so far (prompt excluded)."""

    token_ids: list[int]
    committed: int | None = None  # how many leading tokens can no longer change; None means all of them


class Selector(Decoder):
    """Picks the next tokens. Override `choose` for one token per step, or `search` for a whole search."""

    kind = "selector"
    defaults: ClassVar[dict] = {}
    """Settings it runs with when chosen by name alone, as a preset has them; flags and an explicit chain win."""
    _choose_takes_ids: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # API 1's `choose(scores, generator)` keeps working: it is simply not handed the input ids.
        cls._choose_takes_ids = len(inspect.signature(cls.choose).parameters) > 3

    def chain_input(self, logits: "torch.FloatTensor") -> "torch.FloatTensor":
        """What its search hands the chain for next-token `logits`: the logits themselves, unless overridden."""
        return logits

    def choose(self, scores: "torch.FloatTensor", generator: "torch.Generator",
               input_ids: "torch.LongTensor") -> "torch.LongTensor":
        """Return one token id per row of the processed `scores` (batch, vocab), which follow `input_ids`
        (batch, length). A `choose(scores, generator)` without `input_ids` is fine too (and all API 1 had)."""
        raise NotImplementedError

    def search(self, run: Run) -> Iterator[Hypothesis]:
        """The standard loop: one forward pass per token with the KV cache, the chain, then `choose`."""
        import torch

        prompt_len = run.prompt_length
        # Room for the whole text up front: each step writes one id instead of copying the sequence.
        sequence = torch.empty((1, prompt_len + run.max_new_tokens), dtype=torch.long, device=run.prompt_ids.device)
        sequence[:, :prompt_len] = run.prompt_ids
        step = run.forward(run.prompt_ids)
        tokens: list[int] = []
        while True:
            input_ids = sequence[:, :prompt_len + len(tokens)]
            scores = run.process(input_ids, self.chain_input(step.logits))
            next_id = (self.choose(scores, run.generator, input_ids) if self._choose_takes_ids
                       else self.choose(scores, run.generator))
            tokens.append(int(next_id[0]))
            sequence[0, input_ids.shape[1]] = tokens[-1]
            yield Hypothesis(list(tokens))  # a copy: whoever keeps it must not see it grow
            if len(tokens) >= run.max_new_tokens or tokens[-1] in run.eos_token_ids:
                return  # no forward pass for a token that will never be used
            step = run.forward(sequence[:, input_ids.shape[1]:input_ids.shape[1] + 1], step.cache)


@dataclass
class DecoderSetup:
    """One selector and the processor chain it selects from, as `bardterm.registry.build` makes them."""

    selector: Selector
    chain: list[Processor]

    def decoders(self) -> list[Decoder]:
        return [*self.chain, self.selector]

    def describe(self) -> str:
        """`top_p(top_p=0.9) → temperature(temperature=0.8) → sample`."""
        return " → ".join(decoder.describe() for decoder in self.decoders())
