"""What every pane generates with: the loaded model, the decoder registry, the decoder setup being edited, and
the generations running now. Plain Python (no widgets): the app owns one `ModelHost` and hands it to the panes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bardterm.errors import BardtermError
from bardterm.tui.streaming import Stream

if TYPE_CHECKING:
    from bardterm.engine import Generation
    from bardterm.models import LoadedModel
    from bardterm.registry import Registry
    from bardterm.tui.settings import DecoderChoice

TOP_ALTERNATIVES = 5  # what the token inspector shows for each step


class NotReady(BardtermError):
    """A generation cannot start yet (the model is loading, or none is loaded): a warning, not an error."""


class ModelHost:
    def __init__(self, max_new_tokens: int = 200):
        self.max_new_tokens = max_new_tokens
        self.registry: Registry | None = None
        self.choice: DecoderChoice | None = None  # once the registry has loaded
        self.loaded: LoadedModel | None = None
        self.loading: str | None = None  # the checkpoint being loaded
        self.streams: list[Stream] = []

    def check_ready(self) -> None:
        """Raise NotReady, saying why, unless a generation can start now."""
        if self.loaded is None or self.registry is None:
            if self.loading is not None or self.registry is None:
                raise NotReady("the model is still loading: your text is kept, send it again in a moment")
            raise NotReady("no model is loaded: type /load CHECKPOINT_DIR")

    def need_registry(self) -> Registry:
        if self.registry is None:
            raise BardtermError("decoders are still loading: try again in a moment")
        return self.registry

    def start(self, target, prompt: str | list[int], *, tag: str = "", label: str = "", **options) -> Stream:
        """Start generating a continuation of `prompt` (text, or a chat template's token ids) with the current
        (or given) decoder choice, its updates posted to `target` as messages; raises BardtermError (NotReady
        when no model is ready). The options are `generation`'s."""
        return self.stream(target, self.generation(prompt, **options), tag=tag, label=label)

    def generation(self, prompt: str | list[int], *, stop=(), stop_token_ids=(),
                   choice: DecoderChoice | None = None, max_new_tokens: int | None = None) -> Generation:
        """A generation of `prompt` with the current (or given) decoder choice, not started; raises BardtermError.
        `stop_token_ids` end it as EOS does (a chat model's end of turn)."""
        from bardterm.engine import Generation

        self.check_ready()
        choice = choice or self.choice
        return Generation(self.loaded.model, self.loaded.tokenizer, prompt, choice.setup(self.registry),
                          max_new_tokens=max_new_tokens or self.max_new_tokens, stop=stop, seed=choice.seed,
                          top_alternatives=TOP_ALTERNATIVES, stop_token_ids=stop_token_ids)

    def stream(self, target, generation: Generation, *, tag: str = "", label: str = "") -> Stream:
        """Run `generation` in a thread, its updates posted to `target` as messages."""
        stream = Stream(target, generation, tag=tag, label=label)
        self.streams = [s for s in self.streams if s.running] + [stream]
        stream.start()
        return stream

    @property
    def generating(self) -> bool:
        return any(s.running for s in self.streams)

    def stop_all(self) -> None:
        for stream in self.streams:
            if stream.running:
                stream.cancel()

    def count_tokens(self, text: str) -> int:
        return len(self.loaded.tokenizer(text)["input_ids"])

    def context(self) -> int | None:
        from bardterm.engine import context_length

        return context_length(self.loaded.model)

    def decoder_label(self) -> str:
        return self.choice.describe(self.registry)
