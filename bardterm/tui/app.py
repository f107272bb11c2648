"""The bardterm app: chat and compose tabs, the decoder panel, and the services they share.

The window is interactive at once; the registry and the model load in a thread worker (torch is imported
there). Every generation is a `bardterm.engine.Generation` run by `Stream` in a thread worker.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Footer, Header, LoadingIndicator, Static, TabbedContent, TabPane

from bardterm.errors import BardtermError
from bardterm.text import sanitize
from bardterm.tui.chat import ChatFrame, ChatPane
from bardterm.tui.compose import ComposePane
from bardterm.tui.decoder_panel import DecoderPanel, parse_seed
from bardterm.tui.store import Conversation, Store, Turn, to_json, to_markdown, write_atomic
from bardterm.tui.streaming import Stream, leave_stuck_threads

TOP_ALTERNATIVES = 5  # what the token inspector shows for each step


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


class BardtermApp(App):
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
        self.options = options or Options()
        kwargs = {"template": self.options.template} if self.options.template else {}
        self.frame = ChatFrame(self.options.user_name, self.options.model_name, **kwargs)
        self.max_new_tokens = self.options.max_new_tokens
        self.registry = None
        self.choice = None  # DecoderChoice, once the registry has loaded
        self.loaded = None  # LoadedModel
        self.loading: str | None = None  # the checkpoint being loaded
        self.store: Store | None = None
        self.conversation: Conversation | None = None
        self.streams: list[Stream] = []
        self.last_tokens: list = []

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            with TabbedContent(id="tabs"):
                with TabPane("Chat", id="chat-tab"):
                    yield ChatPane(id="chat")
                with TabPane("Compose", id="compose-tab"):
                    yield ComposePane(id="compose")
            yield DecoderPanel(id="decoders")
        with Horizontal(id="statusbar"):
            yield LoadingIndicator(id="loading")
            yield Static("", id="model-status")
            yield Static("", id="decoder-status")
            yield Static("", id="stats")
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

    def on_mount(self) -> None:
        self.query_one("#decoders").display = False
        try:
            self.store = Store(self.options.store_path)
        except BardtermError as error:
            self.notify(f"{error} (this conversation will not be saved)", severity="error", timeout=12)
        if self.options.resume:
            latest = self.store.latest() if self.store else None
            if latest is None:
                self.notify("no saved conversation to continue: starting a new one")
            else:
                self.resume(latest.id)
        self.query_one("#prompt").focus()
        from bardterm.models import default_checkpoint

        checkpoint = self.options.checkpoint or default_checkpoint()
        if self.options.checkpoint is None and not Path(checkpoint).exists():
            self.notify(f"no model yet: the default checkpoint {checkpoint} does not exist. Start bardterm with "
                        "--checkpoint DIR, type /load DIR, or train one with `bardterm train`",
                        severity="warning", timeout=20)
            checkpoint = None
        self.load_model(checkpoint)

    # -- loading --------------------------------------------------------------------------------------------

    def load_model(self, checkpoint: str | Path | None) -> None:
        """Load the registry (first time) and `checkpoint` in a worker; the UI stays usable meanwhile."""
        if self.generating:
            raise BardtermError("a generation is running: press Esc to stop it, then /load again")
        self.loading = str(checkpoint) if checkpoint else None
        self._show_model_status()
        self._load(checkpoint)

    @work(thread=True, exclusive=True, group="load", exit_on_error=False)
    def _load(self, checkpoint) -> None:
        try:
            if self.registry is None:
                from bardterm.registry import get_registry

                self._from_thread(self._registry_ready, get_registry())
            if checkpoint is None:
                self._from_thread(self._model_failed, None)
                return
            from bardterm.models import load_checkpoint

            o = self.options
            loaded = load_checkpoint(checkpoint, o.device, o.dtype, o.allow_pickle, o.trust_remote_code)
        except BardtermError as error:
            self._from_thread(self._model_failed, str(error))
            return
        except Exception as error:  # a bug in a checkpoint's code must not take the app down
            self._from_thread(self._model_failed, f"could not load {checkpoint}: {type(error).__name__}: {error}")
            return
        self._from_thread(self._model_ready, loaded)

    def _from_thread(self, callback, *args) -> None:
        try:
            self.call_from_thread(callback, *args)
        except RuntimeError:
            pass  # the app closed while loading

    async def _registry_ready(self, registry) -> None:
        from bardterm.plugins import load_failures
        from bardterm.registry import DEFAULT_DECODER
        from bardterm.tui.settings import DecoderChoice

        self.registry = registry
        for problem in [*load_failures, *registry.problems]:
            self.notify(problem, title="plugin problem", severity="warning", timeout=12)
        try:
            self.choice = DecoderChoice.from_name(registry, self.options.decoder or DEFAULT_DECODER, self.options.seed)
        except BardtermError as error:
            self.notify(f"{error}; using {DEFAULT_DECODER}", severity="error", timeout=12)
            self.choice = DecoderChoice.from_name(registry, DEFAULT_DECODER, self.options.seed)
        await self.panel.populate(registry)
        self.show_decoder()

    def _model_ready(self, loaded) -> None:
        self.loaded, self.loading = loaded, None
        self.sub_title = loaded.path.name
        self._show_model_status()

    def _model_failed(self, message: str | None) -> None:
        self.loading = None
        self._show_model_status()
        if message:
            self.notify(message, title="model not loaded", severity="error", timeout=15)

    def _show_model_status(self) -> None:
        self.query_one("#loading").display = self.loading is not None
        if self.loading is not None:
            text = f"loading {Path(self.loading).name}…"
        elif self.loaded is not None:
            text = f"{self.loaded.path.name} · {self.loaded.device} · {self.loaded.dtype}"
        else:
            text = "no model: /load DIR"
        self.query_one("#model-status", Static).update(Text(sanitize(text)))

    def ready(self) -> bool:
        """Whether a generation can start now; if not, say why."""
        if self.loaded is None or self.registry is None:
            waiting = self.loading is not None or self.registry is None
            self.notify("the model is still loading: your text is kept, send it again in a moment" if waiting
                        else "no model is loaded: type /load CHECKPOINT_DIR", severity="warning")
            return False
        return True

    # -- generation -----------------------------------------------------------------------------------------

    def generation(self, prompt: str, stop=(), choice=None):
        """A `Generation` for `prompt` with the current (or given) decoder choice; raises BardtermError."""
        from bardterm.engine import Generation

        choice = choice or self.choice
        return Generation(self.loaded.model, self.loaded.tokenizer, prompt, choice.setup(self.registry),
                          max_new_tokens=self.max_new_tokens, stop=stop, seed=choice.seed,
                          top_alternatives=TOP_ALTERNATIVES)

    def start_stream(self, stream: Stream) -> None:
        self.streams = [s for s in self.streams if s.running] + [stream]
        stream.start()

    @property
    def generating(self) -> bool:
        return any(s.running for s in self.streams)

    def action_stop(self) -> None:
        """Esc: stop every generation now; the partial text stays."""
        for stream in self.streams:
            if stream.running:
                stream.cancel()

    def action_regenerate(self) -> None:
        if self.query_one("#tabs", TabbedContent).active == "chat-tab":
            self.chat.regenerate()

    def show_stats(self, text: str) -> None:
        self.query_one("#stats", Static).update(text, layout=False)  # its size is fixed: no relayout per frame

    def show_decoder(self) -> None:
        if self.choice is not None:
            label = self.choice.label or self.choice.selector
            seed = f" · seed {self.choice.seed}" if self.choice.seed is not None else ""
            self.query_one("#decoder-status", Static).update(Text(sanitize(label + seed)))

    def decoder_label(self) -> str:
        return self.choice.describe(self.registry)

    # -- conversations --------------------------------------------------------------------------------------

    def save_turn(self, turn: Turn) -> None:
        """Keep a finished turn, and commit it to the store at once."""
        if self.conversation is None:
            checkpoint = str(self.loaded.path) if self.loaded else ""
            conversation_id = 0
            if self.store is not None:
                conversation_id = self._stored(self.store.new_conversation, checkpoint, self.frame.user_name,
                                               self.frame.model_name) or 0
            self.conversation = Conversation(conversation_id, "", 0.0, 0.0, checkpoint, self.frame.user_name,
                                             self.frame.model_name)
        self.conversation.turns.append(turn)
        if self.store is not None and self.conversation.id:
            self._stored(self.store.add_turn, self.conversation.id, turn)

    def drop_last_turn(self) -> None:
        turn = self.conversation.turns.pop()
        if self.store is not None and turn.id is not None:
            self._stored(self.store.delete_turn, turn.id)

    def _stored(self, action, *args):
        try:
            return action(*args)
        except sqlite3.Error as error:
            self.notify(f"could not save to {self.store.path} ({error}): the conversation is kept in memory; "
                        "/export it to keep it", severity="error", timeout=12)
            return None

    def resume(self, conversation_id: int | None) -> None:
        if conversation_id is None:
            return
        if self.chat.generating:
            self.notify("a reply is being generated: press Esc first", severity="warning")
            return
        try:
            conversation = self.store.load(conversation_id)
        except BardtermError as error:
            self.notify(str(error), severity="error")
            return
        self.conversation = conversation
        self.frame = ChatFrame(conversation.user_name, conversation.model_name, self.frame.template)
        self.chat.show(conversation.turns)
        prompt = self.query_one("#prompt")
        for turn in conversation.turns:
            if turn.speaker == "user":
                prompt.remember(turn.text)

    def new_conversation(self) -> None:
        if self.chat.generating:
            raise BardtermError("a reply is being generated: press Esc to stop it, then /clear")
        self.conversation = None
        self.last_tokens = []
        self.chat.show([])
        self.notify("new conversation")

    def save_conversation(self, title: str) -> None:
        if self.conversation is None or not self.conversation.turns:
            raise BardtermError("nothing to save yet: every turn is saved as it finishes, so send a message first")
        if self.store is None or not self.conversation.id:
            raise BardtermError("the conversation store could not be opened: use /export md or /export json")
        if title:
            self.conversation.title = title
            self._stored(self.store.set_title, self.conversation.id, title)
        self.notify(f"saved conversation {self.conversation.id} ({self.conversation.label()}) in {self.store.path}")

    def export(self, fmt: str, path: str | None) -> Path:
        if self.conversation is None or not self.conversation.turns:
            raise BardtermError("nothing to export yet: send a message first")
        target = Path(path or f"bardterm-conversation-{self.conversation.id}.{fmt}").expanduser()
        write_atomic(target, to_markdown(self.conversation) if fmt == "md" else to_json(self.conversation))
        self.notify(f"exported to {target}")
        return target

    def action_conversations(self) -> None:
        if self.store is None:
            self.notify("the conversation store could not be opened", severity="error")
            return
        from bardterm.tui.picker import PickerScreen

        self.push_screen(PickerScreen(self.store.conversations()), callback=self.resume)

    # -- commands and panels --------------------------------------------------------------------------------

    def use_decoder(self, name: str) -> None:
        from bardterm.tui.settings import DecoderChoice

        if self.registry is None:
            raise BardtermError("decoders are still loading: try again in a moment")
        self.choice = DecoderChoice.from_name(self.registry, name, self.choice.seed)
        self.panel.sync()
        self.notify(f"decoder: {self.choice.describe(self.registry)}")

    def set_setting(self, key: str, raw: str) -> None:
        """`/set KEY VALUE`: a session setting or any decoder parameter, validated before it changes anything."""
        if key == "seed":
            self._need_registry()
            self.choice.seed = parse_seed(raw)
        elif key == "max_new_tokens":
            if not raw.isdigit() or int(raw) < 1:
                raise BardtermError(f"invalid max_new_tokens {raw!r}: use a whole number >= 1")
            self.max_new_tokens = int(raw)
        elif key in ("user", "bard", "template"):
            names = {"user": self.frame.user_name, "bard": self.frame.model_name, "template": self.frame.template}
            names[key] = raw.replace("\\n", "\n") if key == "template" else raw
            self.frame = ChatFrame(names["user"], names["bard"], names["template"])
            if self.conversation is not None and self.store is not None and self.conversation.id:
                self._stored(self.store.set_names, self.conversation.id, self.frame.user_name, self.frame.model_name)
                self.conversation.user_name, self.conversation.model_name = self.frame.user_name, self.frame.model_name
        else:
            self._need_registry()
            self.choice.set(self.registry, key, raw)
        if self.registry is not None:
            self.panel.sync()
        self.notify(f"{key} = {raw}")

    def _need_registry(self) -> None:
        if self.registry is None:
            raise BardtermError("decoders are still loading: try again in a moment")

    def describe(self) -> str:
        model = (f"{self.loaded.path} on {self.loaded.device} ({self.loaded.dtype})" if self.loaded
                 else f"loading {self.loading}" if self.loading else "none (/load DIR)")
        decoder = self.choice.describe(self.registry) if self.choice else "loading"
        store = str(self.store.path) if self.store else "not available"
        conversation = f"{self.conversation.id}" if self.conversation else "new"
        return (f"model: {model}\ndecoder: {decoder}\nmax_new_tokens: {self.max_new_tokens}\n"
                f"speakers: user {self.frame.user_name!r}, bard {self.frame.model_name!r}; "
                f"template {self.frame.template!r}\nconversation: {conversation} in {store}")

    def note(self, text: str) -> None:
        self.query_one("#tabs", TabbedContent).active = "chat-tab"
        self.chat.note(text)

    def copy_last_reply(self) -> None:
        turns = self.conversation.turns if self.conversation else []
        reply = next((t.text for t in reversed(turns) if t.speaker == "model"), None)
        if reply is None:
            raise BardtermError("no reply to copy yet")
        self.copy_to_clipboard(reply)
        self.notify("copied the last reply")

    def open_compare(self, names: list[str]) -> None:
        from bardterm.tui.compare import CompareScreen
        from bardterm.tui.settings import DecoderChoice

        self._need_registry()
        choices = [self._compare_setup(DecoderChoice, name) for name in names]
        last = next((t.text for t in reversed(self.conversation.turns) if t.speaker == "user"), "") \
            if self.conversation else ""
        self.push_screen(CompareScreen(names, choices, last))

    def _compare_setup(self, DecoderChoice, spec: str):
        """`nucleus`, `current` (the setup in use), or either with settings: `top_p:top_p=0.5,temperature=0.8`."""
        import copy

        name, _, settings = spec.partition(":")
        choice = copy.deepcopy(self.choice) if name == "current" else \
            DecoderChoice.from_name(self.registry, name, self.choice.seed)
        for setting in filter(None, settings.split(",")):
            key, equals, value = setting.partition("=")
            if not equals:
                raise BardtermError(f"cannot read {setting!r} in {spec!r}: write settings as NAME=VALUE, "
                                    "e.g. top_p:top_p=0.5")
            choice.set(self.registry, key.strip(), value.strip())
        choice.setup(self.registry)  # refuse a bad setup now, not in the middle of the run
        return choice

    def action_compare(self) -> None:
        """F4: the study notes' lesson made visible: greedy, beam search and nucleus sampling side by side."""
        try:
            self.open_compare(["greedy", "beam", "nucleus"])
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

    def action_switch_tab(self) -> None:
        tabs = self.query_one("#tabs", TabbedContent)
        tabs.active = "compose-tab" if tabs.active == "chat-tab" else "chat-tab"
        self.query_one("#draft" if tabs.active == "compose-tab" else "#prompt").focus()

    def action_help(self) -> None:
        from bardterm.tui.commands import help_text

        self.note(help_text())

    def notify(self, message: str, *, title: str = "", severity="information", timeout: float | None = None,
               markup: bool = False) -> None:
        """Every message may quote model or plugin text: never markup, never raw control characters."""
        super().notify(sanitize(str(message)), title=title, severity=severity, timeout=timeout, markup=markup)

    async def run_async(self, **kwargs):
        result = await super().run_async(**kwargs)
        leave_stuck_threads(self.return_code or 0)  # here: once `run` returns, asyncio waits on every thread
        return result

    async def action_quit(self) -> None:
        self.chat.keep_partial()
        self.action_stop()
        self.exit()

    def on_unmount(self) -> None:
        self.action_stop()
        if self.store is not None:
            self.store.close()
