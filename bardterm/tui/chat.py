"""Chat: turns framed as a play script, so that a completion model carries a conversation.

The prompt is every turn written with the template, then the model's name; the model's turn ends where it
starts the user's next line (a stop string), the way a play script hands over between speakers.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Static

from bardterm.errors import BardtermError
from bardterm.text import sanitize
from bardterm.tui import commands
from bardterm.tui.prompt import PromptArea
from bardterm.tui.store import Turn
from bardterm.tui.streaming import Stream, describe_stats, styled

DEFAULT_TEMPLATE = "{name}:\n{text}\n\n"


@dataclass
class ChatFrame:
    user_name: str = "ROMEO"
    model_name: str = "JULIET"
    template: str = DEFAULT_TEMPLATE

    def __post_init__(self):
        check_template(self.template)
        for name in (self.user_name, self.model_name):
            if not name.strip() or "\n" in name:
                raise BardtermError(f"invalid speaker name {name!r}: use a non-empty name on one line")

    def prompt(self, turns: list[Turn]) -> str:
        written = "".join(self.template.format(name=self.name_of(t.speaker), text=t.text.strip()) for t in turns)
        return written + self._opening(self.model_name)

    def stop(self) -> list[str]:
        """Where the model's turn is over: the template's end of a turn (a blank line in a play script,
        which comes before any next speaker), or the start of the user's next line."""
        ending = self.template.split("{text}")[1]
        return [s for s in dict.fromkeys([ending.strip(" "), "\n" + self._opening(self.user_name).strip()]) if s]

    def name_of(self, speaker: str) -> str:
        return self.user_name if speaker == "user" else self.model_name

    def _opening(self, name: str) -> str:
        return self.template.split("{text}")[0].format(name=name)


def check_template(template: str) -> None:
    if "{text}" not in template or "{name}" not in template.split("{text}")[0]:
        raise BardtermError(f"invalid template {template!r}: it needs {{name}} before {{text}}, "
                            "e.g. '{name}:\\n{text}\\n\\n'")
    try:
        template.format(name="", text="")
    except (KeyError, IndexError, ValueError) as error:
        raise BardtermError(f"invalid template {template!r} ({error}): use only {{name}} and {{text}}") from None


class TurnView(Static):
    """One turn: the speaker's name, then the text (its revisable tail dimmed while streaming)."""

    def __init__(self, name: str, speaker: str, body: Text | str = "", partial: bool = False):
        super().__init__(classes=f"turn {speaker}")
        self.speaker_name, self.partial = name, partial
        self.body = body if isinstance(body, Text) else Text(sanitize(body))

    def on_mount(self) -> None:
        self.show(self.body)

    def show(self, body: Text, partial: bool | None = None) -> None:
        self.body = body
        if partial is not None:
            self.partial = partial
        heading = Text(sanitize(self.speaker_name), style="bold")
        if self.partial:
            heading.append(" (stopped)", style="italic dim")
        self.update(Text.assemble(heading, "\n", body))


class ChatPane(Vertical):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stream: Stream | None = None
        self.reply: TurnView | None = None

    def compose(self) -> ComposeResult:
        yield VerticalScroll(id="transcript")
        yield Static("", id="hint")
        yield PromptArea(completer=lambda text: commands.completions(text, self.app), id="prompt")

    @property
    def transcript(self) -> VerticalScroll:
        return self.query_one("#transcript", VerticalScroll)

    @property
    def generating(self) -> bool:
        return self.stream is not None

    def show(self, turns: list[Turn]) -> None:
        """Replace the transcript with these turns (a resumed or a new conversation)."""
        self.transcript.remove_children()
        frame = self.app.frame
        self.transcript.mount_all([TurnView(frame.name_of(t.speaker), t.speaker, t.text, t.partial) for t in turns])
        self.transcript.scroll_end(animate=False)

    def note(self, text: str) -> None:
        """Something bardterm says (command output): shown in the transcript, never saved or sent."""
        self.transcript.mount(Static(Text(text), classes="note"))
        self.transcript.scroll_end(animate=False)

    def on_prompt_area_submitted(self, event: PromptArea.Submitted) -> None:
        event.stop()
        prompt, text = event.prompt, event.text
        if text.startswith("/"):
            prompt.remember(text)
            prompt.clear()
            commands.run(self.app, text.strip())
        elif self.send(text):
            prompt.remember(text)
            prompt.clear()

    def on_prompt_area_completions(self, event: PromptArea.Completions) -> None:
        event.stop()
        shown = "  ".join(c.strip() for c in event.candidates[:8])
        self.query_one("#hint", Static).update(Text(f"Tab: {shown}" if shown else "", style="dim"))

    def send(self, text: str) -> bool:
        """Add the user's turn and start the model's; False (text kept in the box) when it cannot start."""
        if self.generating:
            self.app.notify("the model is still replying: wait, or press Esc to stop it", severity="warning")
            return False
        if not self.app.ready():
            return False
        turn = Turn("user", text.strip())
        self.app.save_turn(turn)
        self.transcript.mount(TurnView(self.app.frame.user_name, "user", turn.text))
        self.start_reply()
        return True

    def regenerate(self) -> None:
        conversation = self.app.conversation
        if self.generating or not self.app.ready():
            return
        if conversation is None or not conversation.turns or conversation.turns[-1].speaker != "model":
            self.app.notify("nothing to regenerate yet: send a message first", severity="warning")
            return
        self.app.drop_last_turn()
        views = self.transcript.query(TurnView)
        if views:
            views.last().remove()
        self.start_reply()

    def start_reply(self) -> None:
        frame = self.app.frame
        try:
            generation = self.app.generation(frame.prompt(self.app.conversation.turns), stop=frame.stop())
        except BardtermError as error:
            self.app.notify(str(error), severity="error", timeout=8)
            return
        self.reply = TurnView(frame.model_name, "model")
        self.transcript.mount(self.reply)
        self.transcript.scroll_end(animate=False)
        self.stream = Stream(self, generation, tag="chat")
        self.app.start_stream(self.stream)

    def cancel(self) -> None:
        if self.stream is not None:
            self.stream.cancel()

    def keep_partial(self) -> None:
        """The app is quitting mid-reply: save what has arrived, as a stopped turn."""
        if self.stream is not None:
            self.stream.cancel()
            latest = self.stream.latest
            self._end(latest.text if latest else "", True, latest.stats.as_dict() if latest else {})

    def on_stream_updated(self, event: Stream.Updated) -> None:
        event.stop()
        update = event.stream.take()
        if update is None or event.stream is not self.stream:
            return
        self.reply.show(styled(update.text, update.committed))
        self.transcript.scroll_end(animate=False)
        self.app.show_stats(describe_stats(update.stats, running=True))

    def on_stream_finished(self, event: Stream.Finished) -> None:
        event.stop()
        if event.stream is not self.stream:  # already ended (kept as partial when the app quit)
            return
        result = event.result
        cancelled = result.stop_reason == "cancelled"
        self._end(result.text, cancelled, result.stats.as_dict())
        self.app.last_tokens = result.tokens
        self.app.show_stats(describe_stats(result.stats) + (" · stopped" if cancelled else ""))
        for notice in result.notices:
            self.app.notify(notice, severity="warning")

    def on_stream_failed(self, event: Stream.Failed) -> None:
        event.stop()
        if event.stream is not self.stream:
            return
        latest = event.stream.latest
        self._end(latest.text if latest else "", True, latest.stats.as_dict() if latest else {})
        self.app.notify(event.error, title="generation stopped", severity="error", timeout=10)

    def _end(self, text: str, partial: bool, stats: dict) -> None:
        """Save the model's turn (a partial one when stopped) the moment it ends."""
        self.stream = None
        text = text.strip()
        if partial and not text:
            self.reply.remove()
        else:
            turn = Turn("model", text, partial, self.app.decoder_label(), stats)
            self.app.save_turn(turn)
            self.reply.show(Text(sanitize(text)), partial=partial)
        self.reply = None
