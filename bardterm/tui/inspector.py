"""The token inspector: for each token of the last generation, its probability and the top alternatives
at that step (after the processor chain), the way llama.cpp's n_probs shows them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList, Static
from textual.widgets.option_list import Option

from bardterm.text import sanitize

if TYPE_CHECKING:
    from bardterm.engine import TokenInfo


def visible(piece: str) -> str:
    """A token as text a person can see: whitespace shown, control characters neutralised."""
    return sanitize(piece).replace("\n", "⏎").replace("\t", "⇥").replace(" ", "·") or "∅"


def details(token: TokenInfo) -> Table:
    table = Table(title=f"{visible(token.text)!s}  id {token.token_id}  p = {token.prob:.4f}",
                  title_justify="left", expand=True, box=None)
    table.add_column("alternative")
    table.add_column("p", justify="right")
    table.add_column("", ratio=1)
    for piece, prob in token.alternatives:
        chosen = "bold" if piece == token.text else ""
        table.add_row(Text(visible(piece), style=chosen), f"{prob:.4f}", Text("█" * round(prob * 30), style="green"))
    return table


class InspectorScreen(ModalScreen):
    BINDINGS = [Binding("escape,f3", "dismiss", "Close")]

    def __init__(self, tokens: list[TokenInfo]):
        super().__init__()
        self.tokens = tokens

    def compose(self) -> ComposeResult:
        with Horizontal(id="inspector"):
            options = [Option(Text.assemble((f"{i:>3} ", "dim"), visible(t.text)[:12].ljust(12), f" {t.prob:.3f}"),
                              ) for i, t in enumerate(self.tokens)]
            yield OptionList(*options, id="tokens")
            yield Static("", id="token-details")
        yield Label("↑/↓ pick a token · Esc close", id="inspector-help")

    def on_mount(self) -> None:
        if self.tokens:
            self.query_one("#tokens", OptionList).highlighted = 0
        else:
            self.query_one("#token-details", Static).update("No generated tokens yet: send a message first.")

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        self.query_one("#token-details", Static).update(details(self.tokens[event.option_index]))
