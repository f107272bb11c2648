"""The message box: multiline, Enter sends, Up/Down walk the input history, Tab completes slash commands."""

from __future__ import annotations

from typing import Callable

from textual import events
from textual.message import Message
from textual.widgets import TextArea

NEWLINE_KEYS = ("shift+enter", "ctrl+j", "alt+enter")  # terminals differ in which of these they can send


class PromptArea(TextArea):
    class Submitted(Message):
        def __init__(self, prompt: "PromptArea", text: str):
            super().__init__()
            self.prompt = prompt
            self.text = text

    class Completions(Message):
        """The candidates for what is typed, for the hint line (empty when there are none)."""

        def __init__(self, candidates: list[str]):
            super().__init__()
            self.candidates = candidates

    def __init__(self, completer: Callable[[str], list[str]] | None = None, **kwargs):
        super().__init__(soft_wrap=True, show_line_numbers=False, compact=True, **kwargs)
        self.completer = completer or (lambda text: [])
        self.sent: list[str] = []
        self._history_at: int | None = None  # index into history while browsing it
        self._draft = ""

    def remember(self, text: str) -> None:
        if text.strip() and (not self.sent or self.sent[-1] != text):
            self.sent.append(text)
        self._history_at = None

    async def _on_key(self, event: events.Key) -> None:
        key = event.key
        if key == "enter":
            self._stop(event)
            text = self.text
            if text.strip():
                self.post_message(self.Submitted(self, text))
            return
        if key in NEWLINE_KEYS:
            self._stop(event)
            self.insert("\n")
            return
        if key == "tab" and self.text.startswith("/"):
            self._stop(event)
            self._complete()
            return
        if key == "up" and self.cursor_location[0] == 0 and self.sent:
            self._stop(event)
            self._browse(-1)
            return
        if key == "down" and self._history_at is not None and self.cursor_location[0] == self.document.line_count - 1:
            self._stop(event)
            self._browse(+1)
            return
        await super()._on_key(event)

    def _on_text_area_changed(self, event: TextArea.Changed) -> None:
        self.post_message(self.Completions(self.completer(self.text) if self.text.startswith("/") else []))

    @staticmethod
    def _stop(event: events.Key) -> None:
        event.stop()
        event.prevent_default()

    def _browse(self, step: int) -> None:
        if self._history_at is None:
            if step > 0:
                return
            self._draft = self.text
            self._history_at = len(self.sent)
        self._history_at += step
        if self._history_at < 0:
            self._history_at = 0
            return
        if self._history_at >= len(self.sent):
            self._history_at = None
            self.load_text(self._draft)
        else:
            self.load_text(self.sent[self._history_at])
        self.move_cursor(self.document.end)

    def _complete(self) -> None:
        candidates = self.completer(self.text)
        if not candidates:
            return
        common = candidates[0]
        for candidate in candidates[1:]:
            while not candidate.startswith(common):
                common = common[:-1]
        if len(candidates) == 1 and not common.endswith(" "):
            common += " "
        if len(common) > len(self.text):
            self.load_text(common)
            self.move_cursor(self.document.end)
