"""The status line: the model (or what is loading), the decoder in use, how the last prompt was fitted to the
model's context, and the last generation's figures. The app sets it; it never reaches back."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import LoadingIndicator, Static

from bardterm.text import sanitize


class StatusBar(Horizontal):
    def compose(self) -> ComposeResult:
        yield LoadingIndicator(id="loading")
        yield Static("", id="model-status")
        yield Static("", id="decoder-status")
        yield Static("", id="context-status")
        yield Static("", id="stats")

    def show_model(self, loaded, loading: str | None) -> None:
        self.query_one("#loading").display = loading is not None
        if loading is not None:
            text = f"loading {Path(loading).name}…"
        elif loaded is not None:
            text = f"{loaded.path.name} · {loaded.device} · {loaded.dtype_label or loaded.dtype}"
        else:
            text = "no model: /load DIR"
        self.query_one("#model-status", Static).update(Text(sanitize(text)))

    def show_decoder(self, name: str, seed: int | None) -> None:
        self.query_one("#decoder-status", Static).update(Text(sanitize(name + (f" · seed {seed}" if seed is not None
                                                                              else ""))))

    def show_context(self, text: str) -> None:
        """How the prompt was fitted to the context: quiet, here, not a notification on every message."""
        self.query_one("#context-status", Static).update(Text(sanitize(text), style="dim"))

    def show_stats(self, text: str) -> None:
        self.query_one("#stats", Static).update(text, layout=False)  # its size is fixed: no relayout per frame
