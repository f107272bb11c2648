"""Compose: a text editor in which the model continues the draft at the cursor.

The continuation streams in at the cursor (the editor is read-only meanwhile). Afterwards the user keeps
it (Ctrl+L, or just types on), regenerates it (Ctrl+R) or undoes it (Ctrl+B).
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Static, TextArea

from bardterm.errors import BardtermError
from bardterm.text import sanitize
from bardterm.tui.host import ModelHost, NotReady
from bardterm.tui.streaming import Stream

Location = tuple[int, int]


class ComposePane(Vertical):
    BINDINGS = [
        Binding("ctrl+g", "continue_draft", "Continue"),
        Binding("ctrl+r", "regenerate", "Regenerate"),
        Binding("ctrl+l", "accept", "Accept"),
        Binding("ctrl+b", "undo_continuation", "Undo"),
    ]

    def __init__(self, host: ModelHost, **kwargs):
        super().__init__(**kwargs)
        self.host = host
        self.stream: Stream | None = None
        self.pending: tuple[Location, Location] | None = None  # the continuation not yet accepted
        self._ours = ""  # the draft as our last edit left it, to tell the user's own edits from ours
        self._shown = ""  # the continuation as it stands in the editor

    def compose(self) -> ComposeResult:
        yield TextArea(soft_wrap=True, id="draft", placeholder="Write, then Ctrl+G: the model continues at the cursor")
        yield Static("Ctrl+G continue at cursor · Ctrl+L accept · Ctrl+R regenerate · Ctrl+B undo", id="compose-help")

    @property
    def editor(self) -> TextArea:
        return self.query_one("#draft", TextArea)

    @property
    def generating(self) -> bool:
        return self.stream is not None

    def action_continue_draft(self) -> None:
        if self.generating:
            return
        self.pending = None
        self._start(self.editor.cursor_location)

    def action_regenerate(self) -> None:
        if self.generating or self.pending is None:
            if not self.generating:
                self.notify("nothing to regenerate: continue the draft first (Ctrl+G)", severity="warning")
            return
        self._start(self._remove_pending())

    def action_accept(self) -> None:
        if self.generating:
            return
        if self.pending is None:
            self.notify("nothing to accept: Ctrl+G continues the draft first", severity="warning")
            return
        self.pending = None
        self._set_help("accepted")

    def action_undo_continuation(self) -> None:
        if self.generating:
            return
        if self.pending is None:  # said, not silent: Ctrl+L or an edit made the continuation part of the draft
            self.notify("nothing to undo: the last continuation is part of the draft now (accepted with Ctrl+L, "
                        "or edited); Ctrl+Z undoes edits", severity="warning")
            return
        self._remove_pending()
        self._set_help("undone")

    def cancel(self) -> None:
        if self.stream is not None:
            self.stream.cancel()

    def _start(self, at: Location) -> None:
        editor = self.editor
        prompt = editor.get_text_range((0, 0), at)
        try:
            self.stream = self.host.start(self, prompt, tag="compose")
        except NotReady as error:
            self.notify(str(error), severity="warning")
            return
        except BardtermError as error:
            self.notify(str(error), severity="error", timeout=8)
            return
        editor.move_cursor(at)
        editor.read_only = True
        editor.cursor_blink = False  # each blink repaints the editor: not while the model needs the CPU
        self.pending = (at, at)
        self._set_help("generating… Esc stops")

    def _remove_pending(self) -> Location:
        start, end = self.pending
        self.editor.delete(start, end)
        self.editor.move_cursor(start)
        self.pending = None
        return start

    def _show(self, text: str) -> None:
        start, end = self.pending
        text = sanitize(text)
        if text.startswith(self._shown) and end != start:  # append only what is new: a frame stays cheap
            result = self.editor.insert(text[len(self._shown):], end, maintain_selection_offset=False)
        else:  # the first frame, or a beam search revised its text
            result = self.editor.replace(text, start, end, maintain_selection_offset=False)
        self._shown = text
        self.pending = (start, result.end_location)
        self._ours = self.editor.text
        self.editor.move_cursor(result.end_location)

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        if self.pending is not None and not self.generating:
            if self.editor.text != self._ours:
                self.pending = None  # the user edited it: the continuation is theirs now

    def on_stream_updated(self, event: Stream.Updated) -> None:
        update = event.stream.take()
        if update is not None and event.stream is self.stream:
            self._show(update.text)
        else:
            event.stop()

    def on_stream_finished(self, event: Stream.Finished) -> None:
        self._show(event.result.text)
        self._end()

    def on_stream_failed(self, event: Stream.Failed) -> None:
        self._end()

    def _end(self) -> None:
        self.stream = None
        self.editor.read_only = False
        self.editor.cursor_blink = True
        self._set_help("Ctrl+L accept · Ctrl+R regenerate · Ctrl+B undo · Ctrl+G continue")

    def _set_help(self, text: str) -> None:
        self.query_one("#compose-help", Static).update(text, layout=False)  # one line: no relayout
