"""The conversation picker: every saved conversation, newest first; Enter continues it."""

from __future__ import annotations

import time

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from bardterm.text import sanitize
from bardterm.tui.store import Conversation


class PickerScreen(ModalScreen[int | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Close")]

    def __init__(self, conversations: list[Conversation]):
        super().__init__()
        self.conversations = conversations

    def compose(self) -> ComposeResult:
        with Vertical(id="picker"):
            yield Label("Continue a conversation (Enter) · Esc close", id="picker-help")
            options = [Option(Text.assemble(sanitize(c.label()), (f"   {len(c.turns)} turns · "
                                            f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(c.updated))}", "dim")),
                              id=str(c.id)) for c in self.conversations]
            yield OptionList(*options, id="conversations")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id))
