"""Streaming generation: prompt → processor chain → selection → text, one token at a time.

    generation = Generation(model, tokenizer, "To be, or not to be", build("nucleus"), max_new_tokens=64)
    for update in generation:          # another thread may call generation.cancel()
        show(update.text[:update.committed])
    print(generation.result.stats)

The model runs with its KV cache: each step feeds only the new token, never the whole prefix again. The cache
is allocated once for the whole generation, and GPT-2 models take a lean decode step that gives the same logits
with less Python per token (both chosen in `decode_step.py`).
"""

from __future__ import annotations

import inspect
import math
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from bardterm.errors import BardtermError
from bardterm.decode_step import fast_decode_step, new_cache
from bardterm.generation import check_lengths
from bardterm.interface import DecoderSetup, Hypothesis, Processor, Step
from bardterm.text import IncrementalDecoder, token_piece

SLOW_STEP_S = 10.0  # a processor that takes longer than this for one step is stopped as faulty


class DecoderFault(BardtermError):
    """A decoder (often a plugin) misbehaved mid-generation: wrong shape, NaN, too slow, or it raised."""


@dataclass
class Stats:
    prompt_tokens: int = 0
    tokens: int = 0
    ttft_s: float | None = None  # time to first token
    total_s: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.total_s if self.total_s > 0 else 0.0

    def as_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "tokens": self.tokens, "ttft_s": self.ttft_s,
                "total_s": self.total_s, "tokens_per_s": self.tokens_per_s}

    def __str__(self) -> str:
        ttft = f"{self.ttft_s * 1000:.0f} ms" if self.ttft_s is not None else "-"
        return f"{self.tokens} tokens, first after {ttft}, {self.tokens_per_s:.1f} tokens/s"


@dataclass
class TokenInfo:
    """One generated token as the selector saw it: its probability after the chain, and the top alternatives."""

    token_id: int
    text: str
    prob: float
    alternatives: list[tuple[str, float]]
    logprob: float = 0.0  # log of `prob`, computed as a log-softmax (-inf: the chain ruled the token out)
    top: list[tuple[int, float]] = field(default_factory=list)  # the alternatives' (token id, logprob)


@dataclass
class Update:
    """The state after a step. `text[:committed]` will not change; the rest may (beam search revising)."""

    text: str
    committed: int
    token_ids: list[int]
    stats: Stats
    token: TokenInfo | None = None


@dataclass
class Result:
    text: str
    token_ids: list[int]
    stop_reason: str  # "eos", "length", "stop", "cancelled"
    stats: Stats
    notices: list[str] = field(default_factory=list)
    tokens: list[TokenInfo] = field(default_factory=list)


class Cancelled(BaseException):
    """Raised by `run.forward` once the user has cancelled, so that a search stops between model passes. Not an
    Exception, so that a plugin's `except Exception` does not swallow it (as KeyboardInterrupt is not)."""


class DecodeRun:
    """The run context (`bardterm.interface.Run`): what the engine hands every decoder for one generation."""

    def __init__(self, model, prompt_ids, chain: list[Processor], generator: torch.Generator,
                 max_new_tokens: int, min_new_tokens: int, eos_token_ids: set[int],
                 cancel: threading.Event | None = None, tokenizer=None):
        self.model = model
        self.tokenizer = tokenizer
        self.prompt_ids = prompt_ids
        self.prompt_length = prompt_ids.shape[1]
        self.step = 0
        self.input_ids: torch.Tensor | None = None
        self.chain = chain
        self.generator = generator
        self.max_new_tokens = max_new_tokens
        self.min_new_tokens = min_new_tokens
        self.eos_token_ids = eos_token_ids
        self._cancel = cancel or threading.Event()
        self._eos_index = torch.tensor(sorted(eos_token_ids), dtype=torch.long, device=prompt_ids.device)
        self.last_scores: torch.Tensor | None = None  # the processed scores of the latest batch-1 step
        self._logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._cache_arg = cache_argument(model)
        self._fast_step = None  # a lean decode step, where it gives the same logits (see decode_step.py)
        self.busy: tuple[Processor, float] | None = None  # the processor running now, and since when

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def forward(self, input_ids: torch.Tensor, cache=None, *, hidden=False, layer: int = -1) -> Step:
        """Run the model on `input_ids` after `cache`; returns the next-token logits for each row (and with
        `hidden`, "last" or "all" positions of hidden layer `layer`: see `bardterm.interface.Run.forward`)."""
        if self.cancelled:
            raise Cancelled
        if hidden not in (False, True, "last", "all"):
            raise ValueError(f"forward(hidden={hidden!r}): hidden is False, 'last' or 'all'")
        if cache is None:  # the prompt: a cache sized for the whole generation, so no copying as it grows
            cache = new_cache(self.model, self.prompt_length + self.max_new_tokens)
            self._fast_step = fast_decode_step(self.model) if cache is not None else None
        elif self._fast_step is not None and not hidden and input_ids.shape[1] == 1:
            return Step(self._fast_step(input_ids, cache).float(), cache)
        extra = {"logits_to_keep": 1} if self._logits_to_keep else {}
        out = self.model(input_ids=input_ids, **{self._cache_arg: cache}, use_cache=True,
                         output_hidden_states=bool(hidden), return_dict=True, **extra)
        states = None
        if hidden:
            states = out.hidden_states[layer]
            states = states[:, -1, :] if hidden in (True, "last") else states
        return Step(out.logits[:, -1, :].float(), getattr(out, self._cache_arg), states)

    def process(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Apply min-new-tokens, then the chain in order, checking what each processor returns."""
        self.input_ids, self.step = input_ids, input_ids.shape[1] - self.prompt_length
        if self.step < self.min_new_tokens and self.eos_token_ids:
            scores = scores.index_fill(1, self._eos_index, -float("inf"))  # a copy: the caller's scores stay
        for processor in self.chain:
            started = time.perf_counter()
            self.busy = (processor, started)
            try:
                result = processor(input_ids, scores)
            except Exception as error:
                raise DecoderFault(f"{_who(processor)} raised {type(error).__name__}: {error}") from error
            finally:
                self.busy = None
            # A step that polled `cancelled` and returned early was asked to: no fault for its time.
            _check_scores(_who(processor), scores, result, 0.0 if self.cancelled else time.perf_counter() - started)
            scores = result
        if scores.shape[0] == 1:
            self.last_scores = scores
        return scores


def _who(decoder) -> str:
    """"decoder 'x' (plugin 'y')", naming the plugin unless it is a built-in."""
    plugin = getattr(decoder, "plugin", "")
    return f"decoder {decoder.name!r}" + (f" (plugin {plugin!r})" if plugin and not plugin.startswith("bardterm.") else "")


def _check_scores(name: str, before: torch.Tensor, after, seconds: float) -> None:
    if seconds > SLOW_STEP_S:
        raise DecoderFault(f"{name} took {seconds:.1f} s for one step (limit {SLOW_STEP_S:g} s)")
    if not isinstance(after, torch.Tensor) or after.shape != before.shape:
        shape = tuple(after.shape) if isinstance(after, torch.Tensor) else type(after).__name__
        raise DecoderFault(f"{name} returned scores of shape {shape}, expected {tuple(before.shape)}")
    best = after.amax(dim=-1)  # one pass: NaN or +inf anywhere shows in the row's max, and so does all -inf
    if math.isfinite(float(best.sum(dtype=torch.float64))):  # finite only if every row's max is (float64: no overflow)
        return
    if torch.isnan(best).any() or torch.isposinf(best).any():
        raise DecoderFault(f"{name} returned NaN or +inf scores")
    raise DecoderFault(f"{name} ruled out every token")


def cache_argument(model) -> str:
    """The name `model.forward` takes its KV cache by: transformers 5.24 renamed `past_key_values` to `cache`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def context_length(model) -> int | None:
    config = model.config
    for attribute in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def eos_ids(model, tokenizer) -> set[int]:
    found = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if found is None:
        found = tokenizer.eos_token_id
    if found is None:
        return set()
    return {int(i) for i in (found if isinstance(found, (list, tuple)) else [found])}


class Generation:
    """One streaming generation. Iterate it for `Update`s; `result` is set when it ends."""

    def __init__(self, model, tokenizer, prompt: str | list[int], setup: DecoderSetup, *, max_new_tokens: int = 128,
                 min_new_tokens: int = 0, stop: list[str] | tuple[str, ...] = (), seed: int | None = None,
                 top_alternatives: int = 0, stop_token_ids: tuple[int, ...] | list[int] | set[int] = ()):
        """`prompt` is text, or token ids as a chat template gives them (used as they are: no special tokens
        added). `stop_token_ids` end the generation as EOS does (a chat model's end-of-turn tokens)."""
        max_new_tokens, min_new_tokens = check_lengths(max_new_tokens, min_new_tokens)
        if any(not s for s in stop):
            raise BardtermError("invalid stop string '': a stop string must not be empty")
        self.model, self.tokenizer, self.setup = model, tokenizer, setup
        self.stop = list(stop)
        self.top_alternatives = top_alternatives
        self.notices: list[str] = []
        self.result: Result | None = None
        self._cancel = threading.Event()

        device = model.device
        if isinstance(prompt, str):
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        else:
            ids = torch.tensor([list(prompt)], dtype=torch.long).reshape(1, -1)
        if ids.shape[1] == 0:  # an empty prompt starts from the beginning-of-text token
            start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
            ids = torch.tensor([[start if start is not None else 0]])
        limit = context_length(model)
        if limit is not None and ids.shape[1] + max_new_tokens > limit:
            keep = max(limit - max_new_tokens, min(ids.shape[1], limit // 2))
            if keep < ids.shape[1]:
                self.notices.append(f"the prompt is {ids.shape[1]} tokens and the model's context is {limit}: "
                                    f"kept its last {keep} tokens")
                ids = ids[:, -keep:]
            if ids.shape[1] + max_new_tokens > limit:
                max_new_tokens = limit - ids.shape[1]
                self.notices.append(f"max new tokens cut to {max_new_tokens} to fit the model's context of {limit}")
        generator = torch.Generator(device=device)
        generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ())))
        self.run = DecodeRun(model, ids.to(device), setup.chain, generator, max_new_tokens, min_new_tokens,
                             eos_ids(model, tokenizer) | {int(i) for i in stop_token_ids}, self._cancel, tokenizer)

    def cancel(self) -> None:
        """Stop after the current token; safe to call from any thread."""
        self._cancel.set()

    def stuck(self) -> str | None:
        """What is wrong if a processor has held one step past `SLOW_STEP_S` (it may never return); safe
        to call from any thread, so that a caller can give up on a generation whose thread is stuck."""
        busy = self.run.busy
        held = time.perf_counter() - busy[1] if busy else 0.0
        if held <= SLOW_STEP_S:
            return None
        return f"{_who(busy[0])} has not returned from one step in {held:.0f} s (limit {SLOW_STEP_S:g} s)"

    def __iter__(self):
        run, stats = self.run, Stats(prompt_tokens=self.run.prompt_ids.shape[1])
        decoder = IncrementalDecoder(self.tokenizer)
        infos: list[TokenInfo] = []
        token_ids: list[int] = []
        reason = "length"
        started = time.perf_counter()
        self._start_decoders()
        searches = self.setup.selector.search(run)
        try:
            while True:
                with torch.inference_mode():  # only around the model's work: the caller's code runs outside it
                    try:
                        hypothesis = next(searches, None)
                    except Cancelled:
                        reason = "cancelled"
                        break
                    except BardtermError:
                        raise
                    except Exception as error:  # a selector plugin's bug ends this generation, not the program
                        raise DecoderFault(f"{_who(self.setup.selector)} raised {type(error).__name__}: {error}") from error
                if hypothesis is None:
                    break
                token_ids, text, info = self._advance(decoder, token_ids, hypothesis)
                stats.tokens = len(token_ids)
                stats.total_s = time.perf_counter() - started
                if stats.ttft_s is None:
                    stats.ttft_s = stats.total_s
                if info is not None:
                    infos.append(info)
                cut = self._find_stop(text)
                if cut is not None:
                    decoder.text, reason = text[:cut], "stop"
                    break
                if token_ids and token_ids[-1] in run.eos_token_ids:
                    reason = "eos"
                committed = self._committed(decoder, hypothesis, text)
                yield Update(text, committed, list(token_ids), replace(stats), info)  # a snapshot per update
                if reason == "eos":
                    break
                if self._cancel.is_set():
                    reason = "cancelled"
                    break
        finally:
            searches.close()
        if reason != "stop":
            decoder.finish()
        stats.total_s = time.perf_counter() - started
        if self.top_alternatives and token_ids and [i.token_id for i in infos] != token_ids:
            infos = self._inspect_afterwards(token_ids)  # a search that revised its text, such as beam search
        self.result = Result(decoder.text, token_ids, reason, stats, self.notices, infos)
        yield Update(decoder.text, len(decoder.text), list(token_ids), stats)

    def _start_decoders(self) -> None:
        """Hand every decoder this run and let it reset what it keeps between steps (`Decoder.start_run`)."""
        for decoder in self.setup.decoders():
            decoder.run = self.run
            start_run = getattr(decoder, "start_run", None)
            if not callable(start_run):  # an API 1 decoder's own attribute of that name: it predates the hook
                continue
            try:
                start_run(self.run)
            except BardtermError:
                raise
            except Exception as error:
                raise DecoderFault(f"{_who(decoder)} raised {type(error).__name__} in start_run: {error}") from error

    def _advance(self, decoder: IncrementalDecoder, previous: list[int], hypothesis: Hypothesis):
        tokens = hypothesis.token_ids
        info = None
        if len(tokens) == len(previous) + 1 and tokens[:-1] == previous:
            decoder.add(tokens[-1])
            if self.top_alternatives and self.run.last_scores is not None:
                info = self._inspect(tokens[-1], self.run.last_scores)
        else:
            decoder.reset(tokens)
        return list(tokens), decoder.text, info

    def _inspect_afterwards(self, token_ids: list[int]) -> list[TokenInfo]:
        """Inspector entries for the final text, from one forward pass over it and the chain at each position,
        for searches whose steps do not match it token for token. The chain gets what the selector gives it."""
        run, prompt_len = self.run, self.run.prompt_length
        run._cancel = threading.Event()  # the generation has ended: a cancel then must not stop this look back
        ids = torch.cat([run.prompt_ids, torch.tensor([token_ids], device=run.prompt_ids.device)], dim=1)
        with torch.inference_mode():
            logits = self.setup.selector.chain_input(self.model(input_ids=ids).logits[0, prompt_len - 1:-1].float())
            return [self._inspect(token, run.process(ids[:, :prompt_len + i], logits[i:i + 1]))
                    for i, token in enumerate(token_ids)]

    def _inspect(self, token_id: int, scores: torch.Tensor) -> TokenInfo:
        logprobs = torch.log_softmax(scores[0].float(), dim=-1)
        top = torch.topk(logprobs, min(self.top_alternatives, logprobs.shape[-1]))
        piece = lambda i: token_piece(self.tokenizer, i)  # noqa: E731
        ids, values = top.indices.tolist(), top.values.tolist()
        alternatives = [(piece(i), math.exp(v)) for i, v in zip(ids, values)]
        chosen = float(logprobs[token_id])
        return TokenInfo(token_id, piece(token_id), math.exp(chosen), alternatives, chosen, list(zip(ids, values)))

    def _find_stop(self, text: str) -> int | None:
        hits = [text.find(s) for s in self.stop]
        hits = [h for h in hits if h >= 0]
        return min(hits) if hits else None

    def _committed(self, decoder: IncrementalDecoder, hypothesis: Hypothesis, text: str) -> int:
        committed = len(text)
        if hypothesis.committed is not None and hypothesis.committed < len(hypothesis.token_ids):
            committed = len(self.tokenizer.decode(hypothesis.token_ids[:hypothesis.committed],
                                                  skip_special_tokens=True, clean_up_tokenization_spaces=False)
                            .rstrip("\ufffd"))
        for stop in self.stop:  # hold back a tail that may yet become a stop string
            for size in range(min(len(stop) - 1, len(text)), 0, -1):
                if stop.startswith(text[-size:]):
                    committed = min(committed, len(text) - size)
                    break
        return committed


def generate(model, tokenizer, prompt: str, setup: DecoderSetup, **options) -> Result:
    """Run a generation to the end and return its result."""
    generation = Generation(model, tokenizer, prompt, setup, **options)
    for _ in generation:
        pass
    return generation.result
