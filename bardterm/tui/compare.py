"""Compare: one prompt, two to four decoder setups side by side, all streaming at once."""

from __future__ import annotations

from typing import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Input, Static

from bardterm.errors import BardtermError
from bardterm.text import sanitize
from bardterm.tui.conversation import ReplyPrompt
from bardterm.tui.host import ModelHost, NotReady
from bardterm.tui.settings import DecoderChoice
from bardterm.tui.streaming import Stream, describe_stats, styled


class Column(Vertical):
    def __init__(self, index: int, name: str, choice: DecoderChoice, describe: str):
        super().__init__(classes="column")
        self.index, self.setup_name, self.choice, self.describe = index, name, choice, describe
        self.stream: Stream | None = None

    def compose(self) -> ComposeResult:
        yield Static(Text.assemble((sanitize(self.setup_name), "bold"), "\n", (self.describe, "dim")),
                     classes="column-head")
        with VerticalScroll():
            yield Static("", classes="column-text")
        yield Static("", classes="column-stats")

    def show(self, text, stats: str) -> None:
        self.query_one(".column-text", Static).update(text)
        self.query_one(".column-stats", Static).update(stats)


class CompareScreen(Screen):
    AUTO_FOCUS = "#compare-prompt"
    BINDINGS = [Binding("escape", "stop_or_close", "Stop / close"), Binding("ctrl+r", "run_again", "Run again"),
                Binding("f4", "close", "Close")]

    def __init__(self, host: ModelHost, names: list[str], choices: list[DecoderChoice], prompt: str = "",
                 frame: Callable[[str], ReplyPrompt] | None = None):
        """`frame` turns the typed text into what the model continues, as the chat frames a message (its chat
        template, or the play script), so that each column is a chat reply; None: the text as it is."""
        super().__init__()
        self.host = host
        self.names, self.choices, self.initial_prompt = names, choices, prompt
        self.frame = frame

    def compose(self) -> ComposeResult:
        yield Input(self.initial_prompt, placeholder="Prompt for every setup; Enter runs them all", id="compare-prompt")
        with Horizontal(id="columns"):
            for index, (name, choice) in enumerate(zip(self.names, self.choices)):
                yield Column(index, name, choice, choice.describe(self.host.registry))
        yield Footer()

    @property
    def columns(self) -> list[Column]:
        return list(self.query(Column))

    @property
    def generating(self) -> bool:
        return any(c.stream is not None for c in self.columns)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.run_all(event.value)

    def run_all(self, prompt: str) -> None:
        if self.generating:
            return
        try:
            self.host.check_ready()
        except NotReady as error:
            self.notify(str(error), severity="warning")
            return
        try:
            framed = self.frame(prompt) if self.frame is not None else None
        except BardtermError as error:
            self.notify(str(error), severity="error", timeout=8)
            return
        from bardterm.batching import lockstep  # imports torch, as the loaded model already has

        text, options = prompt, {}
        if framed is not None:
            text, options = framed.text, {"stop": framed.stop, "stop_token_ids": framed.stop_token_ids,
                                          "max_new_tokens": framed.max_new_tokens}
        made = []
        for column in self.columns:
            try:
                made.append((column, self.host.generation(text, choice=column.choice, **options)))
            except BardtermError as error:
                column.show("", "")
                self.notify(f"{column.setup_name}: {error}", severity="error", timeout=8)
        # Every column that can share one model pass per token does: those columns stream in lockstep.
        rows = lockstep([generation for _, generation in made])
        for (column, _), row in zip(made, rows):
            column.stream = self.host.stream(self, row, tag="compare", label=column.setup_name)
            column.show("", "waiting…")

    def action_run_again(self) -> None:
        """Ctrl+R here runs the columns again (never the chat's reply, hidden under this screen)."""
        prompt = self.query_one("#compare-prompt", Input).value
        if not self.generating:
            self.run_all(prompt)

    def _column(self, stream: Stream) -> Column | None:
        return next((c for c in self.columns if c.stream is stream), None)

    def on_stream_updated(self, event: Stream.Updated) -> None:
        event.stop()  # each column shows its own figures: the app's status line is not on this screen
        column, update = self._column(event.stream), event.stream.take()
        if column is not None and update is not None:
            column.show(styled(update.text, update.committed), describe_stats(update.stats, running=True))

    def on_stream_finished(self, event: Stream.Finished) -> None:
        column, result = self._column(event.stream), event.result
        if column is not None:
            stopped = " · stopped" if result.stop_reason == "cancelled" else ""
            column.show(styled(result.text, len(result.text)), describe_stats(result.stats) + stopped)
            column.stream = None

    def on_stream_failed(self, event: Stream.Failed) -> None:
        column = self._column(event.stream)
        if column is not None:
            column.stream = None
            column.show(styled(event.stream.latest.text, 0) if event.stream.latest else "", "failed")

    def cancel(self) -> None:
        for column in self.columns:
            if column.stream is not None:
                column.stream.cancel()

    def action_stop_or_close(self) -> None:
        if self.generating:
            self.cancel()
        else:
            self.app.pop_screen()

    def action_close(self) -> None:
        self.cancel()
        self.app.pop_screen()
