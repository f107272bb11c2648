"""What a decoder is. Two kinds, one call signature each:

- A `Processor` reshapes next-token scores: `processor(input_ids, scores) -> scores`, both (batch, vocab).
  Processors form a chain, applied in order (temperature, top-k, ... and any a plugin adds).
- A `Selector` picks the tokens. Token-by-token selectors (greedy, sampling) implement `choose`;
  selectors that need the model in their own loop (beam search, contrastive search) override `search`.

The engine hands `search` a `DecodeRun` (see `bardterm/engine.py`): the prompt ids, `forward` for the model
with its KV cache, `process` for the processor chain, and the seeded `generator` every random draw must use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Iterator

from bardterm.params import Param

if TYPE_CHECKING:
    import torch

    from bardterm.engine import DecodeRun


class Decoder:
    """Shared by every decoder: a name, a one-line help, and declared parameters."""

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    plugin: str = ""  # the plugin that registered it, set by `registry.build` for error messages

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
                raise _unknown(f"decoder {cls.name!r} has no parameter {key!r} (its parameters: {allowed})")
        checked = {key: known[key].validate(value, owner=cls.name) for key, value in values.items()}
        return cls(**{p.name: checked.get(p.name, p.default) for p in cls.params})

    def settings(self) -> dict:
        return {p.name: getattr(self, p.name) for p in self.params}


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

    def chain_input(self, logits: "torch.FloatTensor") -> "torch.FloatTensor":
        """What its search hands the chain for next-token `logits`: the logits themselves, unless overridden."""
        return logits

    def choose(self, scores: "torch.FloatTensor", generator: "torch.Generator") -> "torch.LongTensor":
        """Return one token id per row of the processed `scores` (batch, vocab)."""
        raise NotImplementedError

    def search(self, run: "DecodeRun") -> Iterator[Hypothesis]:
        """The standard loop: one forward pass per token with the KV cache, the chain, then `choose`."""
        import torch

        prompt_len = run.prompt_ids.shape[1]
        # Room for the whole text up front: each step writes one id instead of copying the sequence.
        sequence = torch.empty((1, prompt_len + run.max_new_tokens), dtype=torch.long, device=run.prompt_ids.device)
        sequence[:, :prompt_len] = run.prompt_ids
        step = run.forward(run.prompt_ids)
        tokens: list[int] = []
        while True:
            length = prompt_len + len(tokens)
            next_id = self.choose(run.process(sequence[:, :length], self.chain_input(step.logits)), run.generator)
            tokens.append(int(next_id[0]))
            sequence[0, length] = tokens[-1]
            yield Hypothesis(list(tokens))  # a copy: whoever keeps it must not see it grow
            if len(tokens) >= run.max_new_tokens or tokens[-1] in run.eos_token_ids:
                return  # no forward pass for a token that will never be used
            step = run.forward(sequence[:, length:length + 1], step.cache)


def _unknown(message: str):
    from bardterm.params import InvalidParameter

    return InvalidParameter(message)
