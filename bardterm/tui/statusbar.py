"""The status line: the model (or what is loading, with a bar while a Hub download runs) and the framing of the
chat, the decoder in use, how the last prompt was fitted to the model's context, and the last generation's
figures. The app sets it; it never reaches back."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import LoadingIndicator, ProgressBar, Static

from bardterm.text import sanitize


class StatusBar(Horizontal):
    def compose(self) -> ComposeResult:
        yield LoadingIndicator(id="loading")
        yield ProgressBar(id="download", show_eta=True)
        yield Static("", id="model-status")
        yield Static("", id="decoder-status")
        yield Static("", id="context-status")
        yield Static("", id="stats")

    def on_mount(self) -> None:
        self.query_one("#download").display = False
        self.query_one("#context-status").display = False

    def show_model(self, loaded, loading: str | None, framing: str = "") -> None:
        """`framing`: how the chat is written for this model (chat template or play script)."""
        from bardterm.hub import display_name

        self.query_one("#loading").display = loading is not None
        self.query_one("#download").display = False
        if loading is not None:
            text = f"loading {Path(loading).name if Path(loading).exists() else loading}…"  # a Hub id whole
        elif loaded is not None:
            text = f"{display_name(loaded.path)} · {loaded.device} · {loaded.dtype_label or loaded.dtype}"
            text += f" · {framing}" if framing else ""
        else:
            text = "no model: /load DIR"
        self.query_one("#model-status", Static).update(Text(sanitize(text)))

    def show_decoder(self, name: str, seed: int | None) -> None:
        self.query_one("#decoder-status", Static).update(Text(sanitize(name + (f" · seed {seed}" if seed is not None
                                                                              else ""))))

    def show_download(self, repo: str, file: str, done: int, total: int) -> None:
        """A Hub download under way: its bar, and the file being fetched."""
        bar = self.query_one("#download", ProgressBar)
        bar.display = True
        bar.update(total=max(total, 1), progress=done)
        self.query_one("#model-status", Static).update(Text(sanitize(f"downloading {repo}: {file}")))

    def show_context(self, text: str) -> None:
        """How the prompt was fitted to the context: quiet, here, not a notification on every message."""
        status = self.query_one("#context-status", Static)
        status.update(Text(sanitize(text), style="dim"))
        status.display = bool(text)  # when shown, it shares the room left with the stats

    def show_stats(self, text: str) -> None:
        self.query_one("#stats", Static).update(text, layout=False)  # its size is fixed: no relayout per frame
