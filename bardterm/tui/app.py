"""The bardterm app: chat and compose tabs, the decoder panel, the status line, and the keys.

The app owns two plain services and hands them to the panes: `ChatSession` (the conversation: framing, turns,
store, resume, export) and `ModelHost` (the model, the decoder setup, the running generations). Panes talk
back through messages: a slash command, a decoder change, and every stream's end, which one handler here
records for chat, compose and compare alike.

The window is interactive at once; the registry and the model load in a thread worker (torch is imported
there; `loading.py`). Every generation is a `bardterm.engine.Generation` run by `Stream` in a thread worker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Footer, Header, TabbedContent, TabPane

from bardterm.config import Config
from bardterm.errors import BardtermError
from bardterm.text import sanitize
from bardterm.tui import commands, paste
from bardterm.tui.chat import ChatPane
from bardterm.tui.compose import ComposePane
from bardterm.tui.conversation import ChatFrame, ChatSession
from bardterm.tui.decoder_panel import DecoderPanel
from bardterm.tui.host import ModelHost
from bardterm.tui.loading import ModelLoading
from bardterm.tui.statusbar import StatusBar
from bardterm.tui.streaming import Stream, describe_stats, leave_stuck_threads
from bardterm.tui.wording import for_the_app

MAIN_SCREEN_ONLY = {"regenerate", "toggle_decoders", "switch_tab", "conversations"}
QUIT_AGAIN_S = 5.0  # a second Ctrl+Q within this long quits without the unsent text


@dataclass
class Options:
    checkpoint: str | None = None  # None: the shipped default
    device: str | None = None
    dtype: str | None = None
    decoder: str | None = None
    seed: int | None = None
    resume: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False
    user_name: str = "ROMEO"
    model_name: str = "JULIET"
    template: str | None = None
    max_new_tokens: int = 200
    store_path: Path | None = None  # None: conversations.sqlite3 in the data directory
    system: str = ""
    framing: str = "auto"  # auto, template or script
    decoder_params: dict = field(default_factory=dict)  # from the settings file: /set NAME VALUE at start
    settings: Config | None = None  # the settings file, for a model's section on /load and for /save-defaults
    given: frozenset = frozenset()  # settings given on the command line, which a model's section never overrides
    notes: list = field(default_factory=list)  # what to say once the window is up (a settings file's error)


class BardtermApp(ModelLoading, App):
    CSS_PATH = "styles.tcss"
    TITLE = "bardterm"
    BINDINGS = [
        Binding("escape", "stop", "Stop"),
        Binding("ctrl+r", "regenerate", "Regenerate"),
        Binding("f1", "help", "Help"),
        Binding("f2", "toggle_decoders", "Decoders"),
        Binding("f3", "inspector", "Tokens"),
        Binding("f4", "compare", "Compare"),
        Binding("ctrl+t", "switch_tab", "Chat/Compose"),
        Binding("ctrl+o", "conversations", "Conversations"),
    ]

    def __init__(self, options: Options | None = None):
        super().__init__()
        paste.install()  # a pasted ESC must not scramble the paste (Textual 8.2's parser does)
        self.options = options or Options()
        o = self.options
        frame = ChatFrame(o.user_name, o.model_name, **({"template": o.template} if o.template else {}))
        self.session = ChatSession(frame, report=lambda message: self.notify(message, severity="error", timeout=12),
                                   framing=o.framing, system=o.system)
        self.host = ModelHost(o.max_new_tokens)
        self.last_tokens: list = []  # the last generation's tokens, for the inspector (F3)
        self._quit_asked: float | None = None  # when Ctrl+Q last asked about unsent text
        self.section: str | None = None  # the settings file's model section in force
        self._progress_shown = 0.0  # when the download bar last moved (it moves at most 10 times a second)

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            with TabbedContent(id="tabs"):
                with TabPane("Chat", id="chat-tab"):
                    yield ChatPane(self.session, self.host, self._complete, id="chat")
                with TabPane("Compose", id="compose-tab"):
                    yield ComposePane(self.host, id="compose")
            yield DecoderPanel(self.host, id="decoders")
        yield StatusBar(id="statusbar")
        yield Footer()

    @property
    def chat(self) -> ChatPane:
        return self.query_one("#chat", ChatPane)

    @property
    def composer(self) -> ComposePane:
        return self.query_one("#compose", ComposePane)

    @property
    def panel(self) -> DecoderPanel:
        return self.query_one("#decoders", DecoderPanel)

    @property
    def status(self) -> StatusBar:
        return self.query_one("#statusbar", StatusBar)

    def on_mount(self) -> None:
        self.panel.display = False
        for note in self.options.notes:
            self.notify(note, severity="error", timeout=15)
        try:
            self.session.open_store(self.options.store_path)
        except BardtermError as error:
            self.notify(f"{error} (this conversation will not be saved)", severity="error", timeout=12)
        resumed = None
        if self.options.resume:
            latest = self.session.latest()
            if latest is None:
                self.notify("no saved conversation to continue: starting a new one")
            else:
                self.chat.resume(latest)
                resumed = self.session.conversation.checkpoint if self.session.conversation else None
        self.query_one("#prompt").focus()
        from bardterm.models import default_checkpoint

        # --checkpoint, else the continued conversation's model, else the shipped one
        checkpoint = self.options.checkpoint or resumed or default_checkpoint()
        if self.options.checkpoint is None and not resumed and not Path(checkpoint).exists():
            self.notify(f"no model yet: the default checkpoint {checkpoint} does not exist. Start bardterm with "
                        "--checkpoint DIR, type /load DIR, or train one with `bardterm train`",
                        severity="warning", timeout=20)
            checkpoint = None
        self.load_model(checkpoint)

    # -- what the panes say ---------------------------------------------------------------------------------

    def on_stream_updated(self, event: Stream.Updated) -> None:
        shown = event.stream.shown
        if shown is not None:
            self.status.show_stats(describe_stats(shown.stats, running=True))

    def on_stream_finished(self, event: Stream.Finished) -> None:
        """Every generation that ends (chat, compose, compare): its stats, its tokens for F3, its notices."""
        result, label = event.result, event.stream.label
        self.last_tokens = result.tokens
        stopped = " · stopped" if result.stop_reason == "cancelled" else ""
        self.status.show_stats((f"{label}: " if label else "") + describe_stats(result.stats) + stopped)
        if result.notices:
            self.status.show_context(" · ".join(result.notices))

    def on_stream_failed(self, event: Stream.Failed) -> None:
        label = event.stream.label
        self.notify((f"{label}: " if label else "") + event.error, title="generation stopped", severity="error",
                    timeout=10)

    def on_chat_pane_command(self, event: ChatPane.Command) -> None:
        commands.run(self, event.text)

    def on_chat_pane_context_note(self, event: ChatPane.ContextNote) -> None:
        self.status.show_context(event.text)

    def on_decoder_panel_changed(self, event: DecoderPanel.Changed) -> None:
        self.show_decoder()

    def show_framing(self) -> None:
        """The status line names the framing in use (chat template or play script)."""
        self._show_model_status()

    def show_decoder(self) -> None:
        choice = self.host.choice
        if choice is not None:
            self.status.show_decoder(choice.name(self.host.registry), choice.seed)

    def note(self, text: str) -> None:
        self.query_one("#tabs", TabbedContent).active = "chat-tab"
        self.chat.note(text)

    def _complete(self, text: str) -> list[str]:
        return commands.completions(text, self.host.registry, self.available_themes)

    # -- conversations --------------------------------------------------------------------------------------

    def on_chat_pane_resumed(self, event: ChatPane.Resumed) -> None:
        """A conversation continued (--continue, or Ctrl+O): its framing shows, and its model is loaded again
        when another one is in use."""
        self._show_model_status()
        checkpoint = event.checkpoint
        if checkpoint and checkpoint not in (self.session.checkpoint, self.host.loading or ""):
            self.notify(f"loading {checkpoint}, this conversation's model")
            try:
                self.load_model(checkpoint)
            except BardtermError as error:
                self.notify(str(error), severity="error")

    def action_conversations(self) -> None:
        if self.session.store is None:
            self.notify("the conversation store could not be opened", severity="error")
            return
        from bardterm.tui.picker import PickerScreen

        self.push_screen(PickerScreen(self.session.store.conversations()), callback=self.chat.resume)

    # -- keys -----------------------------------------------------------------------------------------------

    def action_stop(self) -> None:
        """Esc: stop every generation now; the partial text stays."""
        self.host.stop_all()

    def check_action(self, action: str, parameters) -> bool | None:
        """Keys that act on the chat, the tabs or the panel do nothing (and leave the footer) while another
        screen, such as compare, covers them."""
        return action not in MAIN_SCREEN_ONLY or self.screen is self.screen_stack[0]

    def action_regenerate(self) -> None:
        """Ctrl+R: the chat's last reply again (compose and compare bind their own Ctrl+R)."""
        if self.query_one("#tabs", TabbedContent).active == "chat-tab":
            self.chat.regenerate()

    def action_compare(self) -> None:
        """F4: the study notes' lesson made visible: greedy, beam search and nucleus sampling side by side."""
        try:
            commands.open_compare(self, ["greedy", "beam", "nucleus"])
        except BardtermError as error:
            self.notify(str(error), severity="error")

    def action_inspector(self) -> None:
        from bardterm.tui.inspector import InspectorScreen

        self.push_screen(InspectorScreen(self.last_tokens))

    def action_toggle_decoders(self, show: bool | None = None) -> None:
        panel = self.panel
        panel.display = not panel.display if show is None else show
        if panel.display:
            selector = panel.query("#selector")
            (selector.first() if selector else panel).focus()
        else:  # focus must not stay on a hidden field (typing would go nowhere): back to where one writes
            panel.close_menus()
            self.focus_input()

    def focus_input(self) -> None:
        """Focus the message box, or the draft on the compose tab."""
        compose = self.query_one("#tabs", TabbedContent).active == "compose-tab"
        self.query_one("#draft" if compose else "#prompt").focus()

    def action_switch_tab(self) -> None:
        tabs = self.query_one("#tabs", TabbedContent)
        tabs.active = "compose-tab" if tabs.active == "chat-tab" else "chat-tab"
        self.focus_input()

    def action_help(self) -> None:
        self.note(commands.help_text())

    def notify(self, message: str, *, title: str = "", severity="information", timeout: float | None = None,
               markup: bool = False) -> None:
        """Every message may quote model or plugin text: never markup, never raw control characters; and
        a message written for the command line says the app's way instead of a flag."""
        parameters = self.host.registry.params() if self.host.registry is not None else ()
        message = for_the_app(sanitize(str(message)), parameters)
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Paste):  # pasted control characters shown, never sent to the terminal raw
            event.text = sanitize(event.text.replace("\r\n", "\n").replace("\r", "\n"))
        await super().on_event(event)

    async def run_async(self, **kwargs):
        result = await super().run_async(**kwargs)
        leave_stuck_threads(self.return_code or 0)  # here: once `run` returns, asyncio waits on every thread
        return result

    async def action_quit(self) -> None:
        """Ctrl+Q: quit, saving a reply under way as a stopped turn; unsent text is not lost without asking."""
        unsent = [what for what, box in (("the message box", "#prompt"), ("the compose draft", "#draft"))
                  if self.query_one(box).text.strip()]
        if unsent and (self._quit_asked is None or time.monotonic() - self._quit_asked > QUIT_AGAIN_S):
            self._quit_asked = time.monotonic()
            self.notify(f"{' and '.join(unsent)} {'has' if len(unsent) == 1 else 'have'} text that is not saved: "
                        f"press Ctrl+Q again to quit anyway", severity="warning", timeout=QUIT_AGAIN_S)
            return
        self.chat.keep_partial()
        self.action_stop()
        self.exit()

    def on_unmount(self) -> None:
        self.action_stop()
        self.session.close()
