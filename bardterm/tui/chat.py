"""The chat pane: the transcript and the message box.

It sends through the two services the app hands it: the `ChatSession` (the turns, the framing, the store)
and the `ModelHost` (the model and the decoder setup). A slash command goes up to the app as a `Command`
message; a stream's `Finished` and `Failed` bubble on to the app, which records the stats.
"""

from __future__ import annotations

from typing import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Static

from bardterm.errors import BardtermError
from bardterm.text import sanitize
from bardterm.tui.conversation import ChatSession
from bardterm.tui.host import ModelHost, NotReady
from bardterm.tui.prompt import PromptArea
from bardterm.tui.store import Turn
from bardterm.tui.streaming import Stream, styled


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
    class Command(Message):
        """A slash command typed in the message box, for the app to carry out."""

        def __init__(self, text: str):
            super().__init__()
            self.text = text

    class ContextNote(Message):
        """How the last prompt was fitted to the model's context ("" when it fitted whole), for the status line."""

        def __init__(self, text: str):
            super().__init__()
            self.text = text

    class Resumed(Message):
        """A saved conversation continues: the app shows its framing and loads its model (`checkpoint`)."""

        def __init__(self, checkpoint: str):
            super().__init__()
            self.checkpoint = checkpoint

    def __init__(self, session: ChatSession, host: ModelHost, completer: Callable[[str], list[str]], **kwargs):
        super().__init__(**kwargs)
        self.session, self.host, self.completer = session, host, completer
        self.stream: Stream | None = None
        self.reply: TurnView | None = None

    def compose(self) -> ComposeResult:
        yield VerticalScroll(id="transcript")
        yield Static("", id="hint")
        yield PromptArea(completer=self.completer, id="prompt")

    @property
    def transcript(self) -> VerticalScroll:
        return self.query_one("#transcript", VerticalScroll)

    @property
    def prompt(self) -> PromptArea:
        return self.query_one("#prompt", PromptArea)

    @property
    def generating(self) -> bool:
        return self.stream is not None

    def show(self, turns: list[Turn]) -> None:
        """Replace the transcript with these turns (a resumed or a new conversation)."""
        self.transcript.remove_children()
        frame = self.session.frame
        system = [self._system_view()] if self.session.system else []
        self.transcript.mount_all(system + [TurnView(frame.name_of(t.speaker), t.speaker, t.text, t.partial)
                                            for t in turns])
        self.transcript.scroll_end(animate=False)
        for turn in turns:
            if turn.speaker == "user":
                self.prompt.remember(turn.text)

    def resume(self, conversation_id: int | None) -> None:
        """Continue a saved conversation (None: the picker was closed)."""
        if conversation_id is None:
            return
        if self.generating:
            self.notify("a reply is being generated: press Esc first", severity="warning")
            return
        try:
            conversation = self.session.resume(conversation_id)
        except BardtermError as error:
            self.notify(str(error), severity="error")
            return
        self.show(conversation.turns)
        self.post_message(self.Resumed(conversation.checkpoint))
        if self.session.awaiting_reply():
            self.notify("the last message has no reply (bardterm stopped before it was written): Ctrl+R asks "
                        "for it")

    def clear(self) -> None:
        """A new conversation; the old one stays in the store."""
        if self.generating:
            raise BardtermError("a reply is being generated: press Esc to stop it, then /clear")
        self.session.new()
        self.show([])
        self.post_message(self.ContextNote(""))
        self.notify("new conversation")

    def show_system(self) -> None:
        """The session's system prompt at the top of the transcript (nothing when there is none), marked when
        the model in use cannot take it (its chat template has no system role)."""
        shown = self.transcript.query(".system-prompt")
        if not self.session.system:
            shown.remove()
        elif shown:
            shown.first().update(self._system_text())
        elif self.transcript.children:
            self.transcript.mount(self._system_view(), before=0)
        else:
            self.transcript.mount(self._system_view())

    def _system_view(self) -> Static:
        return Static(self._system_text(), classes="note system-prompt")

    def _system_text(self) -> Text:
        session = self.session
        unused = session.frame.system != session.system
        heading = Text("system", style="bold")
        if unused:
            heading.append(" (not sent: this model's chat template has no system role)", style="italic dim")
        return Text.assemble(heading, "\n", sanitize(session.system))

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
            self.post_message(self.Command(text.strip()))
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
            self.notify("the model is still replying: wait, or press Esc to stop it", severity="warning")
            return False
        try:
            self.host.check_ready()
        except NotReady as error:
            self.notify(str(error), severity="warning")
            return False
        turn = Turn("user", text.strip())
        self.session.add_turn(turn)
        self.transcript.mount(TurnView(self.session.frame.user_name, "user", turn.text))
        self.start_reply()
        return True

    def regenerate(self) -> None:
        """Ask for the model's last turn again (or for the one a crash lost)."""
        if self.generating:
            return
        try:
            self.host.check_ready()
            replaced = self.session.turns[-1].speaker == "model" if self.session.turns else False
            self.session.drop_last_reply()
        except BardtermError as error:
            self.notify(str(error), severity="warning")
            return
        views = self.transcript.query(TurnView)
        if replaced and views:
            views.last().remove()
        seed = self.host.choice.seed
        if replaced and seed is not None:  # else the same reply again looks like a bug
            self.notify(f"the seed is fixed ({seed}), so the same setup gives the same reply: /set seed random, "
                        "or change the decoder (F2), for another")
        self.start_reply()

    def start_reply(self) -> None:
        session, host = self.session, self.host
        try:
            prompt = session.reply_prompt(host.count_tokens, host.context(), host.max_new_tokens)
            self.stream = host.start(self, prompt.text, stop=prompt.stop, stop_token_ids=prompt.stop_token_ids,
                                     max_new_tokens=prompt.max_new_tokens, tag="chat")
        except BardtermError as error:
            self.notify(str(error), severity="error", timeout=8)
            return
        self.post_message(self.ContextNote(" · ".join(prompt.notes)))
        self.reply = TurnView(session.frame.model_name, "model")
        self.transcript.mount(self.reply)
        self.transcript.scroll_end(animate=False)

    def keep_partial(self) -> None:
        """The app is quitting mid-reply: save what has arrived, as a stopped turn."""
        if self.stream is not None:
            self.stream.cancel()
            latest = self.stream.latest
            self._end(latest.text if latest else "", True, latest.stats.as_dict() if latest else {})

    def on_stream_updated(self, event: Stream.Updated) -> None:
        update = event.stream.take()
        if update is None or event.stream is not self.stream:
            event.stop()
            return
        self.reply.show(styled(update.text, update.committed))
        self.transcript.scroll_end(animate=False)

    def on_stream_finished(self, event: Stream.Finished) -> None:
        if event.stream is not self.stream:  # already ended (kept as partial when the app quit)
            event.stop()
            return
        result = event.result
        self._end(result.text, result.stop_reason == "cancelled", result.stats.as_dict())

    def on_stream_failed(self, event: Stream.Failed) -> None:
        if event.stream is not self.stream:
            event.stop()
            return
        latest = event.stream.latest
        self._end(latest.text if latest else "", True, latest.stats.as_dict() if latest else {})

    def _end(self, text: str, partial: bool, stats: dict) -> None:
        """Save the model's turn (a partial one when stopped) the moment it ends."""
        self.stream = None
        text = text.strip()
        if partial and not text:
            self.reply.remove()
        else:
            self.session.add_turn(Turn("model", text, partial, self.host.decoder_label(), stats))
            self.reply.show(Text(sanitize(text)), partial=partial)
        self.reply = None

